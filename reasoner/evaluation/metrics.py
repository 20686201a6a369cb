"""Accuracy with a 95% bootstrap confidence interval, and the majority vote the maj@N baseline takes."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from reasoner.verify import majority_completion


@dataclass
class Metric:
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{100 * self.value:5.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}]"

    def to_dict(self) -> dict:
        return {"value": round(self.value, 4), "ci95": [round(self.low, 4), round(self.high, 4)]}


def bootstrap(scores: Sequence[float], resamples: int = 1000, seed: int = 0) -> Metric:
    scores = [float(s) for s in scores]
    if not scores:
        return Metric(0.0, 0.0, 0.0)
    rng = random.Random(seed)
    n = len(scores)
    means = sorted(sum(rng.choices(scores, k=n)) / n for _ in range(resamples))
    return Metric(sum(scores) / n, means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1])


def mean(values: Sequence[float]) -> float:
    values = [float(v) for v in values]
    return round(sum(values) / len(values), 4) if values else 0.0


def voted_completion(kind: str, completions: Sequence[str]) -> str | None:
    """maj@N: the most common answer over N completions, as the pipeline's vote counts answers (equal
    values for math; the same expression or program for countdown and code), in a gradable form. It does
    not look at correctness: that is the grader's, afterwards."""
    return majority_completion(completions, kind)[0]
