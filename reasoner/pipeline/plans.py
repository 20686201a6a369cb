"""Plans: the planner's JSON list of sub-problems, its validation, and reference plans for arithmetic.

A plan is `["48*3","37+{}","{}-25"]` or, spelled out, `[{"id":1,"q":"48*3"},{"id":2,"q":"37+{1}"},...]`:
steps in solving order, `{n}` standing for step n's result and `{}` for the previous step's, the last
step's result being the answer. The demo's character-level planner learns the compact form from
`arithmetic_plan_examples`: it pays per character, and `{}` spares it counting steps, so a plan for a
longer problem than it was taught on is the same pattern repeated, not new step numbers.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterable

import jsonschema

from reasoner.pipeline.prompts import plan_schema, render, user

_REFERENCE = re.compile(r"\{(\d+)\}")
_PREVIOUS = "{}"
_TOKEN = re.compile(r"\d+|[-+*]")
_SPLIT_TOKEN = re.compile(r"\{\}|\d+|[-+*]")
_BINARY = re.compile(r"(-?\d+)([-+*])(-?\d+)")  # one planned step, results written in


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


def parse_plan(text: str, first_id: int = 1, previous: int | None = None) -> list[Step]:
    """The steps of a planner completion, or PlanError saying what is wrong with it.

    A sub-plan (a plan for one step of a larger plan) is numbered from `first_id`, and its
    first step's `{}` is `previous`, the step before the one it replaces.
    """
    body = _json_part(text)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as err:
        raise PlanError(f"not valid JSON ({err.msg} at character {err.pos})") from None
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(plan_schema()).iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "plan"
        raise PlanError(f"{where}: {error.message}")
    items = [{"id": i + 1, "q": item} if isinstance(item, str) else item for i, item in enumerate(data)]
    return _check_order([_shifted(item, first_id - 1) for item in items], previous)


def _shifted(item: dict, offset: int) -> dict:
    if not offset:
        return item
    question = _REFERENCE.sub(lambda m: f"{{{int(m.group(1)) + offset}}}", item["q"])
    return {**item, "id": item["id"] + offset, "q": question, "deps": [d + offset for d in item.get("deps", ())]}


def _json_part(text: str) -> str:
    """The bracketed list, wherever the model put it: bare, in <answer>, or after some prose."""
    if "<answer>" in text:
        text = text.rsplit("<answer>", 1)[1].split("</answer>", 1)[0]
    start, end = text.find("["), text.rfind("]")
    if start == -1 or end < start:
        raise PlanError("no JSON list of steps found")
    return text[start:end + 1]


def _check_order(data: list[dict], previous: int | None = None) -> list[Step]:
    steps, seen = [], set() if previous is None else {previous}
    for item in data:
        step_id, question = item["id"], item["q"]
        if step_id in seen:
            raise PlanError(f"step id {step_id} is used twice")
        if _PREVIOUS in question:
            before = steps[-1].id if steps else previous
            if before is None:
                raise PlanError(f"step {step_id} uses {{}}, the previous step's result, but it is the first step")
            question = question.replace(_PREVIOUS, f"{{{before}}}")
        deps = sorted(set(item.get("deps", ())) | set(references(question)))
        later = [d for d in deps if d not in seen]
        if later:
            raise PlanError(f"step {step_id} uses {later}, which are not earlier steps")
        seen.add(step_id)
        steps.append(Step(step_id, question, tuple(deps)))
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

    The steps follow the expression's reading order, so a small model plans by copying forward; a use of
    the step just before is written `{}`.
    """
    tokens = _TOKEN.findall(expression.replace(" ", ""))
    if not tokens or len(tokens) % 2 == 0 or "".join(tokens) != expression.replace(" ", ""):
        raise ValueError(f"not a +-* expression of non-negative integers: {expression!r}")
    steps: list[dict] = []

    def add(question: str) -> int:
        steps.append({"id": len(steps) + 1, "q": question})
        return len(steps)

    def ref(value) -> str:  # an operand: a number, or the id of the step that computes it
        if isinstance(value, str):
            return value
        return _PREVIOUS if value == len(steps) else f"{{{value}}}"

    total, i = None, 0
    while i < len(tokens):
        sign = tokens[i - 1] if i else None
        term, i = tokens[i], i + 1
        while i < len(tokens) and tokens[i] == "*":
            term, i = add(f"{ref(term)}*{tokens[i + 1]}"), i + 2
        total = term if total is None else add(f"{ref(total)}{sign}{ref(term)}")
        i += 1  # past the + or - that starts the next term
    return steps or [{"id": 1, "q": total}]


def arithmetic_split(question: str) -> list[str]:
    """The planner's reference answer, one call's worth: `3+4-2+5` -> `["3+4","{}-2+5"]`, the first operation
    and then the rest, `{}` standing for the first one's result. A single operation is its own plan."""
    tokens = _SPLIT_TOKEN.findall(question.replace(" ", ""))
    if "*" in tokens:  # products are computed first: the one-step-per-operator plan says so already
        return [question] if _PREVIOUS in question else [s["q"] for s in arithmetic_plan(question)]
    if len(tokens) <= 3:
        return [question]
    return ["".join(tokens[:3]), _PREVIOUS + "".join(tokens[3:])]


def plan_text(steps: list[dict]) -> str:
    """The exact text the planner is trained to write: the compact form (no spaces: every character costs)."""
    return json.dumps([s["q"] for s in steps], separators=(",", ":"))


def plan_messages(problem: str) -> list[dict]:
    return user(render("plan", problem=problem))


def arithmetic_plan_examples(problems) -> list[tuple[list[dict], str]]:
    """(planner prompt messages, target text) for SFT, one per distinct planner call that solving
    `problems` makes; problems are Problems or expression strings."""
    targets: dict[str, str] = {}
    for problem in problems:
        question = getattr(problem, "question", problem)
        while question not in targets:
            parts = arithmetic_split(question)
            targets[question] = json.dumps(parts, separators=(",", ":"))
            question = parts[-1]
    return [(plan_messages(question), target) for question, target in targets.items()]


def arithmetic_step_problems(problems) -> list:
    """The distinct sub-problems the plans of `problems` ask the solver, earlier results written in.

    A planned step reads `-13+7` where the problem itself only ever had digits 0-9: a solver taught on
    whole problems alone has never seen a question start with a negative or two-digit number.
    """
    from reasoner.verify import calculate
    from reasoner.tasks.arithmetic import make_problem

    seen: dict[str, object] = {}
    for problem in problems:
        results: dict[str, str] = {}
        for step in parse_plan(plan_text(arithmetic_plan(getattr(problem, "question", problem)))):
            question = substitute(step.q, results)
            results[str(step.id)] = calculate(question)
            left, op, right = _BINARY.fullmatch(question).groups()
            seen.setdefault(question, make_problem([left, op, right], level=0))
    return list(seen.values())
