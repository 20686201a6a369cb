"""`reasoner serve`: expose a checkpoint as an OpenAI-compatible chat-completions server."""
from __future__ import annotations

import argparse


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "serve", help="serve a checkpoint at /v1/chat/completions (OpenAI-compatible)",
        description="Serve a local checkpoint over HTTP with the OpenAI chat-completions API "
                    "(POST /v1/chat/completions, GET /v1/models). Completions keep their <think> and "
                    "<answer> tags, so `reasoner solve --base-url` and any OpenAI client can use it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory (save_pretrained layout)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 exposes it to the network")
    parser.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one")
    parser.add_argument("--name", default=None, help="model name reported to clients (default: the directory name)")
    parser.add_argument("--max-tokens", type=int, default=512, help="default max_tokens when a request sets none")
    parser.add_argument("--request-timeout", type=float, default=600.0, help="seconds one generation may take")
    parser.set_defaults(func=run)


def run(args) -> int:
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    from reasoner.errors import ReasonerError
    from reasoner.serving.backends import LocalBackend
    from reasoner.serving.server import ChatServer

    from reasoner.model import is_checkpoint

    if not is_checkpoint(args.model):
        raise ReasonerError(f"--model {args.model}: not a checkpoint directory (no config.json)")
    if not 0 <= args.port <= 65535:
        raise ReasonerError(f"--port {args.port}: expected 0 to 65535")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    backend = LocalBackend.from_pretrained(args.model)
    try:
        server = ChatServer(backend, args.host, args.port, model_name=args.name, max_tokens=args.max_tokens,
                            request_timeout=args.request_timeout)
    except OSError as err:
        raise ReasonerError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from None
    print(f"serving {server.model_name} at {server.base_url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0
