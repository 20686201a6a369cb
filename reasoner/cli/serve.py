"""`reasoner serve`: expose a checkpoint (and, with --pipeline, the verified pipeline) over the OpenAI API."""
from __future__ import annotations

import argparse
import os

API_KEY_ENV = "REASONER_API_KEY"
POSITIVE = ("max-tokens", "request-timeout", "max-body-bytes", "max-n", "max-tokens-limit", "max-concurrent",
            "max-connections", "idle-timeout", "max-batch-rows", "segment-tokens")


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "serve", help="serve a checkpoint at /v1/chat/completions (OpenAI-compatible)",
        description="Serve a local checkpoint over HTTP with the OpenAI chat-completions API "
                    "(POST /v1/chat/completions, GET /v1/models). Requests that arrive together are decoded "
                    "together; `stream: true` streams Server-Sent Events; reasoning inside <think> comes back as "
                    "`reasoning_content` (`reasoner solve --base-url` puts it back in its tags). "
                    "See docs/serving.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory (save_pretrained layout)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 exposes it to the network")
    parser.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one")
    parser.add_argument("--name", default=None, help="model name reported to clients (default: the directory name)")
    parser.add_argument("--max-tokens", type=int, default=512, help="default max_tokens when a request sets none")
    parser.add_argument("--request-timeout", type=float, default=600.0, help="seconds one generation may take")
    parser.add_argument("--api-key", default=None,
                        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set, else no key)")
    parser.add_argument("--pipeline", action="store_true",
                        help="also serve model 'reasoner-pipeline': Reasoner.solve on the last user message")
    parser.add_argument("--traces", default=None,
                        help="the pipeline model's trace store (default: $REASONER_HOME/traces.db or runs/traces.db)")
    _add_limits(parser.add_argument_group("limits (past them: 413 for a request too big, 429 when busy)"))
    _add_batching(parser.add_argument_group("batching"))
    parser.set_defaults(func=run)


def _add_limits(group) -> None:
    group.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body")
    group.add_argument("--max-n", type=int, default=16, help="most completions one request may ask for")
    group.add_argument("--max-tokens-limit", type=int, default=4096, help="most max_tokens one request may ask for")
    group.add_argument("--max-concurrent", type=int, default=64, help="requests in progress at once")
    group.add_argument("--max-connections", type=int, default=256, help="open connections at once")
    group.add_argument("--idle-timeout", type=float, default=5.0,
                       help="seconds a connection may stay open without sending a request")


def _add_batching(group) -> None:
    group.add_argument("--batch-window", type=float, default=0.01,
                       help="seconds to wait for more requests before decoding starts")
    group.add_argument("--max-batch-rows", type=int, default=64, help="most completions decoded together")
    group.add_argument("--segment-tokens", type=int, default=16,
                       help="tokens per model call; between calls requests join and leave, streams get text")


def run(args) -> int:
    import logging

    from transformers.utils import logging as hf_logging

    from reasoner.api import checkpoint_prompt_style
    from reasoner.errors import ReasonerError
    from reasoner.model import is_checkpoint
    from reasoner.serving.backends import LocalBackend
    from reasoner.serving.server import ChatServer

    hf_logging.disable_progress_bar()
    if not is_checkpoint(args.model):
        raise ReasonerError(f"--model {args.model}: not a checkpoint directory (no config.json)")
    if not 0 <= args.port <= 65535:
        raise ReasonerError(f"--port {args.port}: expected 0 to 65535")
    for flag in POSITIVE:
        if getattr(args, flag.replace("-", "_")) <= 0:
            raise ReasonerError(f"--{flag} {getattr(args, flag.replace('-', '_'))}: expected a number above 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    backend = LocalBackend.from_pretrained(args.model)
    try:
        server = ChatServer(backend, args.host, args.port, model_name=args.name, max_tokens=args.max_tokens,
                            request_timeout=args.request_timeout,
                            **_options(args, checkpoint_prompt_style(args.model)))
    except OSError as err:
        raise ReasonerError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from None
    also = ", and reasoner-pipeline" if args.pipeline else ""
    print(f"serving {server.model_name} at {server.base_url}{also} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("stopped")
    return 0


def _options(args, prompt_style: str) -> dict:
    limits = {"max_body_bytes": args.max_body_bytes, "max_n": args.max_n, "max_tokens": args.max_tokens_limit,
              "max_concurrent": args.max_concurrent, "max_connections": args.max_connections,
              "idle_timeout": args.idle_timeout}
    return {"api_key": args.api_key or os.environ.get(API_KEY_ENV) or None, "pipeline": args.pipeline,
            "traces": args.traces, "prompt_style": prompt_style, "batch_window": args.batch_window, "max_batch_rows": args.max_batch_rows,
            "segment_tokens": args.segment_tokens, "limits": limits}
