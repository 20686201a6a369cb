"""Multi-step integer arithmetic with worked traces.

A problem chains operations left to right with standard precedence, e.g. `37+48-25`. The trace
writes one binary step per line, `37+48=85` then `85-25=60`, the form a small model can learn and
the form the pipeline's plans decompose into. Levels grow the number of operations and operand size.
"""
from __future__ import annotations

import random
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
