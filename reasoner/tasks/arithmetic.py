"""Multi-step integer arithmetic with worked traces.

A problem chains operations left to right with standard precedence, e.g. `37+48-25`. The trace
writes one binary step per line, `37+48=85` then `85-25=60`, the form a small model can learn and
the form the pipeline's plans decompose into. Levels grow the number of operations and operand size.

The task also writes its reference plans (the planner's SFT targets): `37+48*3-25` plans as
`["48*3","37+{}","{}-25"]`, steps in solving order, `{n}` standing for step n's result and `{}` for the
previous step's (the plan format: prompts/plan.schema.json). The demo's character-level planner learns the
compact form: it pays per character, and `{}` spares it counting steps, so a plan for a longer problem than
it was taught on is the same pattern repeated, not new step numbers.
"""
from __future__ import annotations

import json
import operator
import random
import re
from dataclasses import dataclass

from reasoner.tasks.base import GeneratedTask, Problem


@dataclass(frozen=True)
class Level:
    terms: int        # operands in the expression
    max_operand: int  # operands are drawn from 0..max_operand
    ops: str          # operators allowed


LEVELS = {
    1: Level(terms=2, max_operand=9, ops="+-"),
    2: Level(terms=3, max_operand=9, ops="+-"),
    3: Level(terms=4, max_operand=9, ops="+-"),
    4: Level(terms=5, max_operand=9, ops="+-"),
    5: Level(terms=6, max_operand=9, ops="+-"),
    6: Level(terms=8, max_operand=9, ops="+-"),
    7: Level(terms=5, max_operand=9, ops="+-*"),
    8: Level(terms=8, max_operand=9, ops="+-*"),
}
MAX_FACTOR = 9  # keeps products small: a multiplication always has a one-digit side


def solve_steps(tokens: list[str]) -> list[tuple[str, str, str, int]]:
    """Binary steps (left, op, right, result): multiplications first, then left to right."""
    tokens = list(tokens)
    steps = []
    for ops in ("*", "+-"):
        i = 1
        while i < len(tokens):
            if tokens[i] in ops:
                left, op, right = int(tokens[i - 1]), tokens[i], int(tokens[i + 1])
                value = left * right if op == "*" else left + right if op == "+" else left - right
                steps.append((tokens[i - 1], op, tokens[i + 1], value))
                tokens[i - 1:i + 2] = [str(value)]
            else:
                i += 2
    return steps


def make_problem(tokens: list[str], level: int) -> Problem:
    expression = "".join(tokens)
    steps = solve_steps(tokens)
    trace = "\n".join(f"{a}{op}{b}={v}" for a, op, b, v in steps)
    return Problem(id=f"arith-{expression}", question=expression, answer=str(steps[-1][3]),
                   task="arithmetic", level=level, trace=trace, meta={"steps": len(steps)})


def random_tokens(rng: random.Random, spec: Level) -> list[str]:
    tokens = [str(rng.randint(0, spec.max_operand))]
    for _ in range(spec.terms - 1):
        op = rng.choice(spec.ops)
        # One side of a product is a single digit, so every step stays within a few digits.
        operand = rng.randint(0, MAX_FACTOR) if op == "*" else rng.randint(0, spec.max_operand)
        tokens += [op, str(operand)]
    return tokens


class ArithmeticTask(GeneratedTask):
    name = "arithmetic"
    levels = tuple(LEVELS)

    def make(self, rng: random.Random, level: int) -> Problem:
        return make_problem(random_tokens(rng, LEVELS[level]), level)


# ---------------------------------------------------------------- reference plans


_TOKEN = re.compile(r"\d+|[-+*]")
_SPLIT_TOKEN = re.compile(r"\{\}|\d+|[-+*]")
_PREVIOUS = "{}"
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul}


@dataclass(frozen=True)
class PlannedStep:
    q: str                          # as the plan writes it: `37+{}`
    operands: tuple[str, str, str]  # as the solver is asked it, earlier results written in: ("37", "+", "144")
    value: int


def planned_steps(expression: str) -> list[PlannedStep]:
    """One step per operator, left to right, each product as it is met: the steps follow the expression's
    reading order, so a small model plans by copying forward; a use of the step just before is written `{}`."""
    tokens = _TOKEN.findall(expression.replace(" ", ""))
    if not tokens or len(tokens) % 2 == 0 or "".join(tokens) != expression.replace(" ", ""):
        raise ValueError(f"not a +-* expression of non-negative integers: {expression!r}")
    steps: list[PlannedStep] = []

    def add(left, op: str, right) -> int:  # an operand is a number (str) or the id of the step computing it
        a, b = (int(x) if isinstance(x, str) else steps[x - 1].value for x in (left, right))
        steps.append(PlannedStep(f"{ref(left)}{op}{ref(right)}", (str(a), op, str(b)), _APPLY[op](a, b)))
        return len(steps)

    def ref(value) -> str:
        if isinstance(value, str):
            return value
        return _PREVIOUS if value == len(steps) else f"{{{value}}}"

    total, i = None, 0
    while i < len(tokens):
        sign = tokens[i - 1] if i else None
        term, i = tokens[i], i + 1
        while i < len(tokens) and tokens[i] == "*":
            term, i = add(term, "*", tokens[i + 1]), i + 2
        total = term if total is None else add(total, sign, term)
        i += 1  # past the + or - that starts the next term
    return steps


def arithmetic_plan(expression: str) -> list[dict]:
    """The plan for `37+48*3-25` as plan steps ({"id", "q"}); a lone number is its own one-step plan."""
    steps = planned_steps(expression)
    if not steps:
        return [{"id": 1, "q": expression.replace(" ", "")}]
    return [{"id": i, "q": step.q} for i, step in enumerate(steps, 1)]


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


def arithmetic_plan_examples(problems) -> list[tuple[str, str]]:
    """(planner question, target plan text) for SFT, one per distinct planner call that solving `problems`
    makes; problems are Problems or expression strings."""
    targets: dict[str, str] = {}
    for problem in problems:
        question = getattr(problem, "question", problem)
        while question not in targets:
            parts = arithmetic_split(question)
            targets[question] = json.dumps(parts, separators=(",", ":"))
            question = parts[-1]
    return list(targets.items())


def arithmetic_step_problems(problems) -> list[Problem]:
    """The distinct sub-problems the plans of `problems` ask the solver, earlier results written in.

    A planned step reads `-13+7` where the problem itself only ever had digits 0-9: a solver taught on
    whole problems alone has never seen a question start with a negative or two-digit number.
    """
    seen: dict[str, Problem] = {}
    for problem in problems:
        for step in planned_steps(getattr(problem, "question", problem)):
            seen.setdefault("".join(step.operands), make_problem(list(step.operands), level=0))
    return list(seen.values())
