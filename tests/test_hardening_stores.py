"""Read-only trace stores can be read; an unwritable store never hides `reasoner solve`'s answer."""
from __future__ import annotations

import hashlib
import os
import stat

import pytest

from reasoner.api import Reasoner
from reasoner.cli import main
from reasoner.serving.backends import ScriptedBackend
from reasoner.traces import TraceRecorder, TraceStore, TraceStoreError, model_call_span


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def read_only_store(tmp_path):
    path = tmp_path / "traces.db"
    with TraceStore.open(path) as store:
        for i in range(3):
            rec = TraceRecorder("pipeline", task="math", model="m", prompt=f"{i}+1")
            rec.add(model_call_span(f"{i}+1", f"<answer>{i + 1}</answer>"))
            store.add(rec.finish(correct=True, reward=1.0))
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)  # 0444
    yield path
    path.chmod(0o644)


def test_read_only_open_never_writes(read_only_store):
    before = _digest(read_only_store)
    with TraceStore.open(read_only_store, read_only=True) as store:
        assert store.count() == 3 and len(store.query()) == 3
        with pytest.raises(TraceStoreError, match="read-only"):
            store.add(TraceRecorder("pipeline", task="math").finish())
    assert _digest(read_only_store) == before


@pytest.mark.parametrize("action", [["list"], ["list", "--json"], ["show", "{id}"], ["export", "--format", "jsonl",
                                                                                     "-o", "-"]])
def test_traces_commands_read_a_0444_store(read_only_store, action, capsys):
    with TraceStore.open(read_only_store, read_only=True) as store:
        trace_id = store.query(limit=1)[0].id
    before = _digest(read_only_store)
    args = [a.replace("{id}", trace_id) for a in action]
    assert main(["traces", "--store", str(read_only_store), *args]) == 0
    assert capsys.readouterr().out.strip()
    assert _digest(read_only_store) == before


def test_read_only_open_of_a_missing_or_empty_store_is_a_clear_error(tmp_path):
    with pytest.raises(TraceStoreError, match="no trace store"):
        TraceStore.open(tmp_path / "none.db", read_only=True)
    (tmp_path / "empty.db").write_bytes(b"")
    with pytest.raises(TraceStoreError, match="empty"):
        TraceStore.open(tmp_path / "empty.db", read_only=True)
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    with pytest.raises(TraceStoreError, match="not a reasoner trace store"):
        TraceStore.open(tmp_path / "junk.db", read_only=True)


@pytest.fixture
def scripted_cli(monkeypatch, tmp_path):
    def from_openai(cls, base_url, model, api_key=None, **kwargs):
        return cls(ScriptedBackend(lambda m, n: ["<answer>4</answer>"] * n), **kwargs)
    monkeypatch.setattr(Reasoner, "from_openai", classmethod(from_openai))
    monkeypatch.setenv("REASONER_HOME", str(tmp_path))


@pytest.mark.parametrize("store", ["/dev/null/traces.db", "junk"])
def test_solve_with_an_unwritable_store_prints_the_answer_then_warns(scripted_cli, tmp_path, capsys, store):
    if store == "junk":
        store = tmp_path / "junk.db"
        store.write_bytes(b"this is no database" * 100)
    code = main(["solve", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--no-decompose", "--samples", "1",
                 "--traces", str(store), "--reference", "4", "2+2"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.strip() == "4  (verified)"
    assert "warning: the answer above was not saved to the trace store" in err and "Traceback" not in err


def test_a_store_in_a_read_only_folder_falls_back_to_immutable(read_only_store, monkeypatch):
    """Root ignores permissions, so the failure SQLite gives in a read-only folder (no -shm can be made) is
    simulated: the first mode=ro open fails, and the store is read as immutable."""
    import sqlite3

    real_connect, targets = sqlite3.connect, []

    def connect(target, *args, **kwargs):
        targets.append(target)
        if "immutable=1" not in str(target):
            raise sqlite3.OperationalError("unable to open database file")
        return real_connect(target, *args, **kwargs)
    monkeypatch.setattr(sqlite3, "connect", connect)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with TraceStore.open(read_only_store, read_only=True) as store:
        assert store.count() == 3
    assert len(targets) == 2 and targets[0].endswith("?mode=ro") and targets[1].endswith("&immutable=1")
