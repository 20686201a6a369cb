"""The `reasoner` command. Each subcommand lives in its own module with `add_parser(subparsers)`."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from reasoner.errors import ReasonerError

SUBCOMMANDS = ("demo", "train", "distill", "eval", "solve", "serve", "traces", "info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reasoner",
        description="Train DeepSeek-style MoE reasoning models and solve problems with them.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"reasoner.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Nothing is downloaded at run time: checkpoints are local paths, hub downloads included.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # our rollout engine enters through rollout_func
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ReasonerError as err:
        print(f"reasoner {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"reasoner {args.command}: interrupted", file=sys.stderr)
        return 130
