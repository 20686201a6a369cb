"""`reasoner serve` under load: concurrent clients against serial ones, and memory over a long run.

    python benchmarks/serve.py                       # runs/demo/sft/final; ends with `concurrency_speedup=X errors=N`
    python benchmarks/serve.py --model DIR           # any checkpoint directory
    python benchmarks/serve.py --tiny                # an untrained tiny checkpoint (plumbing only, no `make demo`)
    python benchmarks/serve.py --soak                # 2,000 requests; the server's RSS after 100 and after all

Starts `reasoner serve` as a subprocess and talks to it over HTTP on 127.0.0.1 through the `openai` client.
The same 64 countdown questions (greedy, so each has one right reply) go once from 16 concurrent clients and
once one after another; the speedup is serial wall time over concurrent wall time, and every concurrent reply
must equal its serial one (batching does not change greedy text). The server runs with one torch thread, so
the figure measures batching, not a second core. On a shared machine run it under `nice` and expect noise.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import psutil

from reasoner.model import load_model, save_checkpoint
from reasoner.tasks.countdown import CountdownTask

DEMO_CHECKPOINT = "runs/demo/sft/final"
HOW_TO_GET_ONE = f"""no checkpoint at {DEMO_CHECKPOINT}. Train one with `make demo` (about 20 minutes on 2 CPU
cores; it writes {DEMO_CHECKPOINT}), pass --model DIR for another checkpoint, or --tiny for an untrained tiny
checkpoint made in a second (it measures the plumbing, not a trained model's replies)."""


def main() -> int:
    args = parse_args()
    model = args.model or _checkpoint(args.tiny)
    if model is None:
        print(HOW_TO_GET_ONE, file=sys.stderr)
        return 2
    questions = [p.for_solver().text for p in CountdownTask().problems("validation", args.requests, level=1)]
    with served(model, args) as (server, client):
        print(f"server pid {server.pid}, model {model}, {len(questions)} questions, max_tokens {args.max_tokens}")
        ask(client, questions[:4], args, 4)  # warm-up: the engine's cache and first allocations
        if args.soak:
            return soak(server, client, questions, args)
        return compare(client, questions, args)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"checkpoint directory (default: {DEMO_CHECKPOINT})")
    parser.add_argument("--tiny", action="store_true", help="use an untrained tiny checkpoint")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--soak", action="store_true", help="send --soak-requests and report the server's RSS")
    parser.add_argument("--soak-requests", type=int, default=2000)
    return parser.parse_args()


def _checkpoint(tiny: bool) -> str | None:
    if not tiny:
        return DEMO_CHECKPOINT if Path(DEMO_CHECKPOINT, "config.json").exists() else None
    model, tokenizer = load_model("tiny")
    return str(save_checkpoint(model, tokenizer, Path(tempfile.mkdtemp()) / "tiny"))


class served:
    """`reasoner serve` in a subprocess, and an openai client for it."""

    def __init__(self, model: str, args):
        self.command = [sys.executable, "-m", "reasoner", "serve", "--model", model, "--port", "0", "--name", "bench",
                        "--max-concurrent", str(max(64, args.clients * 2))]

    def __enter__(self):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "REASONER_HOME": tempfile.mkdtemp()}
        self.server = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True, env=env)
        line = self.server.stdout.readline()  # "serving bench at http://127.0.0.1:PORT/v1 (Ctrl-C to stop)"
        if not line.startswith("serving "):
            raise SystemExit(f"the server did not start: {line!r}")
        client = openai.OpenAI(base_url=line.split()[3], api_key="unused", max_retries=0, timeout=600)
        return self.server, client

    def __exit__(self, *exc):
        self.server.terminate()
        self.server.wait(timeout=60)


def ask(client, questions: list[str], args, clients: int) -> tuple[list[str | None], float]:
    """The replies (None for an error) and the wall time, `clients` requests in flight at a time."""
    def one(question: str) -> str | None:
        try:
            reply = client.chat.completions.create(model="bench", messages=[{"role": "user", "content": question}],
                                                   max_tokens=args.max_tokens, temperature=0)
            message = reply.choices[0].message
            return (getattr(message, "reasoning_content", None) or "") + "|" + (message.content or "")
        except openai.OpenAIError as err:
            print(f"error: {err}", file=sys.stderr)
            return None

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        replies = list(pool.map(one, questions))
    return replies, time.perf_counter() - started


def compare(client, questions: list[str], args) -> int:
    serial, serial_s = ask(client, questions, args, 1)
    concurrent, concurrent_s = ask(client, questions, args, args.clients)
    errors = sum(r is None for r in serial + concurrent)
    differ = sum(a != b for a, b in zip(serial, concurrent) if a is not None and b is not None)
    print(f"serial: {len(questions)} requests in {serial_s:.2f}s ({len(questions) / serial_s:.1f} req/s)")
    print(f"{args.clients} clients: {len(questions)} requests in {concurrent_s:.2f}s "
          f"({len(questions) / concurrent_s:.1f} req/s)")
    print(f"greedy replies that differ between serial and concurrent: {differ}")
    print(f"concurrency_speedup={serial_s / concurrent_s:.2f} errors={errors}")
    return 0 if errors == 0 and differ == 0 else 1


def soak(server, client, questions: list[str], args) -> int:
    process = psutil.Process(server.pid)
    rounds = [questions[i % len(questions)] for i in range(args.soak_requests)]
    first, _ = ask(client, rounds[:100], args, args.clients)
    rss_100 = process.memory_info().rss
    rest, seconds = ask(client, rounds[100:], args, args.clients)
    rss_end = process.memory_info().rss
    errors = sum(r is None for r in first + rest)
    growth = 100 * (rss_end - rss_100) / rss_100
    print(f"{len(rest)} more requests in {seconds:.1f}s ({len(rest) / seconds:.1f} req/s)")
    print(f"rss_after_100={rss_100 / 2**20:.1f}MiB rss_after_{args.soak_requests}={rss_end / 2**20:.1f}MiB "
          f"growth={growth:+.1f}% errors={errors}")
    return 0 if errors == 0 and abs(growth) <= 10 else 1


if __name__ == "__main__":
    sys.exit(main())
