"""Small code tasks: write a one-line Python function to a spec, graded by assert tests in the sandbox.

Level 1: an integer formula, f(x) -> int.              "returns x*3+2"
Level 2: filter then aggregate a list, f(xs) -> int.   "the sum of the items of xs that are even"
Level 3: filter, map, then aggregate.                  "the largest x*3 over the items x of xs greater than 4"

Each spec part carries its wording, its code and a Python function, so the expected test outputs
are computed here directly (no exec of generated code in-process); the sandbox then only runs the
model's program. The gold `answer` is the reference program, unfenced: `extract_code` takes the whole
<answer> block when it has no fence, and a character-level model is spared the fence tokens.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from reasoner.tasks.base import GeneratedTask, Problem


MAX_ITEM = 19  # list items are 0..MAX_ITEM


@dataclass(frozen=True)
class Part:
    words: str
    code: str
    fn: Callable


def formulas(rng: random.Random) -> Part:
    a, b = rng.randint(2, 9), rng.randint(1, 40)  # ~1,600 distinct formulas: 100+ held out
    code = rng.choice([f"x*{a}+{b}", f"x*{a}-{b}", f"(x+{b})*{a}", f"x*x+{b}", f"x//{a}+{b}", f"x%{a}*{b}"])
    fn = {f"x*{a}+{b}": lambda x: x * a + b, f"x*{a}-{b}": lambda x: x * a - b,
          f"(x+{b})*{a}": lambda x: (x + b) * a, f"x*x+{b}": lambda x: x * x + b,
          f"x//{a}+{b}": lambda x: x // a + b, f"x%{a}*{b}": lambda x: x % a * b}[code]
    return Part(code, code, fn)


def condition(rng: random.Random) -> Part:
    t, k = rng.randint(0, MAX_ITEM - 1), rng.randint(3, 7)
    lo, hi = sorted(rng.sample(range(MAX_ITEM + 1), 2))
    return rng.choice([
        Part(f"greater than {t}", f"x > {t}", lambda x: x > t),
        Part(f"less than {t + 1}", f"x < {t + 1}", lambda x: x < t + 1),
        Part("even", "x % 2 == 0", lambda x: x % 2 == 0),
        Part("odd", "x % 2 == 1", lambda x: x % 2 == 1),
        Part(f"divisible by {k}", f"x % {k} == 0", lambda x: x % k == 0),
        Part(f"between {lo} and {hi}", f"{lo} <= x <= {hi}", lambda x: lo <= x <= hi),
    ])


def mapping(rng: random.Random) -> Part:
    a = rng.randint(2, 9)
    return rng.choice([Part(f"x*{a}", f"x*{a}", lambda x: x * a), Part(f"x+{a}", f"x+{a}", lambda x: x + a),
                       Part("x*x", "x*x", lambda x: x * x)])


# (wording of "the <aggregate> of ...", code around a generator, function of a list)
AGGREGATES = {
    "sum": ("the sum of", "sum({})", sum),
    "count": ("the count of", "len([{}])", len),
    "max": ("the largest of", "max(({}), default=0)", lambda v: max(v, default=0)),
    "min": ("the smallest of", "min(({}), default=0)", lambda v: min(v, default=0)),
}


@dataclass(frozen=True)
class Spec:
    question: str
    code: str           # the function body's return expression
    arg: str            # "x" or "xs"
    fn: Callable
    plan: str


def make_spec(rng: random.Random, level: int) -> Spec:
    if level == 1:
        formula = formulas(rng)
        return Spec(f"Write a Python function f(x) that returns {formula.words}.", formula.code, "x", formula.fn,
                    "a formula of x")  # the formula is in the question: a trace that copies it twice only adds errors
    cond = condition(rng)
    mapped = mapping(rng) if level == 3 else Part("x", "x", lambda x: x)
    names = ("sum", "max", "min") if level == 3 else tuple(AGGREGATES)  # counting mapped items = counting items
    name = rng.choice(names)
    words, template, aggregate = AGGREGATES[name]
    subject = "the items of xs" if level == 2 else f"{mapped.words} over the items x of xs"
    empty = ", or 0 if there are none" if name in ("max", "min") else ""
    question = f"Write a Python function f(xs) that returns {words} {subject} that are {cond.words}{empty}."
    code = template.format(f"{mapped.code} for x in xs if {cond.code}")
    fn = lambda xs: aggregate([mapped.fn(x) for x in xs if cond.fn(x)])  # noqa: E731
    steps = ", ".join(step for step in (f"keep x if {cond.code}", f"map to {mapped.code}" if level == 3 else "",
                                        f"take the {name}") if step)
    return Spec(question, code, "xs", fn, steps)


SHOWN, HIDDEN = 2, 5  # examples the question shows (the solver may run them), tests only the grader runs


def test_inputs(rng: random.Random, arg: str) -> list:
    """SHOWN + HIDDEN distinct inputs, the shown ones first; for lists the empty list is always hidden."""
    if arg == "x":
        return rng.sample(range(0, 30), SHOWN + HIDDEN)
    lists: dict[tuple, None] = {}
    while len(lists) < SHOWN + HIDDEN - 1:
        lists[tuple(rng.randint(0, MAX_ITEM) for _ in range(rng.randint(1, 6)))] = None
    return [list(items) for items in lists] + [[]]  # the empty list catches a missing default


def make_problem(spec: Spec, level: int) -> Problem:
    rng = random.Random(spec.question)  # same question, same tests, on every machine
    cases = [(value, spec.fn(value)) for value in test_inputs(rng, spec.arg)]
    shown = " and ".join(f"f({value!r}) == {result!r}" for value, result in cases[:SHOWN])
    program = f"def f({spec.arg}):\n    return {spec.code}"
    return Problem(id=f"code-{level}-{spec.code}", question=f"{spec.question} For example, {shown}.",
                   answer=program, task="code", level=level, trace=spec.plan, entry_point="f",
                   examples=[f"assert f({value!r}) == {result!r}" for value, result in cases[:SHOWN]],
                   tests=[f"assert f({value!r}) == {result!r}" for value, result in cases[SHOWN:]])


class CodeTask(GeneratedTask):
    """Generated function-writing problems; the answer is a program graded by `tests` in the sandbox."""

    name = "code"
    levels = (1, 2, 3)
    prompt_style = "plain"
    max_new_tokens = 192

    def make(self, rng: random.Random, level: int) -> Problem:
        return make_problem(make_spec(rng, level), level)
