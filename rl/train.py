"""The R1 recipe end to end: cold-start SFT, then GRPO, each stage resumable and saved atomically.

Layout of a run directory:
    sft/checkpoint-N/   Trainer checkpoints (resume points)     sft/final/   the cold-start model
    grpo/checkpoint-N/                                          grpo/final/  the RL model
    */training.png      reward, accuracy, length and MaxVio over steps
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import set_seed

from reasoner.model import is_checkpoint, load_model, save_checkpoint
from reasoner.rl.data import grpo_dataset, plan_rows, sft_dataset
from reasoner.rl.lora import merged, with_lora
from reasoner.rl.plots import plot_training
from reasoner.rl.recipe import Recipe
from reasoner.tasks import Problem, get_task


@dataclass
class TrainResult:
    checkpoints: dict[str, Path] = field(default_factory=dict)   # stage -> final checkpoint
    plots: dict[str, Path] = field(default_factory=dict)


def training_problems(recipe: Recipe, levels: list[int], total: int, task_name: str | None = None) -> list[Problem]:
    task = get_task(task_name or recipe.task.name)
    per_level = max(1, total // max(1, len(levels)))
    return [p for level in levels for p in task.problems("train", per_level, level=level, seed=recipe.seed)]


def heldout_problems(recipe: Recipe, level: int | None = None, n: int | None = None) -> list[Problem]:
    task = get_task(recipe.task.name)
    return task.problems("heldout", n or recipe.task.n_eval, level=level or recipe.task.eval_level, seed=recipe.seed)


def train(recipe: Recipe, log=print) -> TrainResult:
    set_seed(recipe.seed)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    out = Path(recipe.output_dir)
    result = TrainResult()
    start = recipe.model
    if recipe.sft.enabled:
        start = _stage(result, "sft", out, start, recipe, log)
    if recipe.grpo.enabled:
        _stage(result, "grpo", out, start, recipe, log)
    return result


def _stage(result: TrainResult, stage: str, out: Path, start: str | Path, recipe: Recipe, log) -> Path:
    final = out / stage / "final"
    if is_checkpoint(final):
        log(f"[{stage}] already finished: {final} (delete it to train again)")
    else:
        model, tokenizer = load_model(start)
        model = with_lora(model, recipe.lora)
        log(f"[{stage}] training from {start}" + (f" with LoRA r={recipe.lora.r}" if recipe.lora.enabled else ""))
        trainer = _run_stage(stage, recipe, model, tokenizer, out / stage)
        # Under `accelerate launch` every rank gets here with the same weights: one writes, all wait for it
        # (the next stage loads `final` on every rank).
        if trainer.accelerator.is_main_process:
            save_checkpoint(merged(model), tokenizer, final,
                            {"stage": stage, "recipe": recipe.to_dict(), "started_from": str(start)})
            plot = plot_training(trainer.state.log_history, out / stage / "training.png", f"{recipe.name}: {stage}")
            if plot:
                result.plots[stage] = plot
                (final / "training.png").write_bytes(plot.read_bytes())
            log(f"[{stage}] saved {final}")
        trainer.accelerator.wait_for_everyone()
    result.checkpoints[stage] = final
    return final


def _run_stage(stage: str, recipe: Recipe, model, tokenizer, output_dir: Path):
    use_cpu = not torch.cuda.is_available()
    style = recipe.task.prompt_style
    if stage == "sft":
        from reasoner.rl.sft import run_sft

        levels = recipe.task.train_levels
        problems = training_problems(recipe, levels, recipe.task.per_level * len(levels))
        problems += training_problems(recipe, recipe.sft.code_levels, recipe.sft.code_per_level * len(recipe.sft.code_levels),
                                      "code") if recipe.sft.code_levels else []
        plans = training_problems(recipe, recipe.sft.plan_levels, recipe.sft.plan_per_level * len(recipe.sft.plan_levels))
        dataset = sft_dataset(problems, tokenizer, style, plan_rows(plans, tokenizer, style) if plans else (),
                              direct_fraction=recipe.sft.direct_fraction)
        return run_sft(recipe, model, tokenizer, dataset, output_dir, use_cpu)
    from reasoner.rl.grpo import run_grpo, trace_sink

    problems = training_problems(recipe, recipe.grpo.levels, recipe.grpo.n_prompts)
    return run_grpo(recipe, model, tokenizer, grpo_dataset(problems, tokenizer, style), output_dir, use_cpu,
                    rollout_sink=trace_sink(task=recipe.task.name, model=f"{recipe.name}/grpo"))
