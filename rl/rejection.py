"""R1's stage 3, rejection sampling: k samples per train problem from the previous stage's checkpoint, kept
when the grader passes them (gold answers are allowed on the train split, as in R1), deduplicated and
filtered by length and format. The dataset it writes is what the next `sft` stage trains on.

Resumable like the other stages: a finished stage (its dataset.jsonl) is kept, a killed one resumes from its
journal (rl/distill.py), and every kept sample is a trace with source "distill" in the run's store.
"""
from __future__ import annotations

from pathlib import Path

from reasoner.rl.distill import DATASET, CheckpointTeacher, Filters, collect
from reasoner.rl.recipe import Recipe
from reasoner.sampling import Sampling
from reasoner.tasks import get_task


def rejection_problems(recipe: Recipe) -> list:
    """Train problems of the rejection levels; the seed is offset so they are not just GRPO's prompts again."""
    stage = recipe.rejection
    task = get_task(recipe.task.name)
    per_level = max(1, stage.n_problems // len(stage.levels))
    return [p for level in stage.levels for p in task.problems("train", per_level, level=level, seed=recipe.seed + 1)]


def run_rejection(recipe: Recipe, checkpoint: str | Path, output_dir: Path, store_path: Path, log=print) -> Path:
    """Sample, keep, dedupe, filter; returns the dataset path (already there: the stage is done)."""
    dataset = Path(output_dir) / DATASET
    if dataset.exists():
        log(f"[{output_dir.name}] already finished: {dataset} (delete it to sample again)")
        return dataset
    stage = recipe.rejection
    log(f"[{output_dir.name}] {stage.samples} samples per problem on {stage.n_problems} train problems from "
        f"{checkpoint}, kept when the grader passes them")
    teacher = CheckpointTeacher(checkpoint, stage.samples, Sampling(stage.temperature, stage.top_p,
                                                                    max_tokens=stage.max_new_tokens),
                                recipe.task.prompt_style)
    result = collect(teacher, rejection_problems(recipe), output_dir,
                     filters=Filters(stage.max_chars, stage.require_format, stage.per_problem),
                     chunk_size=stage.chunk_size, seed=recipe.seed, store_path=store_path, log=log)
    report = result.report
    log(f"[{output_dir.name}] kept {report['rows']} rows for {report['problems_with_rows']} of {report['problems']} "
        f"problems ({report.get('failed_check', 0)} failed the grader, {report.get('unparseable', 0)} unparseable, "
        f"{report.get('too_long', 0)} too long, {report.get('duplicates', 0)} duplicates)")
    return result.dataset
