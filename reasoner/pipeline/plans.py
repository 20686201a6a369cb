"""The plan format: the planner's JSON list of sub-problems, parsed, validated, its results substituted.

A plan is `["48*3","37+{}","{}-25"]` or, spelled out, `[{"id":1,"q":"48*3"},{"id":2,"q":"37+{1}"},...]`:
steps in solving order, `{n}` standing for step n's result and `{}` for the previous step's, the last
step's result being the answer (the schema: prompts/plan.schema.json). What a task's reference plans look
like is the task's business (reasoner.tasks.arithmetic).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterable

import jsonschema

from reasoner.prompts import plan_schema

_REFERENCE = re.compile(r"\{(\d+)\}")
_PREVIOUS = "{}"


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
