"""The grader: the one place gold answers and hidden tests are read (evaluation and GRPO rewards alike).

Nothing here is reachable from the pipeline: a solver gets `Problem.for_solver()`, which has neither.
"""
from __future__ import annotations

from typing import Sequence

from reasoner.tasks.base import Problem
from reasoner.verify import check_answer, check_code, check_code_many, check_countdown


def grade_completion(task: str | None, completion: str, answer: str, tests: Sequence[str] = (),
                     entry_point: str | None = None) -> float:
    """Score in [0, 1]: the fraction of hidden tests passed for code, else 1.0 or 0.0."""
    if tests:
        return check_code(completion, list(tests), entry_point or None)
    if task == "countdown":
        return float(check_countdown(completion, answer))
    return float(check_answer(completion, answer))


def grade(problem: Problem, completion: str) -> bool:
    """Is a model completion right? (`<think>...</think><answer>...</answer>`, or a fenced program)"""
    return grade_completion(problem.task, completion, problem.answer, problem.tests, problem.entry_point) == 1.0


def grade_many(problems: Sequence[Problem], completions: Sequence[str | None]) -> list[bool]:
    """grade() over a batch; programs run in one parallel sandbox batch. A None completion is wrong."""
    results = [False] * len(problems)
    code = [i for i, (p, c) in enumerate(zip(problems, completions)) if p.tests and c is not None]
    scores = check_code_many([completions[i] for i in code], [problems[i].tests for i in code],
                             [problems[i].entry_point for i in code]) if code else []
    for i, score in zip(code, scores):
        results[i] = score == 1.0
    for i, (problem, completion) in enumerate(zip(problems, completions)):
        if not problem.tests and completion is not None:
            results[i] = grade(problem, completion)
    return results


def as_completion(answer: str | None) -> str | None:
    """An answer the pipeline returned (a value, an expression, a program), in the form grade() reads."""
    return None if answer is None else f"<answer>{answer}</answer>"
