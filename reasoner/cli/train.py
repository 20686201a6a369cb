"""`reasoner train RECIPE`: cold-start SFT then GRPO, resumable."""
from __future__ import annotations


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "train", help="run a training recipe (SFT cold start, then GRPO)",
        description="Run a recipe from configs/recipes/ (or a YAML path). Rerunning the same command after "
        "an interruption resumes from the last complete checkpoint; finished stages are skipped.",
    )
    parser.add_argument("recipe", help="recipe YAML or packaged name (e.g. demo, arith)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set grpo.beta=0.01 (repeatable)")
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation at the end")
    parser.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console

    from reasoner.progress import printable, quiet_libraries
    from reasoner.rl.recipe import Recipe

    console = Console(highlight=False)
    recipe = Recipe.load(args.recipe, args.overrides)
    quiet_libraries()  # imports transformers and datasets: only once the recipe is known to be good
    from reasoner.rl.train import train  # after the recipe is validated: a bad value fails in a second, not after torch

    result = train(recipe, log=lambda text: console.print(printable(text), markup=False, soft_wrap=True))
    if not args.no_eval:
        from reasoner.rl.report import evaluate_checkpoints

        evaluate_checkpoints(recipe, result.checkpoints, console)
    return 0
