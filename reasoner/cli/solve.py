"""`reasoner solve`: solve a problem through the verified pipeline, printing progress as it goes."""
from __future__ import annotations

import argparse
import sys

DEFAULTS = {"samples": 4, "retries": 2, "temperature": 0.7, "max_tokens": 512, "time_budget": 300.0}


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "solve", help="solve a math or code problem with plan -> solve -> verify -> vote -> reflect",
        description="Solve a problem with a local checkpoint (--model) or an OpenAI-compatible server "
                    "(--base-url). Progress goes to stderr, the answer to stdout. Every run is checkpointed: "
                    "after Ctrl-C, --resume RUN_ID continues it.",
        epilog="examples:\n  reasoner solve --model runs/demo/checkpoint '37+48*3-25*2+9'\n"
               "  reasoner solve --base-url http://127.0.0.1:8000/v1 --model tiny --samples 8 '12*7-5'\n"
               "  reasoner solve --model ckpt --resume 3f2a...",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("problem", nargs="?", help="the problem text; '-' reads it from stdin")
    source = parser.add_argument_group("model")
    source.add_argument("--model", required=True,
                        help="checkpoint directory; with --base-url, the model name to request")
    source.add_argument("--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    source.add_argument("--api-key", help="API key for --base-url (default: $OPENAI_API_KEY)")
    options = parser.add_argument_group("solving")
    options.add_argument("--samples", type=int, default=DEFAULTS["samples"], help="answers voted on per (sub-)problem (default: %(default)s)")
    options.add_argument("--retries", type=int, default=DEFAULTS["retries"], help="reflect-and-retry rounds after a failed check (default: %(default)s)")
    options.add_argument("--temperature", type=float, default=DEFAULTS["temperature"], help="sampling temperature (default: %(default)s)")
    options.add_argument("--max-tokens", type=int, default=DEFAULTS["max_tokens"], help="tokens per answer (default: %(default)s)")
    options.add_argument("--time-budget", type=float, default=DEFAULTS["time_budget"], help="seconds for the whole run (default: %(default)s)")
    options.add_argument("--seed", type=int, default=None, help="sampling seed")
    options.add_argument("--no-decompose", dest="decompose", action="store_false", help="solve directly, without a plan")
    options.add_argument("--no-verify", dest="verify", action="store_false", help="skip verification (plain majority vote)")
    options.add_argument("--reference", help="a known answer to verify against")
    options.add_argument("--code-tests", metavar="FILE", help="code task: a file of assert statements, one per line")
    options.add_argument("--entry-point", help="code task: the function the tests call")
    runs = parser.add_argument_group("runs")
    runs.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run")
    runs.add_argument("--history", metavar="RUN_ID", help="list a run's checkpoints and exit")
    runs.add_argument("--checkpoints", help="checkpoint file (default: $REASONER_HOME/pipeline.db or runs/pipeline.db)")
    runs.add_argument("--traces", help="trace store (default: $REASONER_HOME/traces.db or runs/traces.db)")
    parser.add_argument("--json", action="store_true", help="print the whole solution as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=run)


def run(args) -> int:
    import json
    import os
    import uuid

    from transformers.utils import logging as hf_logging

    from reasoner.api import Reasoner

    hf_logging.disable_progress_bar()  # weight-loading bars would drown the progress lines

    options = {name: getattr(args, name) for name in (*DEFAULTS, "seed", "decompose", "verify")}
    common = {"checkpoints": args.checkpoints, "traces": args.traces, **options}
    if args.base_url:
        reasoner = Reasoner.from_openai(args.base_url, args.model, args.api_key or os.environ.get("OPENAI_API_KEY"),
                                        **common)
    else:
        reasoner = Reasoner.from_pretrained(args.model, **common)
    with reasoner:
        if args.history:
            for entry in reasoner.history(args.history):
                print(f"{entry['step']:>4}  {entry['created']}  next: {', '.join(entry['next']) or '(done)'}")
            return 0
        report = None if args.quiet else print_progress
        run_id = args.resume or uuid.uuid4().hex
        try:
            if args.resume:
                solution = reasoner.resume(run_id, progress=report)
            else:
                solution = reasoner.solve(_problem(args), run_id=run_id, progress=report, **_task(args))
        except KeyboardInterrupt:
            print(f"interrupted; continue with: reasoner solve --model {args.model} --resume {run_id}", file=sys.stderr)
            return 130
    if args.json:
        print(json.dumps(solution.to_dict(), indent=2))
    else:
        for event in solution.events:
            print(f"note: {event}", file=sys.stderr)
        mark = "verified" if solution.verified else solution.status
        print(f"[{mark}] run {solution.run_id} ({solution.elapsed_s:.1f}s)", file=sys.stderr)
        print(solution.answer if solution.answer is not None else f"no answer: {solution.error}")
    return 0 if solution.answer is not None else 1


def _problem(args) -> str:
    from reasoner.errors import ReasonerError

    if args.problem is None:
        raise ReasonerError("give a problem, '-' to read it from stdin, or --resume RUN_ID")
    return sys.stdin.read() if args.problem == "-" else args.problem


def _task(args) -> dict:
    from pathlib import Path

    from reasoner.errors import ReasonerError

    if not args.code_tests:
        return {"reference": args.reference}
    path = Path(args.code_tests)
    if not path.is_file():
        raise ReasonerError(f"--code-tests {path}: file not found")
    tests = [line for line in path.read_text().splitlines() if line.strip()]
    return {"task": "code", "tests": tests, "entry_point": args.entry_point}


def print_progress(event: dict) -> None:
    from reasoner.progress import printable

    node, step = event.get("node"), event.get("step")
    if node == "plan":
        line = "plan     asking for sub-problems"
    elif node == "sample":
        retry = f" (retry {event['attempt']})" if event.get("attempt") else ""
        line = f"solve    step {step}: {_short(event['question'])}{retry}"
    elif node == "reflect":
        line = f"reflect  step {step}: the check failed, trying again"
    elif node == "solved":
        line = f"         step {step}: {_short(event['question'])} -> {event['answer']} [{event['status']}]"
    elif node == "answer":
        line = f"answer   {event['answer']} [{event['status']}]"
    else:
        line = str(event)
    print(printable(line, keep_layout=False), file=sys.stderr, flush=True)  # one line, control characters shown


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"
