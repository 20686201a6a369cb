"""The trace store on a real SQLite file: concurrent writer processes, writers killed with SIGKILL
mid-write, and corrupt or foreign files."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reasoner.errors import ReasonerError
from reasoner.traces import TraceStore, TraceStoreError, rollout_trace, validate_trace_dict

# A writer process. argv: store, role, count, batch, go-file. It waits for the go-file so that all
# writers start together, then writes `count` traces: `batch` per transaction (1 means store.add).
WRITER = r"""
import os, sys, time
from reasoner.traces import TraceRecorder, TraceStore, model_call_span, rollout_trace, verification_span
store_path, role, count, batch, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
store = TraceStore.open(store_path)
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.01)

def pipeline_trace(i):
    rec = TraceRecorder("pipeline", task="math", prompt=f"{role} problem {i}", metadata={"writer": role, "i": i})
    with rec.span("solve"):
        rec.add(model_call_span(f"problem {i}", f"<think>thinking {i}</think>answer {i}", latency_s=0.01))
    rec.add(verification_span(i % 2 == 0, "checked"))
    return rec.finish(correct=i % 2 == 0)

def train_trace(i):
    return rollout_trace(prompt=f"q{i}", completion=f"<think>t{i}</think>a{i}", rewards={"acc": i % 2},
                         advantage=0.1, step=i // batch, correct=bool(i % 2), task="arith",
                         metadata={"writer": role, "i": i})

make = train_trace if role.startswith("train") else pipeline_trace
for start in range(0, count, batch):
    traces = [make(i) for i in range(start, min(start + batch, count))]
    if batch == 1:
        store.add(traces[0])
    else:
        store.add_many(traces)
print("done", flush=True)
"""

# Killed while a transaction is open: commits `first` traces, then streams a big batch through
# add_many and, halfway, says so and sleeps inside the open transaction until it is killed.
KILLED_MID_TRANSACTION = r"""
import sys, time
from reasoner.traces import TraceStore, rollout_trace
store_path, first, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = TraceStore.open(store_path)
make = lambda i, tag: rollout_trace(prompt=f"{tag} {i}", completion="<think>" + "x" * 12000 + "</think>ok",
                                    rewards={"acc": 1.0}, step=0, task=tag)
store.add_many(make(i, "committed") for i in range(first))
print("committed", flush=True)

def stream():
    for i in range(big):
        if i == big // 2:
            print("midway", flush=True)
            time.sleep(120)
        yield make(i, "doomed")

store.add_many(stream())
"""

# Killed at a random moment while writing batch after batch as fast as it can.
KILLED_ANYWHERE = r"""
import sys
from reasoner.traces import TraceStore, rollout_trace
store_path, batch = sys.argv[1], int(sys.argv[2])
store = TraceStore.open(store_path)
step = 0
while True:
    store.add_many(rollout_trace(prompt=f"p{step}-{i}", completion="<think>" + "y" * 2000 + "</think>z",
                                 rewards={"acc": 0.5}, step=step, task="loop") for i in range(batch))
    step += 1
    print(step, flush=True)
"""


def _spawn(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_line(proc: subprocess.Popen, expected: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip() == expected:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"writer exited early: {proc.stderr.read()[-2000:]}")
    raise AssertionError(f"writer never printed {expected!r}")


def test_concurrent_writers_lose_nothing(tmp_path):
    """A training writer (batches) and two pipeline writers (one trace per commit) at once, while
    this process keeps reading."""
    store_path, go = tmp_path / "traces.db", tmp_path / "go"
    plan = {"train": (300, 50), "pipeline-a": (80, 1), "pipeline-b": (80, 1)}
    writers = {role: _spawn(WRITER, store_path, role, count, batch, go) for role, (count, batch) in plan.items()}
    for proc in writers.values():
        _wait_for_line(proc, "ready")
    go.touch()
    reads = 0
    with TraceStore.open(store_path) as store:
        while any(proc.poll() is None for proc in writers.values()):
            store.summaries(limit=20)
            reads += 1
        for role, proc in writers.items():
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"{role}: {err[-2000:]}"
        assert store.count() == sum(count for count, _ in plan.values())
        for role, (count, _) in plan.items():
            assert store.count(metadata={"writer": role}) == count
        assert store.count(source="train") == 300 and store.count(source="pipeline") == 160
        assert store.check() == []
    assert reads > 0
    with sqlite3.connect(store_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_writer_killed_inside_a_transaction_leaves_nothing_behind(tmp_path):
    store_path = tmp_path / "traces.db"
    proc = _spawn(KILLED_MID_TRANSACTION, store_path, 20, 600)
    _wait_for_line(proc, "committed")
    _wait_for_line(proc, "midway")
    # 300 traces of ~12 kB overflow SQLite's page cache, so the open transaction is on disk already:
    wal = Path(f"{store_path}-wal")
    assert wal.exists() and wal.stat().st_size > 1_000_000, "the half-written batch never reached the file"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with TraceStore.open(store_path) as store:
        assert store.check() == []
        assert store.count() == 20
        assert store.count(task="doomed") == 0
        for trace in store.query():
            validate_trace_dict(trace.to_dict())
        store.add(rollout_trace(prompt="after", completion="fine", rewards={}, step=1, task="after"))
        assert store.count() == 21  # no lock left behind by the dead writer


def test_writer_killed_at_random_moments_commits_whole_batches(tmp_path):
    store_path, batch = tmp_path / "traces.db", 40
    for delay in (0.4, 0.9):
        proc = _spawn(KILLED_ANYWHERE, store_path, batch)
        _wait_for_line(proc, "1")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        with TraceStore.open(store_path) as store:
            assert store.check() == []
            total = store.count()
            assert total >= batch and total % batch == 0, f"{total} traces: a batch was half-written"
            for summary in store.summaries():
                assert summary.task == "loop" and summary.reward == 0.5
            assert all(t.spans and t.model_calls() for t in store.iter_traces(limit=100))


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reasoner", "traces", *map(str, args)],
                          capture_output=True, text=True, timeout=60, env=env)


def _assert_clear_error(done: subprocess.CompletedProcess, *phrases: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("reasoner traces: error:")
    assert len(done.stderr.strip().splitlines()) == 1
    for phrase in phrases:
        assert phrase in done.stderr


def test_random_bytes_are_not_a_store(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(8192))
    before = junk.read_bytes()
    with pytest.raises(TraceStoreError, match="not a reasoner trace store"):
        TraceStore.open(junk)
    for args in (["list"], ["show", "abc"], ["export", "--format", "jsonl", "-o", tmp_path / "x.jsonl"]):
        _assert_clear_error(_cli("--store", junk, *args), str(junk), "not a reasoner trace store")
    assert junk.read_bytes() == before, "a foreign file must never be modified"


def test_foreign_sqlite_database_is_refused_and_left_alone(tmp_path):
    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as raw:
        raw.execute("CREATE TABLE users (name TEXT)")
        raw.execute("INSERT INTO users VALUES ('ada')")
    raw.close()
    before = foreign.read_bytes()
    with pytest.raises(TraceStoreError, match="SQLite database but not a reasoner trace store"):
        TraceStore.open(foreign)
    _assert_clear_error(_cli("list", "--store", foreign), "not a reasoner trace store")
    assert foreign.read_bytes() == before
    assert not Path(f"{foreign}-wal").exists()


def test_damaged_store_gives_a_clear_error(tmp_path):
    store_path = tmp_path / "traces.db"
    with TraceStore.open(store_path) as store:
        store.add_many(rollout_trace(prompt=f"p{i}", completion="<think>" + "w" * 3000 + "</think>a",
                                     rewards={"acc": 1.0}, step=i, task="t") for i in range(200))
    # The store closed cleanly, so everything is checkpointed into the main file; wreck its middle.
    data = bytearray(store_path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16384] = os.urandom(16384)
    store_path.write_bytes(bytes(data))
    with pytest.raises(ReasonerError, match="corrupt"):
        with TraceStore.open(store_path) as store:
            list(store.iter_traces())
            assert store.check() == [], "integrity check should fail"
            raise AssertionError("reading a wrecked store succeeded")
    _assert_clear_error(_cli("--store", store_path, "export", "--format", "jsonl", "-o", "-"), "corrupt")


def test_missing_store_and_unknown_id_are_clear_errors(tmp_path):
    _assert_clear_error(_cli("--store", tmp_path / "nowhere.db", "list"), "no trace store at")
    assert not (tmp_path / "nowhere.db").exists(), "reading must not create a store"
    store_path = tmp_path / "traces.db"
    TraceStore.open(store_path).close()
    _assert_clear_error(_cli("--store", store_path, "show", "deadbeef"), "no trace 'deadbeef'")
    _assert_clear_error(_cli("--store", store_path, "show", "../etc"), "is not a trace id")
    _assert_clear_error(_cli("--store", store_path, "list", "--since", "yesterday-ish"), "cannot read")
