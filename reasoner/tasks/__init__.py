"""Tasks: generated (arithmetic, countdown, code) and real (GSM8K, MATH-500, HumanEval), one interface.

Every task has `name`, `levels` and `problems(split, n, level=None, seed=0) -> list[Problem]`, plus
`prompt_style` and `max_new_tokens`, the defaults `reasoner eval` uses for it.
"""
from __future__ import annotations

from reasoner.errors import ReasonerError
from reasoner.tasks.base import SPLITS, Problem, Question, Task, split_of
from reasoner.tasks.registry import TASKS


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ReasonerError(f"unknown task '{name}'; available: {', '.join(sorted(TASKS))}")
    return TASKS[name]()


__all__ = ["SPLITS", "TASKS", "Problem", "Question", "Task", "get_task", "split_of"]
