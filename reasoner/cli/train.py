"""`reasoner train RECIPE`: cold-start SFT then GRPO, resumable."""
from __future__ import annotations


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "train", help="run a training recipe (SFT cold start, then GRPO)",
        description="Run a recipe from configs/recipes/ (or a YAML path). Rerunning the same command after "
        "an interruption resumes from the last complete checkpoint; finished stages are skipped.",
    )
    parser.add_argument("recipe", nargs="?", help="recipe YAML or packaged name (e.g. demo, arith)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set grpo.beta=0.01 (repeatable)")
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation at the end")
    dry = parser.add_argument_group("planning (no training)")
    dry.add_argument("--dry-run", action="store_true",
                     help="validate the recipe as a run would (model on the meta device, LoRA, TRL config, data, "
                          "accelerate config) and print a per-GPU memory and step-time plan; exits 1 if it does not fit")
    dry.add_argument("--accelerate-config", metavar="F", default=None,
                     help="with --dry-run: accelerate config (ddp, fsdp, zero3 or a path; default: recipe parallel.accelerate_config)")
    dry.add_argument("--gpus", type=int, default=None, metavar="N", help="with --dry-run: GPU count (default: recipe parallel.gpus)")
    dry.add_argument("--gpu", choices=("h100", "h200", "h800", "a100"), default=None,
                     help="with --dry-run: GPU type (default: recipe parallel.gpu)")
    dry.add_argument("--mfu", type=float, default=None, help="with --dry-run: assumed MFU for the step time (default: recipe parallel.mfu)")
    dry.add_argument("--v3-pretraining-check", action="store_true",
                     help="print the MFU the planner's FLOPs imply for DeepSeek-V3 pre-training (14.8T tokens, "
                          "2.664M H800 GPU-hours) and exit (no RECIPE needed)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console

    from reasoner.errors import ReasonerError
    from reasoner.progress import printable, quiet_libraries
    from reasoner.rl.recipe import Recipe

    console = Console(highlight=False)
    if getattr(args, "v3_pretraining_check", False):
        from reasoner.rl.dryrun import render_v3_check, v3_pretraining_check

        print("\n".join(render_v3_check(v3_pretraining_check())))
        return 0
    if not args.recipe:
        raise ReasonerError("which recipe? e.g. reasoner train demo (packaged name) or a recipe YAML path")
    recipe = Recipe.load(args.recipe, args.overrides)
    quiet_libraries()  # imports transformers and datasets: only once the recipe is known to be good
    if getattr(args, "dry_run", False):
        from reasoner.rl.dryrun import dry_run, exit_code, render

        if args.gpus is not None and args.gpus < 1:
            raise ReasonerError("--gpus must be at least 1")
        plan = dry_run(recipe, gpus=args.gpus, gpu=args.gpu, accelerate_config=args.accelerate_config, mfu=args.mfu)
        print("\n".join(render(plan)))
        return exit_code(plan)
    from reasoner.rl.train import train  # after the recipe is validated: a bad value fails in a second, not after torch

    result = train(recipe, log=lambda text: console.print(printable(text), markup=False, soft_wrap=True))
    if not args.no_eval:
        from pathlib import Path

        from reasoner.evaluation.checkpoints import evaluate_checkpoint, results_table
        from reasoner.rl.train import heldout_problems

        problems = heldout_problems(recipe)
        results = {stage: evaluate_checkpoint(path, problems, sampling=recipe.eval.sampling,
                                              samples=recipe.eval.samples,
                                              prompt_style=recipe.task.prompt_style,
                                              output=Path(recipe.output_dir) / stage / "eval.jsonl",
                                              description=f"evaluating {stage}")
                   for stage, path in result.checkpoints.items()}
        console.print(results_table(results, f"held-out {recipe.task.name} level {recipe.task.eval_level}, "
                                             f"n={len(problems)}"))
    return 0
