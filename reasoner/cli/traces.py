"""`reasoner traces`: list, show, diff, export, import and browse (ui) reasoning traces.

Heavy imports (sqlite store, rich, jsonschema) happen inside the handlers so `reasoner --help` stays fast.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from reasoner.errors import ReasonerError
from reasoner.files import atomic_open

SORT_CHOICES = ("created", "reward", "task", "source", "model", "tokens", "length")
EXPORT_FORMATS = ("html", "jsonl", "otlp")
DEFAULT_TABLE_ROWS = 100
DEFAULT_HTML_LIMIT = 1000  # a page of more traces takes seconds to open; `traces ui` browses any number
STORE_HELP = "trace store file or run directory (default: $REASONER_HOME/traces.db, else ./runs/traces.db)"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "traces", help="inspect reasoning traces from training and pipeline runs",
        description="Inspect reasoning traces: what the model thought, answered and was rewarded for.")
    parser.add_argument("--store", default=None, metavar="PATH", help=STORE_HELP)
    actions = parser.add_subparsers(dest="traces_command", required=True, metavar="ACTION")
    # --store is accepted after the action too; SUPPRESS keeps it from overwriting the one given before.
    store_option = argparse.ArgumentParser(add_help=False)
    store_option.add_argument("--store", default=argparse.SUPPRESS, metavar="PATH", help=STORE_HELP)
    filters = argparse.ArgumentParser(add_help=False)
    _add_filter_arguments(filters)

    listing = actions.add_parser("list", parents=[store_option, filters], help="list traces (newest first)")
    listing.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    listing.set_defaults(func=run_list)

    show = actions.add_parser("show", parents=[store_option], help="show one trace as a tree")
    show.add_argument("id", help="trace id or a unique prefix of it")
    show.add_argument("--think", action="store_true", help="unfold the <think> text")
    show.add_argument("--json", action="store_true", help="print the trace as JSON")
    show.set_defaults(func=run_show)

    diff = actions.add_parser("diff", parents=[store_option], help="show two traces side by side")
    diff.add_argument("a", help="first trace id (or prefix)")
    diff.add_argument("b", help="second trace id (or prefix)")
    diff.add_argument("--think", action="store_true", help="unfold the <think> text")
    diff.set_defaults(func=run_diff)

    export = actions.add_parser("export", parents=[store_option, filters],
                                help="export traces as a self-contained HTML viewer, JSON lines or OTLP")
    export.add_argument("ids", nargs="*", metavar="ID", help="export only these trace ids")
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS,
                        help="html: one offline page; jsonl: our schema; otlp: OpenTelemetry JSON lines")
    export.add_argument("--output", "-o", required=True, metavar="FILE", help="output file ('-' for stdout)")
    export.set_defaults(func=run_export)

    importing = actions.add_parser("import", parents=[store_option], help="import JSON-lines trace files")
    importing.add_argument("files", nargs="+", metavar="FILE")
    importing.set_defaults(func=run_import)

    ui = actions.add_parser("ui", parents=[store_option],
                            help="browse traces in a local web app (list, detail, GRPO groups, compare)",
                            description="Serve a local web app over the trace store: a filtered, paginated list; "
                            "each trace as a tree with its think text and a timing waterfall; a GRPO prompt's "
                            "rollouts side by side with their rewards and advantages; two traces compared.")
    ui.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    ui.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1: this machine only; traces hold your data)")
    ui.set_defaults(func=run_ui)


def _add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters")
    # traces.model.SOURCES, written out: importing it loads the store (sqlite3) and `reasoner --help` stays light
    group.add_argument("--source", choices=("train", "pipeline", "eval", "distill"),
                       help="where traces came from: train (GRPO rollouts), pipeline (solve/serve runs), eval, "
                            "distill (kept teacher samples that became training data)")
    group.add_argument("--run", metavar="RUN_ID", help="one training run's rollouts (`reasoner train` prints its id)")
    group.add_argument("--task", help="task name; wildcards allowed (gsm8k*)")
    group.add_argument("--model", help="model name; wildcards allowed")
    verdict = group.add_mutually_exclusive_group()
    verdict.add_argument("--correct", dest="correct", action="store_const", const=True, help="only correct traces")
    verdict.add_argument("--incorrect", dest="correct", action="store_const", const=False,
                         help="only incorrect traces")
    group.add_argument("--min-reward", type=float, metavar="X", help="only traces with reward >= X (total reward)")
    group.add_argument("--max-reward", type=float, metavar="X", help="only traces with reward <= X")
    group.add_argument("--since", metavar="WHEN", help="date/time (2025-01-31, 2025-01-31T12:00) or age (7d, 12h, 30m)")
    group.add_argument("--until", metavar="WHEN", help="same forms as --since; a bare date includes that day")
    group.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                       help="metadata match, e.g. step=10 or run=abc (repeatable)")
    group.add_argument("--search", metavar="TEXT", help="case-insensitive text anywhere in the trace")
    group.add_argument("--sort", choices=SORT_CHOICES, default="created")
    group.add_argument("--asc", action="store_true", help="ascending order (default: descending)")
    group.add_argument("--limit", type=int, metavar="N",
                       help=f"at most N traces (0: no limit; list shows {DEFAULT_TABLE_ROWS} and html exports "
                            f"{DEFAULT_HTML_LIMIT} unless told)")


# -- argument parsing helpers --------------------------------------------------------------------

_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str, *, end_of_day: bool = False) -> datetime:
    """An ISO date/date-time (UTC unless it says otherwise) or an age like 7d before now."""
    text = text.strip()
    age = _AGE.match(text)
    if age:
        return datetime.now(timezone.utc) - timedelta(**{_AGE_UNITS[age.group(2)]: float(age.group(1))})
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReasonerError(f"cannot read {text!r} as a date: use 2025-01-31, 2025-01-31T12:00 or 7d") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    if end_of_day and len(text) == 10:  # --until 2025-01-31 means through the end of that day
        moment += timedelta(days=1)
    return moment


def parse_meta(pairs: list[str]) -> dict:
    """KEY=VALUE pairs; values read as JSON when they are (10, true), else as strings."""
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ReasonerError(f"--meta expects KEY=VALUE, got {pair!r}")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        result[key] = parsed if isinstance(parsed, (str, int, float, bool)) else value
    return result


def filter_from_args(args: argparse.Namespace, ids: list[str] | None = None):
    from reasoner.traces.store import TraceFilter

    if args.limit is not None and args.limit < 0:
        raise ReasonerError("--limit must be 0 or more")
    return TraceFilter(
        ids=ids or None, run=getattr(args, "run", None), source=args.source, task=args.task, model=args.model, correct=args.correct,
        min_reward=args.min_reward, max_reward=args.max_reward,
        since=parse_when(args.since) if args.since else None,
        until=parse_when(args.until, end_of_day=True) if args.until else None,
        metadata=parse_meta(args.meta), text=args.search, sort=args.sort, descending=not args.asc,
        limit=args.limit)


def open_store(args: argparse.Namespace, *, create: bool = False, read_only: bool = False):
    from reasoner.traces.store import TraceStore

    return TraceStore.open(args.store, create=create, read_only=read_only)


_JSON_UNSAFE = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _json(data) -> str:
    """JSON for a terminal: json escapes C0 controls itself; DEL, C1 and bidi controls get \\u escapes too."""
    text = json.dumps(data, ensure_ascii=False, indent=1)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


# -- handlers -----------------------------------------------------------------------------------



def _pipe_safe(handler):
    """A reader that goes away (`traces list --json | head`) ends the output quietly, not with a traceback."""
    import functools

    @functools.wraps(handler)
    def wrapped(args):
        try:
            code = handler(args)
            sys.stdout.flush()
            return code
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # Python flushes stdout at exit: let that go nowhere
            os.close(devnull)
            return 0
    return wrapped


@_pipe_safe
def run_list(args: argparse.Namespace) -> int:
    trace_filter = filter_from_args(args)
    with open_store(args, read_only=True) as store:
        if args.json:
            print(_json([row.to_dict() for row in store.summaries(trace_filter)]))
            return 0
        total = store.count(trace_filter)
        if trace_filter.limit is None:
            trace_filter.limit = DEFAULT_TABLE_ROWS  # a table longer than this is unreadable; --limit 0 for none
        elif trace_filter.limit == 0:
            trace_filter.limit = None
        rows = store.summaries(trace_filter)
    from reasoner.traces.render import summary_table

    _console().print(summary_table(rows, total))
    return 0


@_pipe_safe
def run_show(args: argparse.Namespace) -> int:
    with open_store(args, read_only=True) as store:
        trace = store.get(args.id)
    if args.json:
        print(_json(trace.to_dict()))
        return 0
    from reasoner.traces.render import trace_tree

    _console().print(trace_tree(trace, show_think=args.think))
    return 0


@_pipe_safe
def run_diff(args: argparse.Namespace) -> int:
    with open_store(args, read_only=True) as store:
        a, b = store.get(args.a), store.get(args.b)
    from reasoner.traces.render import diff_view

    _console().print(diff_view(a, b, show_think=args.think))
    return 0


@_pipe_safe
def run_export(args: argparse.Namespace) -> int:
    from reasoner.traces import exchange

    writer = {"html": exchange.write_html, "jsonl": exchange.write_jsonl, "otlp": exchange.write_otlp}[args.format]
    with open_store(args, read_only=True) as store:
        ids = [store.get(given).id for given in args.ids]  # prefixes, as show and diff take them
        trace_filter = filter_from_args(args, ids=ids)
        capped = None
        if trace_filter.limit == 0:
            trace_filter.limit = None
        elif trace_filter.limit is None and args.format == "html" and not ids:
            total = store.count(trace_filter)
            if total > DEFAULT_HTML_LIMIT:
                trace_filter.limit, capped = DEFAULT_HTML_LIMIT, total
        traces = store.iter_traces(trace_filter)
        if args.output == "-":
            count = writer(traces, sys.stdout)
        else:
            with atomic_open(args.output) as out:  # an interrupted export never leaves half a file
                count = writer(traces, out)
    if args.output != "-":
        print(f"exported {count} trace{'s' * (count != 1)} to {args.output} ({args.format})", file=sys.stderr)
    if capped:
        print(f"note: the HTML export stops at {DEFAULT_HTML_LIMIT} traces (newest first) of the {capped} that "
              f"matched; --limit 0 exports all of them, filters or --limit N choose others, and "
              f"`reasoner traces ui` browses any number", file=sys.stderr)
    if count == 0:
        print("warning: no trace matched; nothing was exported (check the filters, ids and --store)", file=sys.stderr)
        return 1
    return 0


def run_ui(args: argparse.Namespace) -> int:
    from reasoner.traces.ui import serve

    serve(args.store, host=args.host, port=args.port)
    return 0


def run_import(args: argparse.Namespace) -> int:
    with open_store(args, create=True) as store:
        for name in args.files:
            result = store.import_jsonl(name)
            print(f"{name}: imported {result.imported} traces, {result.skipped} already in {store.path}")
    return 0
