"""Which verifier grades a completion, decided in one place for evaluation and for the GRPO rewards."""
from __future__ import annotations

from typing import Sequence

from reasoner.verify import check_answer, check_code, check_countdown

# Tasks whose answer is a solution the task itself can check (an expression, a program), not a value
# to vote on: for them maj@K counts a passing candidate, as a solver with the checker would pick it.
SOLUTION_TASKS = frozenset({"countdown"})


def grade_completion(task: str | None, completion: str, answer: str, tests: Sequence[str] = (),
                     entry_point: str | None = None) -> float:
    """Score in [0, 1]: the fraction of tests passed for code, else 1.0 or 0.0."""
    if tests:
        return check_code(completion, list(tests), entry_point or None)
    if task == "countdown":
        return float(check_countdown(completion, answer))
    return float(check_answer(completion, answer))


def checked_as_solution(task: str | None, tests: Sequence[str] = ()) -> bool:
    """True where maj@K should not vote over extracted answers (code and countdown)."""
    return bool(tests) or task in SOLUTION_TASKS
