"""The R1 recipe end to end: cold-start SFT, then GRPO, each stage resumable and saved atomically.

Layout of a run directory:
    sft/checkpoint-N/   Trainer checkpoints (resume points)     sft/final/   the cold-start model
    grpo/checkpoint-N/                                          grpo/final/  the RL model
    */training.png      loss and token accuracy (SFT); reward parts, accuracy, length, KL and MaxVio (GRPO)
    */logs/             TensorBoard event files, with report_to: tensorboard
    run.json            this run's id (every `reasoner train` gets one), recipe and stages
    traces.db           GRPO rollouts, tagged with the run id (unless recipe.traces or $REASONER_HOME names a store)
"""
from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import trl
from transformers import set_seed

from reasoner.model import is_checkpoint, load_model, save_checkpoint
from reasoner.rl.checkpoints import gather_for_save
from reasoner.rl.data import grpo_dataset, plan_rows, sft_dataset, word_plan_rows
from reasoner.rl.distill import read_rows, sft_rows_dataset, write_lineage
from reasoner.rl.grpo import run_grpo, trace_sink
from reasoner.rl.lora import with_lora
from reasoner.rl.plots import plot_training
from reasoner.rl.recipe import Recipe
from reasoner.rl.rejection import run_rejection
from reasoner.rl.sft import run_sft
from reasoner.rl.traindata import train_problems
from reasoner.tasks import Problem, get_task
from reasoner.traces.store import default_store_path, resolve_store_path


@dataclass
class TrainResult:
    checkpoints: dict[str, Path] = field(default_factory=dict)   # stage -> final checkpoint
    plots: dict[str, Path] = field(default_factory=dict)


def training_problems(recipe: Recipe, levels: list[int], total: int, task_name: str | None = None) -> list[Problem]:
    data = recipe.task.train_data
    if task_name is None and (data.gsm8k or data.math):  # real train splits (GSM8K, MATH) from a path or a hub
        return train_problems(data, total, seed=recipe.seed)
    task = get_task(task_name or recipe.task.name)
    per_level = max(1, total // max(1, len(levels)))
    return [p for level in levels for p in task.problems("train", per_level, level=level, seed=recipe.seed)]


def heldout_problems(recipe: Recipe, level: int | None = None, n: int | None = None,
                     split: str = "heldout") -> list[Problem]:
    """The eval level's problems: `heldout` is the test split (reported once), `validation` where settings are chosen."""
    task = get_task(recipe.task.name)
    return task.problems(split, n or recipe.task.n_eval, level=level or recipe.task.eval_level, seed=recipe.seed)


def start_run(recipe: Recipe, log=print) -> str:
    """A new run id for this `reasoner train`, recorded in <output_dir>/run.json (earlier ids of the same
    output_dir, e.g. interrupted and resumed, are kept there too). Rollouts carry it as metadata `run`."""
    out = Path(recipe.output_dir)
    run_id = f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    path = out / "run.json"
    previous = []
    try:
        previous = json.loads(path.read_text()).get("previous_runs", [])
        previous.append(json.loads(path.read_text())["run"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run": run_id, "recipe": recipe.name, "output_dir": str(out),
                                "traces": str(traces_store(recipe)), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                "previous_runs": previous}, indent=1))
    log(f"run {run_id}: rollouts go to {traces_store(recipe)} "
        f"(reasoner traces --store {traces_store(recipe)} ui, or list --run {run_id})")
    return run_id


def current_run(recipe: Recipe) -> str:
    try:
        return json.loads((Path(recipe.output_dir) / "run.json").read_text())["run"]
    except (OSError, ValueError, KeyError):
        return start_run(recipe, log=lambda _: None)


def traces_store(recipe: Recipe) -> Path:
    """Where a run's rollouts go: recipe.traces if given, else $REASONER_HOME/traces.db if set, else the run's
    own <output_dir>/traces.db (two runs never mix their rollouts in one global store)."""
    if recipe.traces:
        return resolve_store_path(recipe.traces)
    if os.environ.get("REASONER_HOME"):
        return default_store_path()
    return Path(recipe.output_dir) / "traces.db"


def train(recipe: Recipe, log=print) -> TrainResult:
    _prepare(recipe)
    out = Path(recipe.output_dir)
    start_run(recipe, log)
    result = TrainResult()
    start, dataset = recipe.model, None
    for stage, kind in stage_plan(recipe):
        if kind == "rejection":  # R1's stage 3: its dataset is what the next sft stage trains on
            dataset = run_rejection(recipe, start, out / stage, traces_store(recipe), log)
            continue
        if kind == "sft" and dataset is not None:
            if read_rows(dataset):
                start = _stage(result, stage, out, start, after_rejection(recipe), log, kind="sft_data", dataset=dataset)
            else:  # a weak checkpoint may pass nothing: the run goes on from it rather than failing here
                log(f"[{stage}] skipped: the rejection stage kept no samples ({dataset})")
            dataset = None
            continue
        start = _stage(result, stage, out, start, recipe, log, kind=kind)
    return result


def stage_plan(recipe: Recipe) -> list[tuple[str, str]]:
    """(directory, kind) per stage: recipe.stages in order, a repeated kind numbered (sft, grpo, rejection,
    sft-2, grpo-2); without a stage list, sft then grpo, each when enabled."""
    kinds = recipe.stages or [k for k, on in (("sft", recipe.sft.enabled), ("grpo", recipe.grpo.enabled)) if on]
    plan, seen = [], {}
    for kind in kinds:
        seen[kind] = seen.get(kind, 0) + 1
        plan.append((kind if seen[kind] == 1 else f"{kind}-{seen[kind]}", kind))
    return plan


def after_rejection(recipe: Recipe) -> Recipe:
    """The recipe for the sft stage that trains on a rejection stage's dataset (its own steps and rate)."""
    rejection = recipe.rejection
    return replace(recipe, sft=replace(recipe.sft, max_steps=rejection.sft_max_steps or recipe.sft.max_steps,
                                       learning_rate=rejection.sft_learning_rate or recipe.sft.learning_rate))


def train_sft_equal_compute(recipe: Recipe, cold_start: str | Path, learning_rate: float, log=print) -> Path:
    """The baseline GRPO has to beat: from the same cold start, SFT on the gold traces of the prompts GRPO
    trained on, one batch of them per GRPO step, for as many optimizer steps. Returns its final checkpoint."""
    arm = replace(recipe, sft=replace(recipe.sft, max_steps=recipe.grpo.max_steps, batch_size=recipe.grpo.prompts_per_step,
                                      learning_rate=learning_rate, warmup_steps=recipe.grpo.warmup_steps,
                                      direct_fraction=0.0))
    _prepare(recipe)
    return _stage(TrainResult(), f"sft-equal-lr{learning_rate:g}", Path(recipe.output_dir), cold_start, arm, log,
                  kind="sft_equal")


def train_on_dataset(recipe: Recipe, start: str | Path, dataset: Path, stage: str = "student", log=print) -> Path:
    """SFT from `start` on kept samples (a distillation's dataset.jsonl) with recipe.sft's settings, into
    <output_dir>/<stage>/final, with lineage.json beside config.json. Returns the final checkpoint."""
    _prepare(recipe)
    return _stage(TrainResult(), stage, Path(recipe.output_dir), start, recipe, log, kind="sft_data", dataset=dataset)


def train_balance_probe(recipe: Recipe, gamma: float, steps: int, log=print) -> list[dict]:
    """A short cold-start SFT from fresh weights with balancing speed `gamma`; returns MaxVio per step and layer
    ({"step", "maxvio": [...]}), how unevenly the routed experts were loaded."""
    probe = replace(recipe, sft=replace(recipe.sft, max_steps=steps), balance=replace(recipe.balance, gamma=gamma))
    _prepare(recipe)
    final = _stage(TrainResult(), f"balance-gamma{gamma:g}", Path(recipe.output_dir), recipe.model, probe, log,
                   kind="sft")
    return json.loads((final.parent / "maxvio.json").read_text())


def _prepare(recipe: Recipe) -> None:
    set_seed(recipe.seed)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)


def _stage(result: TrainResult, stage: str, out: Path, start: str | Path, recipe: Recipe, log,
           kind: str | None = None, dataset: Path | None = None) -> Path:
    final = out / stage / "final"
    if is_checkpoint(final):
        log(f"[{stage}] already finished: {final} (delete it to train again)")
    else:
        model, tokenizer = load_model(start)
        model = with_lora(model, recipe.lora)
        log(f"[{stage}] training from {start}" + (f" with LoRA r={recipe.lora.r}" if recipe.lora.enabled else ""))
        trainer = _run_stage(kind or stage, recipe, model, tokenizer, out / stage, dataset)
        # Under `accelerate launch` every rank gets here with the same weights (or, sharded, its shard of them: all
        # gather them to rank 0); one writes, all wait for it (the next stage loads `final` on every rank).
        to_save, state_dict = gather_for_save(trainer, model)
        if trainer.accelerator.is_main_process:
            save_checkpoint(to_save, tokenizer, final,
                            {"stage": stage, "recipe": recipe.to_dict(), "started_from": str(start)}, state_dict)
            if dataset is not None:  # which dataset and traces this checkpoint learned from
                write_lineage(final, dataset, traces_store(recipe))
            (out / stage / "log_history.json").write_text(json.dumps(trainer.state.log_history))
            balancer = getattr(trainer, "balancer", None)
            if balancer is not None:  # per step, per layer: the load-balancing evidence
                (out / stage / "maxvio.json").write_text(json.dumps(balancer.history))
            plot = plot_training(trainer.state.log_history, out / stage / "training.png", f"{recipe.name}: {stage}")
            if plot:
                result.plots[stage] = plot
                (final / "training.png").write_bytes(plot.read_bytes())
            (out / stage / "README.md").write_text(model_card(recipe, stage, kind or stage, start))  # TRL's: "[None]"
            log(f"[{stage}] saved {final}")
        trainer.accelerator.wait_for_everyone()
    result.checkpoints[stage] = final
    return final


def dataset_description(recipe: Recipe, kind: str) -> str:
    if kind == "sft_data":
        return "kept teacher samples: `lineage.json` beside `config.json` names the dataset and its traces"
    data = recipe.task.train_data
    real = [f"{name} train ({path})" for name, path in (("GSM8K", data.gsm8k), ("MATH", data.math)) if path]
    if real and kind == "grpo":
        return ", ".join(real)
    levels = recipe.grpo.levels if kind in ("grpo", "sft_equal") else recipe.task.train_levels
    text = f"generated `{recipe.task.name}` problems, levels {', '.join(map(str, levels))}"
    if kind == "sft":
        extra = [f"{name} levels {', '.join(map(str, lv))}" for name, lv in (
            ("plans", recipe.sft.plan_levels), ("code", recipe.sft.code_levels), ("word", recipe.sft.word_levels)) if lv]
        text += " with worked `<think>` traces" + (f" (plus {'; '.join(extra)})" if extra else "")
    return text + f" (seed {recipe.seed})"


def model_card(recipe: Recipe, stage: str, kind: str, start) -> str:
    """The stage's README.md: what TRL writes names no base model for a local one ("fine-tuned version of [None]")."""
    method = {"grpo": "GRPO (R1-style RL with rule-based rewards: " + ", ".join(recipe.grpo.rewards) + ")",
              "sft_data": "supervised fine-tuning on kept samples (rejection sampling or distillation)",
              "sft": "supervised fine-tuning (cold start)", "sft_equal": "supervised fine-tuning (equal-compute baseline)"}
    run_id = current_run(recipe)
    return f"""---
library_name: transformers
tags: [reasoner, trl, {kind}]
---
# {recipe.name} / {stage}

A fine-tuned version of `{start}` (base model), trained with {method.get(kind, kind)} by
[TRL](https://github.com/huggingface/trl) {trl.__version__} through `reasoner train`.

| | |
|---|---|
| base model | `{start}` |
| recipe | `{recipe.name}` (output_dir `{recipe.output_dir}`) |
| run id | `{run_id}` |
| stage | {stage} |
| dataset | {dataset_description(recipe, kind)} |
| steps | {(recipe.grpo if kind == "grpo" else recipe.sft).max_steps} |

The checkpoint is in `final/`; `training.png` plots the run, `log_history.json` holds every logged value,
and the rollouts are in the trace store (`reasoner traces --store {traces_store(recipe)} ui`, run `{run_id}`).
"""


def _run_stage(stage: str, recipe: Recipe, model, tokenizer, output_dir: Path, dataset: Path | None = None):
    use_cpu = not torch.cuda.is_available()
    style = recipe.task.prompt_style
    if stage == "sft_data":  # kept samples of a rejection stage or a distillation
        return run_sft(recipe, model, tokenizer, sft_rows_dataset(dataset, tokenizer, style), output_dir, use_cpu)
    if stage == "sft_equal":
        problems = training_problems(recipe, recipe.grpo.levels, recipe.grpo.n_prompts)  # GRPO's own prompts
        return run_sft(recipe, model, tokenizer, sft_dataset(problems, tokenizer, style), output_dir, use_cpu)
    if stage == "sft":
        levels = recipe.task.train_levels
        problems = training_problems(recipe, levels, recipe.task.per_level * len(levels))
        problems += training_problems(recipe, recipe.sft.code_levels, recipe.sft.code_per_level * len(recipe.sft.code_levels),
                                      "code") if recipe.sft.code_levels else []
        words = training_problems(recipe, recipe.sft.word_levels, recipe.sft.word_per_level * len(recipe.sft.word_levels),
                                  "word") if recipe.sft.word_levels else []
        plans = training_problems(recipe, recipe.sft.plan_levels, recipe.sft.plan_per_level * len(recipe.sft.plan_levels))
        extra = (plan_rows(plans, tokenizer, style) if plans else []) + word_plan_rows(words, tokenizer, style)
        dataset = sft_dataset(problems + words, tokenizer, style, extra, direct_fraction=recipe.sft.direct_fraction)
        return run_sft(recipe, model, tokenizer, dataset, output_dir, use_cpu)
    if stage != "grpo":
        raise ValueError(f"unknown stage kind {stage!r}: expected sft, sft_data, sft_equal or grpo")
    problems = training_problems(recipe, recipe.grpo.levels, recipe.grpo.n_prompts)
    sink = trace_sink(task=recipe.task.name, model=f"{recipe.name}/grpo", store_path=traces_store(recipe),
                      metadata={"run": current_run(recipe), "output_dir": str(Path(recipe.output_dir)),
                                "recipe": recipe.name, "stage": "grpo"}, group_size=recipe.grpo.num_generations)
    return run_grpo(recipe, model, tokenizer, grpo_dataset(problems, tokenizer, style), output_dir, use_cpu,
                    rollout_sink=sink)
