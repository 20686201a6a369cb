"""`reasoner demo`: train, evaluate and serve the tiny model end to end on the CPU (what `make demo` runs)."""
from __future__ import annotations


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "demo", help="train the tiny MoE model (SFT + GRPO), evaluate it, and solve through the pipeline",
        description="The main job on built-in CPU defaults: cold-start SFT and GRPO on generated arithmetic, "
        "held-out evaluation, direct answering vs the LangGraph pipeline, and one problem through the Python "
        "API. Writes runs/demo/summary.json. Rerunning resumes and skips finished stages.",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of configs/recipes/demo.yaml, e.g. --set grpo.max_steps=50")
    parser.add_argument("--pipeline-problems", type=int, default=200, help="problems for the pipeline comparison")
    parser.add_argument("--pipeline-level", type=int, default=6, help="arithmetic level for that comparison")
    parser.set_defaults(func=run)


def run(args) -> int:
    from reasoner.demo import run_demo
    from reasoner.progress import quiet_libraries

    quiet_libraries()
    run_demo(args.overrides, args.pipeline_problems, args.pipeline_level)
    return 0
