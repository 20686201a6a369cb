"""Rule-based rewards for GRPO, in TRL's reward-function form: f(prompts, completions, **columns).

Answer and code checking come from `reasoner.verify`, the same verifiers the pipeline uses. A reward
returns None where it does not apply (accuracy on a code task, say); TRL then leaves it out.
"""
from __future__ import annotations

import re
from typing import Callable

from reasoner.evaluation.grading import grade_completion
from reasoner.verify import check_code

# One <think> block, then one <answer> block, nothing else around them.
FORMAT = re.compile(r"^\s*<think>(?:(?!<think>|</think>).)*</think>\s*<answer>(?:(?!<answer>|</answer>).)*</answer>\s*$",
                    re.DOTALL)


def completion_text(completion) -> str:
    """TRL passes plain strings, or message lists for conversational datasets."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion)
    return completion


def accuracy_reward(prompts, completions, answer, task=None, tests=None, **_) -> list[float | None]:
    """1.0 for the right answer; rows with tests are programs, scored by code_reward instead."""
    tasks, tests = task or [None] * len(completions), tests or [()] * len(completions)
    return [None if row_tests else grade_completion(t, completion_text(c), gold)
            for c, gold, t, row_tests in zip(completions, answer, tasks, tests)]


def format_reward(prompts, completions, **_) -> list[float]:
    return [float(bool(FORMAT.match(completion_text(c)))) for c in completions]


def code_reward(prompts, completions, tests, entry_point, **_) -> list[float | None]:
    """The fraction of a row's tests the program passes in the sandbox (built-in code tasks and HumanEval
    alike: any row with tests); None for rows without tests."""
    return [check_code(completion_text(c), list(t), e or None) if t else None
            for c, t, e in zip(completions, tests, entry_point)]


def overlong_penalty(max_length: int, buffer: int) -> Callable:
    """DAPO's soft overlong punishment: 0 up to max_length - buffer, then linearly down to -1."""

    def overlong_reward(prompts, completions, completion_ids, **_) -> list[float]:
        start = max_length - buffer
        return [0.0 if len(ids) <= start else max(-1.0, (start - len(ids)) / buffer) for ids in completion_ids]

    return overlong_reward


def build_rewards(names: list[str], max_completion_length: int, overlong_buffer: int) -> list[Callable]:
    table = {"accuracy": accuracy_reward, "format": format_reward, "code": code_reward}
    rewards = []
    for name in names:
        if name == "overlong":
            rewards.append(overlong_penalty(max_completion_length, overlong_buffer))
        else:
            rewards.append(table[name])
    return rewards


REWARD_NAMES = ("accuracy", "format", "code", "overlong")
