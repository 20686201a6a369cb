"""Held-out evaluation of a run's checkpoints, printed as one table."""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from reasoner.model import load_model
from reasoner.rl.evaluate import Metric, evaluate
from reasoner.rl.recipe import Recipe
from reasoner.rl.train import heldout_problems


def evaluate_checkpoints(recipe: Recipe, checkpoints: dict[str, Path], console) -> dict[str, dict[str, Metric]]:
    problems = heldout_problems(recipe)
    results = {stage: _evaluate(recipe, path, problems, recipe.eval.samples, recipe.eval.temperature,
                                Path(recipe.output_dir) / stage / "eval.jsonl", f"evaluating {stage}")
               for stage, path in checkpoints.items()}
    console.print(results_table(results, f"held-out {recipe.task.name} level {recipe.task.eval_level}, "
                                         f"n={len(problems)}"))
    return results


def voting_metrics(recipe: Recipe, checkpoint: Path, k: int = 8, temperature: float = 0.7) -> dict[str, Metric]:
    """k sampled answers per held-out problem: pass@1 (their mean), maj@k (their vote), pass@k."""
    return _evaluate(recipe, checkpoint, heldout_problems(recipe), k, temperature,
                     Path(checkpoint).parent / f"eval-k{k}.jsonl", f"sampling {k} per problem")


def _evaluate(recipe: Recipe, checkpoint: Path, problems, samples: int, temperature: float, output: Path,
              description: str) -> dict[str, Metric]:
    model, tokenizer = load_model(checkpoint)
    return evaluate(model, tokenizer, problems, samples, temperature, recipe.eval.max_new_tokens,
                    recipe.task.prompt_style, output=output, description=description)


def results_table(results: dict[str, dict[str, Metric]], title: str) -> Table:
    metrics = list(next(iter(results.values())))
    table = Table(title=title)
    table.add_column("checkpoint")
    for metric in metrics:
        table.add_column(f"{metric} (95% CI)", justify="right")
    for stage, values in results.items():
        table.add_row(stage, *(str(values[m]) for m in metrics))
    return table
