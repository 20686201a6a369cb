"""Tasks: generated (arithmetic, countdown, code) and real (GSM8K, MATH-500, HumanEval), one interface."""
from __future__ import annotations

from reasoner.errors import ReasonerError
from reasoner.tasks.base import SPLITS, Problem, Task, split_of


def get_task(name: str) -> Task:
    from reasoner.tasks.arithmetic import ArithmeticTask

    tasks = {"arithmetic": ArithmeticTask}
    try:
        extra = __import__("reasoner.tasks.registry", fromlist=["TASKS"]).TASKS
        tasks.update(extra)
    except ImportError:
        pass
    if name not in tasks:
        raise ReasonerError(f"unknown task '{name}'; available: {', '.join(sorted(tasks))}")
    return tasks[name]()


__all__ = ["SPLITS", "Problem", "Task", "get_task", "split_of"]
