"""`make demo`: the whole product on 2 CPU cores, on built-in defaults, every figure honest.

1. the cold start: the tiny MoE model SFT'd on countdown, word problems (worked answers and plans) and
   code with shown examples (configs/recipes/demo.yaml), on both cores;
2. then, in two one-thread processes: GRPO on countdown; the same cold start trained by SFT on the gold
   traces of GRPO's prompts for as many steps (two learning rates, the better chosen on the validation
   split); two short SFT runs with and without load balancing; and the pipeline (serving the cold start)
   against direct answering, sampled pass@1 and majority voting at the same sample budget, with the
   question-blind control, on word problems, countdown and code (reasoner.evaluation.compare);
3. every checkpoint evaluated once on the held-out (test) split of the eval level;
4. one problem through the Python API;
and every figure written to runs/demo/summary.json. Rerunning resumes: finished stages and finished
comparisons are kept.
"""
from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from reasoner.api import Reasoner
from reasoner.evaluation.checkpoints import evaluate_checkpoint
from reasoner.evaluation.compare import PipelineSettings, compare_task
from reasoner.evaluation.summary import write_summary
from reasoner.progress import quiet_libraries
from reasoner.rl.recipe import Recipe
from reasoner.rl.train import heldout_problems, train, train_balance_probe, train_sft_equal_compute
from reasoner.serving.backends import LocalBackend
from reasoner.tasks import get_task

# The pipeline comparison per task: (level, test problems, settings). Levels and settings were chosen on the
# validation split (`python benchmarks/pipeline.py --split validation`, benchmarks/RESULTS.md), never on test.
PIPELINE_TASKS = {  # longest first: the two worker processes take them in this order
    "countdown": (1, 200, PipelineSettings(samples=16, retries=3, temperature=1.0, max_tokens=96)),
    "code": (1, 100, PipelineSettings(samples=8, retries=3, temperature=1.0, max_tokens=96)),
    "word": (2, 200, PipelineSettings(samples=4, retries=3, temperature=1.0, max_tokens=96)),
}
EQUAL_COMPUTE_LR_FACTORS = (1.0, 10.0)  # the SFT arm's two learning rates: GRPO's and ten times it
BALANCE_PROBE_STEPS = 60  # short SFT runs from fresh weights; MaxVio read over their last 20%
API_EXAMPLE = "Using the numbers [2, 2, 6], make 10."


def run_demo(overrides: list[str] = (), console: Console | None = None, quick: bool = False) -> dict:
    """quick: a plumbing check (a few problems per comparison, small budgets), for tests."""
    console = console or Console()
    recipe = Recipe.load("demo", overrides)
    tasks = {task: _quick(spec) if quick else spec for task, spec in PIPELINE_TASKS.items()}
    out = Path(recipe.output_dir)
    started = time.perf_counter()
    summary: dict = {"recipe": recipe.name, "model": recipe.model, "eval_task": recipe.task.name,
                     "eval_level": recipe.task.eval_level}
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        console.rule("[bold]1. the cold start (both cores)")
        cold_start = pool.submit(_train, replace(recipe, grpo=replace(recipe.grpo, enabled=False))).result()["sft"]
        # Everything below needs only the cold start; two one-thread processes share it out. The pipeline serves
        # the cold start: GRPO did not raise accuracy on the validation split (benchmarks/RESULTS.md).
        console.rule("[bold]2. GRPO | the equal-compute SFT arm | balancing probes | the pipeline against its "
                     "baselines and the blind control")
        comparisons = {task: pool.submit(_compare, recipe, cold_start, task, spec) for task, spec in tasks.items()}
        single = replace(recipe, threads=1)
        grpo = pool.submit(_train, single)
        arms = [pool.submit(_sft_arm, single, cold_start, recipe.grpo.learning_rate * f)
                for f in EQUAL_COMPUTE_LR_FACTORS]
        probes = pool.submit(_balance_probes, single)
        checkpoints = {**grpo.result(), **{f"sft-equal-lr{a.result()[0]:g}": a.result()[1] for a in arms}}
        console.rule("[bold]3. held-out evaluation of the checkpoints")
        summary.update(pool.submit(_evaluate_checkpoints, single, checkpoints).result())
        summary.update(probes.result())
        summary["pipeline_checkpoint"] = str(cold_start)
        summary["pipeline_tasks"] = {task: future.result() for task, future in comparisons.items()}

    console.rule("[bold]4. the Python API")
    summary["api_example"] = api_example(cold_start, out / "traces.db", console)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    write_summary(summary, out / "summary.json")
    console.print(eval_table(summary))
    console.print(pipeline_table(summary["pipeline_tasks"]))
    console.print(f"summary: {out / 'summary.json'}   plots: {out}/*/training.png   "
                  f"traces: reasoner traces --store {out} ui")
    return summary


# ---------------------------------------------------------------- work done in the two worker processes


def _worker_setup() -> None:
    torch.set_num_threads(1)  # two workers on two cores
    quiet_libraries()


def _train(recipe: Recipe) -> dict[str, Path]:
    _worker_setup()
    return train(recipe, log=print).checkpoints


def _sft_arm(recipe: Recipe, cold_start: Path, learning_rate: float) -> tuple[float, Path]:
    _worker_setup()
    return learning_rate, train_sft_equal_compute(recipe, cold_start, learning_rate, log=print)


def _balance_probes(recipe: Recipe) -> dict:
    """MaxVio over the last 20% of steps of two otherwise identical short SFT runs: the recipe's gamma, and 0."""
    _worker_setup()
    figures = {}
    for name, gamma in (("maxvio_balanced", recipe.balance.gamma), ("maxvio_unbalanced", 0.0)):
        history = train_balance_probe(recipe, gamma, min(BALANCE_PROBE_STEPS, recipe.sft.max_steps), log=print)
        tail = history[-max(1, len(history) // 5):]
        figures[name] = round(sum(sum(h["maxvio"]) / len(h["maxvio"]) for h in tail) / len(tail), 4)
    return {**figures, "balance_gamma": recipe.balance.gamma, "balance_probe_steps": BALANCE_PROBE_STEPS}


def _evaluate_checkpoints(recipe: Recipe, checkpoints: dict[str, Path]) -> dict:
    """Greedy accuracy on the eval level: the SFT arm's learning rate is chosen on the validation split, then
    every checkpoint is scored once on the test (held-out) split."""
    _worker_setup()
    def accuracy(path: Path, split: str, n: int) -> dict:
        problems = heldout_problems(recipe, n=n, split=split)  # fewer than n when the split has fewer
        metric = evaluate_checkpoint(path, problems, sampling=recipe.eval.sampling,
                                     prompt_style=recipe.task.prompt_style)["pass@1"]
        return {**metric.to_dict(), "n": len(problems)}

    arms = {name: path for name, path in checkpoints.items() if name.startswith("sft-equal")}
    validation = {name: accuracy(path, "validation", min(200, recipe.task.n_eval))["value"] for name, path in arms.items()}
    best = max(validation, key=validation.get)
    test = {name: accuracy(checkpoints[name], "heldout", recipe.task.n_eval) for name in ("sft", "grpo", best)}
    return {"sft_accuracy": test["sft"]["value"], "grpo_accuracy": test["grpo"]["value"],
            "sft_equal_compute_accuracy": test[best]["value"], "sft_equal_compute_arm": best,
            "sft_equal_compute_validation": validation, "n_eval": test["grpo"]["n"],
            "eval_ci95": {"sft": test["sft"]["ci95"], "grpo": test["grpo"]["ci95"], "sft_equal_compute": test[best]["ci95"]}}


def _quick(spec: tuple) -> tuple:
    level, _, settings = spec
    return level, 6, replace(settings, samples=2, retries=1, max_tokens=48)


def _compare(recipe: Recipe, checkpoint: Path, task_name: str, spec: tuple) -> dict:
    """One task's comparison, cached under runs/demo/pipeline/<task>.json so a rerun keeps it."""
    _worker_setup()
    cached = Path(recipe.output_dir) / "pipeline" / f"{task_name}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    level, n, settings = spec
    problems = get_task(task_name).problems("heldout", n, level=level, seed=recipe.seed)
    started = time.perf_counter()
    result = compare_task(LocalBackend.from_pretrained(checkpoint), problems, settings,
                          workdir=cached.parent / task_name, traces=Path(recipe.output_dir) / "traces.db",
                          seed=recipe.seed, label=task_name)
    result.update(level=level, seconds=round(time.perf_counter() - started, 1))
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result, indent=2))
    print(f"[pipeline] {task_name}: direct {result['direct_accuracy']:.3f}, maj@{result['maj_samples']} "
          f"{result['maj_accuracy']:.3f}, pipeline {result['pipeline_accuracy']:.3f}, blind "
          f"{result['blind_direct_accuracy']:.3f} -> {result['blind_pipeline_accuracy']:.3f}", flush=True)
    return result


# ---------------------------------------------------------------- reporting


def api_example(checkpoint: Path, traces: Path, console: Console) -> dict:
    console.print(f">>> Reasoner.from_pretrained({str(checkpoint)!r}).solve({API_EXAMPLE!r}, task='countdown', "
                  "samples=16, retries=3, temperature=1.0, seed=0)")
    solution = Reasoner.from_pretrained(checkpoint, traces=traces).solve(API_EXAMPLE, task="countdown", samples=16,
                                                                         retries=3, temperature=1.0, seed=0)
    console.print(repr(solution))
    return {"problem": API_EXAMPLE, "answer": solution.answer, "status": solution.status,
            "trace_id": solution.trace_id}


def eval_table(summary: dict) -> Table:
    table = Table(title=f"held-out {summary['eval_task']} level {summary['eval_level']}, greedy, "
                        f"n={summary['n_eval']}")
    table.add_column("checkpoint")
    table.add_column("accuracy (95% CI)", justify="right")
    for label, key, ci in (("cold start (SFT)", "sft_accuracy", "sft"), ("GRPO", "grpo_accuracy", "grpo"),
                           (f"SFT at equal compute ({summary['sft_equal_compute_arm']})",
                            "sft_equal_compute_accuracy", "sft_equal_compute")):
        low, high = summary["eval_ci95"][ci]
        table.add_row(label, f"{100 * summary[key]:.1f}% [{100 * low:.1f}, {100 * high:.1f}]")
    table.add_row("MaxVio, balanced / unbalanced", f"{summary['maxvio_balanced']:.2f} / {summary['maxvio_unbalanced']:.2f}")
    return table


def pipeline_table(tasks: dict) -> Table:
    table = Table(title="the pipeline against its baselines (test split; accuracies)")
    columns = ("n", "direct_accuracy", "sampled_pass_at_1", "maj_accuracy", "pipeline_accuracy",
               "blind_direct_accuracy", "blind_pipeline_accuracy")
    table.add_column("task")
    for column in ("n", "direct", "sampled pass@1", "maj@N", "pipeline", "blind direct", "blind pipeline"):
        table.add_column(column, justify="right")
    table.add_column("N (mean samples)", justify="right")
    for task, row in tasks.items():
        table.add_row(task, str(row["n"]), *(f"{100 * row[c]:.1f}%" for c in columns[1:]),
                      f"{row['maj_samples']} ({row['mean_samples']:.1f})")
    return table

