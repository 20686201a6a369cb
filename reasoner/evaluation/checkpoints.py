"""A checkpoint on a task split: pass@1, maj@K and pass@K with 95% bootstrap CIs, per-problem JSON lines."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from rich.table import Table

from reasoner.evaluation.grading import grade_many
from reasoner.evaluation.metrics import Metric, bootstrap, voted_completion
from reasoner.generation import sample
from reasoner.model import load_model
from reasoner.rl.data import render_prompt
from reasoner.sampling import Sampling
from reasoner.tasks.base import Problem


GREEDY = Sampling(temperature=0.0, max_tokens=96, seed=0)


def evaluate(model, tokenizer, problems: Sequence[Problem], sampling: Sampling = GREEDY, samples: int = 1,
             prompt_style: str = "plain", output: Path | None = None,
             description: str | None = None) -> dict[str, Metric]:
    """K completions per problem. maj@K votes over the answers (grading only the winner); pass@K is the
    oracle upper bound, reported as such, never as a method's accuracy."""
    prompts = [render_prompt(p.question, tokenizer, prompt_style) for p in problems]
    if samples > 1 and sampling.greedy:
        sampling = replace(sampling, temperature=1.0)  # K identical greedy samples would make maj@K meaningless
    completions = sample(model, tokenizer, prompts, sampling, samples, description=description)
    flat = grade_many([p for p in problems for _ in range(samples)], [t for texts in completions for t in texts])
    voted = [voted_completion(p.kind, texts) for p, texts in zip(problems, completions)]
    voted_right = grade_many(problems, voted)
    rows = []
    for i, (problem, texts) in enumerate(zip(problems, completions)):
        correct = flat[i * samples:(i + 1) * samples]
        rows.append({"id": problem.id, "question": problem.question, "gold": problem.answer,
                     "completions": texts, "correct": correct, "pass@1": sum(correct) / len(correct),
                     f"pass@{samples}": float(any(correct)), f"maj@{samples}": float(voted_right[i])})
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("".join(json.dumps(r) + "\n" for r in rows))
    keys = ["pass@1"] + ([f"maj@{samples}", f"pass@{samples}"] if samples > 1 else [])
    return {key: bootstrap([r[key] for r in rows]) for key in keys}


def evaluate_checkpoint(checkpoint: str | Path, problems: Sequence[Problem], *, sampling: Sampling = GREEDY,
                        samples: int = 1, prompt_style: str = "plain", output: Path | None = None,
                        description: str | None = None) -> dict[str, Metric]:
    model, tokenizer = load_model(checkpoint)
    return evaluate(model, tokenizer, problems, sampling, samples, prompt_style, output, description)


def results_table(results: dict[str, dict[str, Metric]], title: str) -> Table:
    metrics = list(next(iter(results.values())))
    table = Table(title=title)
    table.add_column("checkpoint")
    for metric in metrics:
        table.add_column(f"{metric} (95% CI)", justify="right")
    for stage, values in results.items():
        table.add_row(stage, *(str(values[m]) for m in metrics))
    return table
