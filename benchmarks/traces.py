"""Listing and filtering a trace store of 100,000 traces (issues 6 and 16), and the trace UI over HTTP.

    .venv/bin/python benchmarks/traces.py            # 100,000 traces in a temporary store
    .venv/bin/python benchmarks/traces.py --n 2000 --json

Builds a realistic store (70 % GRPO rollouts with ~1.5 kB of think text, 30 % pipeline runs with
nested spans, spread over 30 days), then times each query as the best of several runs, then starts
`reasoner traces ui` (uvicorn) on it and times its list and detail endpoints over HTTP (the median of
several requests; the list figure is the slowest of the default page, wrong answers, one run and a
deep page). It ends with `ui_list_ms=X ui_detail_ms=Y`.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from reasoner.traces import TraceRecorder, TraceStore, model_call_span, rollout_trace, verification_span

TASKS = ("gsm8k", "math500", "arith", "humaneval")
WORDS = "so the sum is then carry the one check again wait let me verify that step".split()


def _think(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def make_trace(i: int, rng: random.Random, now: datetime):
    created = now - timedelta(seconds=rng.uniform(0, 30 * 86400))
    task, correct = rng.choice(TASKS), rng.random() < 0.6
    if rng.random() < 0.7:
        accuracy = 1.0 if correct else 0.0
        trace = rollout_trace(prompt=f"Problem {i}: what is {i} + {i * 7}?",
                              completion=f"<think>{_think(rng, 300)}</think>The answer is {i * 8}",
                              rewards={"accuracy": accuracy, "format": rng.choice((0.0, 0.5, 1.0))},
                              advantage=rng.gauss(0, 1), step=i // 64, correct=correct, task=task,
                              model="tiny-moe", completion_tokens=rng.randint(200, 1200),
                              metadata={"run": f"run-{i % 3}"})
    else:
        rec = TraceRecorder("pipeline", task=task, model="tiny-moe", prompt=f"Pipeline problem {i}")
        with rec.span("plan"):
            rec.add(model_call_span("plan", f"<think>{_think(rng, 60)}</think>plan", completion_tokens=80))
        with rec.span("solve"):
            for step in range(3):
                rec.add(model_call_span(f"step {step}", f"<think>{_think(rng, 40)}</think>x", completion_tokens=50))
        rec.add(verification_span(correct, "checked"))
        trace = rec.finish(correct=correct, reward=float(correct))
    trace.created = created
    return trace


def build_store(path: Path, count: int, seed: int = 0) -> float:
    rng, now = random.Random(seed), datetime.now(timezone.utc)
    start = time.perf_counter()
    with TraceStore.open(path) as store:
        for first in range(0, count, 500):
            store.add_many(make_trace(i, rng, now) for i in range(first, min(first + 500, count)))
    return time.perf_counter() - start


def best_of(runs: int, action) -> tuple[float, int]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - start)
    return min(times), result


def run_queries(path: Path, runs: int) -> list[tuple[str, float, int]]:
    week_ago = datetime.now(timezone.utc) - timedelta(days=7)
    queries = {
        "count all": lambda s: s.count(),
        "list newest 100 (table default)": lambda s: len(s.summaries(limit=100)),
        "list all summaries": lambda s: len(s.summaries()),
        "filter source=train, incorrect": lambda s: len(s.summaries(source="train", correct=False)),
        "filter task + reward 0.2..0.8": lambda s: len(s.summaries(task="gsm8k", min_reward=0.2, max_reward=0.8)),
        "filter last 7 days": lambda s: len(s.summaries(since=week_ago)),
        "filter metadata run=run-1": lambda s: len(s.summaries(metadata={"run": "run-1"})),
        "sort by reward, top 50": lambda s: len(s.summaries(sort="reward", limit=50)),
        "full-text search 'Problem 4242'": lambda s: len(s.summaries(text="Problem 4242:")),
        "load 100 full traces (typed)": lambda s: len(s.query(source="pipeline", limit=100)),
    }
    results = []
    with TraceStore.open(path, create=False) as store:
        for name, query in queries.items():
            seconds, rows = best_of(runs, lambda: query(store))
            results.append((name, seconds, rows))
    return results


def time_cli(path: Path) -> tuple[float, int]:
    """End to end, as a user runs it: interpreter start, argument parsing, query, JSON output."""
    command = [sys.executable, "-m", "reasoner", "traces", "--store", str(path), "list", "--json",
               "--source", "train", "--incorrect", "--min-reward", "0.5"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, len(json.loads(done.stdout))


def time_ui(path: Path, repeats: int = 15) -> dict:
    """Median ms per HTTP request to the UI's list and detail endpoints, served by uvicorn in a thread."""
    import socket
    import statistics
    import threading
    import urllib.request

    import uvicorn

    from reasoner.traces.ui import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(path), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"

    def median_ms(url: str) -> tuple[float, dict]:
        times, body = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            with urllib.request.urlopen(base + url) as response:
                body = json.loads(response.read())
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times), body

    try:
        lists = {}
        for name, url in (("newest page", "/api/traces"), ("wrong answers", "/api/traces?correct=wrong"),
                          ("run=run-1", "/api/traces?run=run-1"), ("train, wrong, reward<=0.5",
                          "/api/traces?source=train&correct=wrong&max_reward=0.5"),
                          ("page 200", "/api/traces?page=200")):
            lists[name], body = median_ms(url)
        rollout = median_ms("/api/traces?source=train")[1]["items"][0]["id"]
        pipeline = median_ms("/api/traces?source=pipeline")[1]["items"][0]["id"]
        details = {"rollout": median_ms(f"/api/traces/{rollout}")[0],
                   "pipeline run": median_ms(f"/api/traces/{pipeline}")[0]}
        others = {"facets (filter menus, once a page load)": median_ms("/api/facets")[0],
                  "same problem elsewhere (detail view)": median_ms(f"/api/traces/{rollout}/same-problem")[0]}
        search_ms = median_ms("/api/traces?q=Problem%204242:")[0] if repeats else 0.0
    finally:
        server.should_exit = True
        thread.join(10)
    return {"list": lists, "detail": details, "others": others, "search_ms": search_ms,
            "ui_list_ms": max(lists.values()), "ui_detail_ms": max(details.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="traces in the store (default 100,000)")
    parser.add_argument("--runs", type=int, default=5, help="repetitions per query; the best counts")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--store", metavar="PATH", help="build the store here and keep it; reuse it when it already "
                        "holds --n traces (the insert time is then not measured)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(args.store) if args.store else Path(folder) / "traces.db"
        insert_s = float("nan")
        if path.exists():
            with TraceStore.open(path, create=False) as existing:
                reuse = existing.count() == args.n
            if not reuse:
                raise SystemExit(f"{path} exists but does not hold {args.n} traces; delete it or choose another --store")
        else:
            insert_s = build_store(path, args.n)
        size_mb = path.stat().st_size / 1e6
        results = run_queries(path, args.runs)
        cli_s, cli_rows = time_cli(path)
        ui = time_ui(path)
    report = {"traces": args.n, "insert_s": insert_s, "store_mb": size_mb,
              "queries": [{"query": q, "ms": s * 1e3, "rows": r} for q, s, r in results],
              "cli_list_json_s": cli_s, "cli_rows": cli_rows, "ui": ui,
              "ui_list_ms": ui["ui_list_ms"], "ui_detail_ms": ui["ui_detail_ms"]}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"trace store benchmark: {args.n:,} traces, {size_mb:.1f} MB, "
          f"inserted in {insert_s:.2f} s ({args.n / insert_s:,.0f} traces/s, batches of 500)")
    print(f"{'query':<36}{'best ms':>10}{'rows':>8}")
    for name, seconds, rows in results:
        print(f"{name:<36}{seconds * 1e3:>10.2f}{rows:>8}")
    print(f"{'CLI: traces list --json (filtered)':<36}{cli_s * 1e3:>10.0f}{cli_rows:>8}   (incl. Python start-up)")
    print("trace UI over HTTP (median ms per request, 50 rows a page with the total count):")
    for name, ms in ui["list"].items():
        print(f"  GET list, {name:<36}{ms:>8.1f}")
    for name, ms in ui["detail"].items():
        print(f"  GET detail, {name:<34}{ms:>8.1f}")
    for name, ms in ui["others"].items():
        print(f"  GET {name:<42}{ms:>8.1f}")
    print(f"  GET {'list, text search (scans every body)':<42}{ui['search_ms']:>8.1f}")
    print(f"ui_list_ms={ui['ui_list_ms']:.1f} ui_detail_ms={ui['ui_detail_ms']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
