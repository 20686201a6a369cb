"""`reasoner solve`: solve a problem through the verified pipeline, printing progress as it goes."""
from __future__ import annotations

import argparse
import sys

from reasoner.prompts import STYLES

DEFAULTS = {"samples": 4, "retries": 2, "temperature": 0.7, "max_tokens": 512, "time_budget": 300.0}

# Exit codes, by the solution's status (also in --help).
EXIT_ANSWERED = 0       # verified, or unverified (nothing could check it)
EXIT_NO_ANSWER = 1      # failed or timed out without an answer
EXIT_USER_ERROR = 2     # bad input or options (reasoner.cli.main)
EXIT_REJECTED = 3       # an answer, but a check failed: the best remaining guess
EXIT_CODES_HELP = ("exit codes:\n  0  answered: verified, or unverified (nothing could check it)\n"
                   "  1  no answer (failed, or the time budget ran out)\n  2  bad input or options\n"
                   "  3  an answer was found but a check rejected it (printed as the best remaining guess)\n"
                   "  130 interrupted (resume with --resume RUN_ID)\n"
                   "A trace store that cannot be written does not change the exit code: the answer is printed, "
                   "then a warning.")


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "solve", help="solve a math or code problem with plan -> solve -> verify -> vote -> reflect",
        description="Solve a problem with a local checkpoint (--model) or an OpenAI-compatible server "
                    "(--base-url). Progress goes to stderr, the answer to stdout. Every run is checkpointed: "
                    "after Ctrl-C, --resume RUN_ID continues it.",
        epilog="examples:\n"
               "  reasoner solve --model runs/demo/grpo/final --task countdown \\\n"
               "      'Using the numbers [3, 5, 8], make 23.'\n"
               "  reasoner solve --model runs/demo/grpo/final 'Ana has 7 pens. She buys 5. She doubles them. How many now?'\n"
               "  reasoner solve --base-url http://127.0.0.1:8000/v1 --model tiny --samples 8 'Ben has 3 cups. ...'\n"
               "  reasoner solve --model ckpt --resume 3f2a...\n\n" + EXIT_CODES_HELP,
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
    options.add_argument("--task", choices=("math", "countdown", "code"), default=None,
                         help="math (an answer, planned and voted), countdown (an expression certified against the "
                              "numbers and target the question states) or code (default: code with --code-tests, "
                              "else math)")
    options.add_argument("--no-feedback", dest="feedback", action="store_false",
                         help="retry by asking again rather than showing the failed answer")
    options.add_argument("--prompt-style", choices=STYLES, default=None,
                         help="how the model is asked (reasoner.prompts): compact or r1 for our checkpoints, chat for "
                              "instruction-tuned models (default: the checkpoint's recipe style; chat with --base-url)")
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
    import os
    import uuid

    from transformers.utils import logging as hf_logging

    from reasoner.api import Reasoner

    hf_logging.disable_progress_bar()  # weight-loading bars would drown the progress lines

    # Everything the user typed is checked before a model is loaded or a run is started.
    problem = task = None
    if not args.history and not args.resume:
        from reasoner.api import _check_arguments, _check_problem

        problem, task = _problem(args), _task(args)
        task["task"], task["reference"], task["tests"] = _check_arguments(
            task.get("task"), task.get("reference"), task.get("tests"), task.get("entry_point"), None, None)
        _check_problem(problem, task["task"])
    options = {name: getattr(args, name) for name in (*DEFAULTS, "seed", "decompose", "verify", "feedback")}
    if args.prompt_style:  # else each backend's own default
        options["prompt_style"] = args.prompt_style
    common = {"checkpoints": args.checkpoints, "traces": args.traces, **options}
    if args.base_url:
        reasoner = Reasoner.from_openai(args.base_url, args.model, args.api_key or os.environ.get("OPENAI_API_KEY"),
                                        **common)
    else:
        reasoner = Reasoner.from_pretrained(args.model, **common)
    with reasoner:
        if args.history:
            for entry in _checkpoint_errors(reasoner, args.history, lambda: reasoner.history(args.history)):
                print(f"{entry['step']:>4}  {entry['created']}  next: {', '.join(entry['next']) or '(done)'}")
            return 0
        report = None if args.quiet else print_progress
        run_id = args.resume or uuid.uuid4().hex
        unsaved = None
        try:
            if args.resume:
                solution = _checkpoint_errors(reasoner, run_id, lambda: reasoner.resume(run_id, progress=report))
            else:
                solution = _checkpoint_errors(
                    reasoner, run_id, lambda: reasoner.solve(problem, run_id=run_id, progress=report, **task))
        except KeyboardInterrupt:
            print(f"interrupted; continue with: reasoner solve --model {args.model} --resume {run_id}", file=sys.stderr)
            return 130
        except _TraceNotSaved as err:  # the run finished; only its trace could not be written
            solution, unsaved = err.solution, err.reason
    print_solution(solution, as_json=args.json)
    if unsaved:
        print(f"warning: the answer above was not saved to the trace store: {unsaved}", file=sys.stderr)
    return exit_code(solution)


def exit_code(solution) -> int:
    if solution.answer is None:
        return EXIT_NO_ANSWER
    return EXIT_REJECTED if solution.status == "rejected" else EXIT_ANSWERED


def print_solution(solution, as_json: bool = False) -> None:
    """The answer (or why there is none) with its status on stdout; the run's notes on stderr."""
    import json

    from reasoner.progress import printable

    if as_json:
        print(json.dumps(solution.to_dict(), indent=2))
        return
    for event in solution.events:
        print(printable(f"note: {event}"), file=sys.stderr)
    mark = "verified" if solution.verified else solution.status
    print(f"[{mark}] run {solution.run_id} ({solution.elapsed_s:.1f}s)", file=sys.stderr)
    if solution.answer is None:
        print(printable(f"no answer: {solution.error}  status: {solution.status}"))
    else:
        print(printable(str(solution)))


class _TraceNotSaved(Exception):
    def __init__(self, solution, reason: str):
        super().__init__(reason)
        self.solution, self.reason = solution, reason


def _checkpoint_errors(reasoner, run_id: str, call):
    """Run `call`; an unusable checkpoint file is a user error, and a trace store that cannot be written
    after the run finished still gives the solution (read back from the run's checkpoint)."""
    import sqlite3
    import time

    from reasoner.errors import ReasonerError
    from reasoner.traces.store import TraceStoreError

    started = time.perf_counter()
    try:
        return call()
    except TraceStoreError as err:
        solution = _finished_solution(reasoner, run_id, time.perf_counter() - started)
        if solution is None:
            raise
        raise _TraceNotSaved(solution, str(err)) from None
    except sqlite3.Error as err:
        raise ReasonerError(f"checkpoint file {reasoner.checkpoint_path}: {err}") from None
    except OSError as err:
        if not str(err.filename or "").startswith(str(reasoner.checkpoint_path.parent)):
            raise
        raise ReasonerError(f"checkpoint file {reasoner.checkpoint_path}: {err.strerror}") from None


def _finished_solution(reasoner, run_id: str, elapsed: float):
    return reasoner.finished(run_id, elapsed)


def _problem(args) -> str:
    from reasoner.errors import ReasonerError

    if args.problem is None:
        raise ReasonerError("give a problem, '-' to read it from stdin, or --resume RUN_ID")
    if args.problem != "-":
        return args.problem  # argv bytes that are not UTF-8 arrive as lone surrogates: Reasoner.solve rejects them
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ReasonerError(f"the problem on stdin is not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                            f"{err.start})") from None


def _task(args) -> dict:
    from pathlib import Path

    from reasoner.errors import ReasonerError

    if not args.code_tests:
        if args.entry_point:
            raise ReasonerError("--entry-point is for code problems: give the tests with --code-tests FILE")
        return {"reference": args.reference, **({"task": args.task} if args.task else {})}
    if args.task not in (None, "code"):
        raise ReasonerError(f"--code-tests is for code problems, not --task {args.task}")
    path = Path(args.code_tests)
    if not path.is_file():
        raise ReasonerError(f"--code-tests {path}: file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ReasonerError(f"--code-tests {path}: not UTF-8 text (offset {err.start})") from None
    except OSError as err:
        raise ReasonerError(f"--code-tests {path}: {err.strerror}") from None
    tests = [line for line in text.splitlines() if line.strip()]
    if not tests:
        raise ReasonerError(f"--code-tests {path}: no tests in the file (one assert statement per line)")
    return {"task": "code", "tests": tests, "entry_point": args.entry_point, "reference": args.reference}


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
