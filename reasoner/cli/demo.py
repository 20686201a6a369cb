"""`reasoner demo`: train, evaluate and serve the tiny model end to end on the CPU (what `make demo` runs)."""
from __future__ import annotations


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "demo", help="train the tiny MoE model (SFT + GRPO), evaluate it, and solve through the pipeline",
        description="The main job on built-in CPU defaults: cold-start SFT (countdown, word problems, code) and GRPO "
        "on countdown against an SFT arm at equal compute, held-out evaluation, the LangGraph pipeline against "
        "direct answering, majority voting and a question-blind control, and one problem through the Python API. "
        "Writes runs/demo/summary.json. Rerunning resumes and skips finished work.",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of configs/recipes/demo.yaml, e.g. --set grpo.max_steps=50")
    parser.add_argument("--quick", action="store_true",
                        help="plumbing check: a few problems per comparison (pair with small --set step counts)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from reasoner.demo import run_demo
    from reasoner.progress import quiet_libraries

    quiet_libraries()
    run_demo(args.overrides, quick=args.quick)
    return 0
