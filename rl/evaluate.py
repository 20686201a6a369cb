"""Evaluation: pass@1, maj@K and pass@K with 95% bootstrap confidence intervals, per-problem JSON lines."""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from reasoner.generation import sample
from reasoner.rl.data import render_prompt
from reasoner.tasks.base import Problem
from reasoner.tasks.grading import checked_as_solution, grade_completion
from reasoner.verify import answers_equal, extract_answer


@dataclass
class Metric:
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{100 * self.value:5.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def grade(problem: Problem, completion: str) -> bool:
    return grade_completion(problem.task, completion, problem.answer, problem.tests, problem.entry_point) == 1.0


def majority_correct(problem: Problem, completions: list[str], correct: list[bool]) -> bool:
    """Vote over extracted answers, grouping equivalent ones; code, countdown: any passing solution wins."""
    if checked_as_solution(problem.task, problem.tests):
        return any(correct)
    groups: list[tuple[str, int, bool]] = []  # (representative answer, votes, correct)
    for completion, ok in zip(completions, correct):
        answer = extract_answer(completion)
        if answer is None:
            continue
        for i, (rep, votes, rep_ok) in enumerate(groups):
            if answers_equal(rep, answer):
                groups[i] = (rep, votes + 1, rep_ok)
                break
        else:
            groups.append((answer, 1, ok))
    return bool(groups) and max(groups, key=lambda g: g[1])[2]


def bootstrap(scores: list[float], resamples: int = 1000, seed: int = 0) -> Metric:
    rng = random.Random(seed)
    n = len(scores)
    means = sorted(sum(rng.choices(scores, k=n)) / n for _ in range(resamples))
    return Metric(sum(scores) / n, means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1])


def evaluate(model, tokenizer, problems: list[Problem], samples: int = 1, temperature: float = 0.0,
             max_new_tokens: int = 96, prompt_style: str = "plain", output: Path | None = None,
             description: str | None = None) -> dict[str, Metric]:
    prompts = [render_prompt(p.question, tokenizer, prompt_style) for p in problems]
    if samples > 1 and temperature == 0:
        temperature = 1.0  # K identical greedy samples would make maj@K and pass@K meaningless
    completions = sample(model, tokenizer, prompts, samples, temperature, max_new_tokens=max_new_tokens,
                         description=description)
    rows = []
    for problem, texts in zip(problems, completions):
        correct = [grade(problem, t) for t in texts]
        rows.append({"id": problem.id, "question": problem.question, "gold": problem.answer,
                     "completions": texts, "correct": correct,
                     "pass@1": sum(correct) / len(correct), f"pass@{samples}": float(any(correct)),
                     f"maj@{samples}": float(majority_correct(problem, texts, correct))})
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("".join(json.dumps(r) + "\n" for r in rows))
    keys = ["pass@1"] + ([f"maj@{samples}", f"pass@{samples}"] if samples > 1 else [])
    return {key: bootstrap([r[key] for r in rows]) for key in keys}
