"""Countdown (TinyZero's R1-Zero task): reach a target from given numbers with + - * /, each used exactly once.

Problems are built backwards from a random solution, so every one is solvable: the numbers are
combined pairwise in random order with random operators, keeping every intermediate a positive
integer. The gold `answer` is that solution's expression (e.g. `9*2+3`); it fixes both the numbers
and the target, which is what `reasoner.verify.check_countdown` grades against. Any other valid
expression scores the same.

The question lists the numbers sorted, so one multiset of numbers with one target is one question,
whatever order it was drawn in, and train/held-out (split by question text) never share a problem.
The trace is a short search: sometimes a failed attempt, then the steps that reach the target and
the expression they make, e.g. `9+3=12, 12*2=24 no\n9*2=18, 18+3=21 yes: 9*2+3`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from reasoner.tasks.base import GeneratedTask, Problem


@dataclass(frozen=True)
class Level:
    count: int        # how many numbers are given
    max_number: int   # numbers are drawn from 1..max_number
    max_target: int = 100


LEVELS = {
    1: Level(count=3, max_number=9),
    2: Level(count=4, max_number=9),
    3: Level(count=3, max_number=99),
    4: Level(count=4, max_number=99),   # TinyZero's setting: 3-4 numbers up to 99, targets up to 100
}
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


@dataclass(frozen=True)
class Node:
    text: str
    value: int
    precedence: int = 3  # a bare number binds tightest


def combine(left: Node, op: str, right: Node) -> Node | None:
    """left op right, with only the parentheses precedence requires; None if not a positive integer."""
    a, b = left.value, right.value
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if a % b == 0 else 0}[op]
    if value <= 0:
        return None
    p = PRECEDENCE[op]
    lhs = left.text if left.precedence >= p else f"({left.text})"
    # a-(b+c) and a/(b*c) keep their parentheses: - and / do not associate to the right.
    rhs = right.text if right.precedence > p or (right.precedence == p and op in "+*") else f"({right.text})"
    return Node(f"{lhs}{op}{rhs}", value, p)


def random_solution(rng: random.Random, numbers: list[int]) -> tuple[Node, list[str]] | None:
    """Combine the numbers pairwise at random until one expression is left; None on a dead end."""
    pool = [Node(str(n), n) for n in numbers]
    steps = []
    while len(pool) > 1:
        left, right = rng.sample(pool, 2)
        op = rng.choice("+-*/")
        node = combine(left, op, right)
        if node is None:
            return None
        pool.remove(left)
        pool.remove(right)
        pool.append(node)
        steps.append(f"{left.value}{op}{right.value}={node.value}")
    return pool[0], steps


def make_problem(numbers: list[int], solution: Node, steps: list[str], failed: list[str] | None,
                 level: int) -> Problem:
    shown = sorted(numbers)
    question = f"Using the numbers {shown}, make {solution.value}."  # with + - * /, each number once
    attempts = ([", ".join(failed) + " no"] if failed else []) + [", ".join(steps) + f" yes: {solution.text}"]
    return Problem(id=f"countdown-{'-'.join(map(str, shown))}-{solution.value}", question=question,
                   answer=solution.text, task="countdown", level=level, trace="\n".join(attempts),
                   meta={"numbers": shown, "target": solution.value})


class CountdownTask(GeneratedTask):
    """Generated countdown problems; levels grow the count and size of the numbers."""

    name = "countdown"
    levels = tuple(LEVELS)
    prompt_style = "plain"
    max_new_tokens = 128

    def make(self, rng: random.Random, level: int) -> Problem | None:
        spec = LEVELS[level]
        numbers = [rng.randint(1, spec.max_number) for _ in range(spec.count)]
        found = random_solution(rng, numbers)
        if found is None or found[0].value > spec.max_target:
            return None
        solution, steps = found
        return make_problem(numbers, solution, steps, self._failed_attempt(rng, numbers, solution.value), level)

    @staticmethod
    def _failed_attempt(rng: random.Random, numbers: list[int], target: int) -> list[str] | None:
        """Half the traces first try a combination that misses, so the model sees checking and retrying."""
        if rng.random() < 0.5:
            return None
        miss = random_solution(rng, numbers)
        return miss[1] if miss is not None and miss[0].value != target else None
