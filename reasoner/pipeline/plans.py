"""Plans: the planner's JSON list of sub-problems, its validation, and reference plans for arithmetic.

A plan is `[{"id":1,"q":"48*3"},{"id":2,"q":"37+{1}"}]`: steps in solving order, `{n}` standing for
step n's result, the last step's result being the answer. The format is compact on purpose: the
demo's character-level planner pays per character, and learns it from `arithmetic_plan_examples`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterable

import jsonschema

from reasoner.pipeline.prompts import plan_schema, render, user

_REFERENCE = re.compile(r"\{(\d+)\}")
_TOKEN = re.compile(r"\d+|[-+*]")


class PlanError(ValueError):
    """The planner's output is not a usable plan; the message is fed back for one repair."""


@dataclass(frozen=True)
class Step:
    id: int
    q: str
    deps: tuple[int, ...]  # explicit deps and {n} references together

    def to_dict(self) -> dict:
        return {"id": self.id, "q": self.q, "deps": list(self.deps)}

    @classmethod
    def from_dict(cls, data: dict) -> "Step":
        return cls(int(data["id"]), data["q"], tuple(data.get("deps", ())))


def references(question: str) -> list[int]:
    return [int(n) for n in _REFERENCE.findall(question)]


def parse_plan(text: str) -> list[Step]:
    """The steps of a planner completion, or PlanError saying what is wrong with it."""
    body = _json_part(text)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as err:
        raise PlanError(f"not valid JSON ({err.msg} at character {err.pos})") from None
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(plan_schema()).iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "plan"
        raise PlanError(f"{where}: {error.message}")
    return _check_order(data)


def _json_part(text: str) -> str:
    """The bracketed list, wherever the model put it: bare, in <answer>, or after some prose."""
    if "<answer>" in text:
        text = text.rsplit("<answer>", 1)[1].split("</answer>", 1)[0]
    start, end = text.find("["), text.rfind("]")
    if start == -1 or end < start:
        raise PlanError("no JSON list of steps found")
    return text[start:end + 1]


def _check_order(data: list[dict]) -> list[Step]:
    steps, seen = [], set()
    for item in data:
        step_id = item["id"]
        if step_id in seen:
            raise PlanError(f"step id {step_id} is used twice")
        deps = sorted(set(item.get("deps", ())) | set(references(item["q"])))
        later = [d for d in deps if d not in seen]
        if later:
            raise PlanError(f"step {step_id} uses {later}, which are not earlier steps")
        seen.add(step_id)
        steps.append(Step(step_id, item["q"], tuple(deps)))
    return steps


def substitute(question: str, results: dict[str, str]) -> str:
    """Earlier results in place of their {n} references."""
    return _REFERENCE.sub(lambda m: results.get(m.group(1), m.group(0)), question)


def ready_steps(steps: Iterable[Step], done: Iterable[str]) -> list[Step]:
    """Unsolved steps whose dependencies are all solved: the next wave to fan out."""
    done = set(done)
    return [s for s in steps if str(s.id) not in done and all(str(d) in done for d in s.deps)]


# ---------------------------------------------------------------- reference plans for arithmetic


def arithmetic_plan(expression: str) -> list[dict]:
    """The plan for `37+48*3-25`: one step per operator, left to right, each product as it is met.

    The steps follow the expression's reading order, so a small model plans by copying forward.
    """
    tokens = _TOKEN.findall(expression.replace(" ", ""))
    if not tokens or len(tokens) % 2 == 0 or "".join(tokens) != expression.replace(" ", ""):
        raise ValueError(f"not a +-* expression of non-negative integers: {expression!r}")
    steps: list[dict] = []

    def add(question: str) -> str:
        steps.append({"id": len(steps) + 1, "q": question})
        return f"{{{len(steps)}}}"

    total, i = None, 0
    while i < len(tokens):
        sign = tokens[i - 1] if i else None
        term, i = tokens[i], i + 1
        while i < len(tokens) and tokens[i] == "*":
            term, i = add(f"{term}*{tokens[i + 1]}"), i + 2
        total = term if total is None else add(f"{total}{sign}{term}")
        i += 1  # past the + or - that starts the next term
    return steps or [{"id": 1, "q": total}]


def plan_text(steps: list[dict]) -> str:
    """The exact text the planner is trained to write (no spaces: every character costs)."""
    return json.dumps([{"id": s["id"], "q": s["q"]} for s in steps], separators=(",", ":"))


def plan_messages(problem: str) -> list[dict]:
    return user(render("plan", problem=problem))


def arithmetic_plan_examples(problems) -> list[tuple[list[dict], str]]:
    """(planner prompt messages, target text) for SFT; problems are Problems or expression strings."""
    examples = []
    for problem in problems:
        expression = getattr(problem, "question", problem)
        examples.append((plan_messages(expression), plan_text(arithmetic_plan(expression))))
    return examples
