"""Trace schema, typed objects, builders, store queries, import/export and the `reasoner traces` CLI."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import pytest

from reasoner.cli import main as reasoner_main
from reasoner.errors import ReasonerError
from reasoner.traces import (
    SCHEMA_VERSION,
    Trace,
    TraceNotFound,
    TraceRecorder,
    TraceStore,
    TraceStoreError,
    TraceValidationError,
    default_store_path,
    import_jsonl,
    load_schema,
    model_call_span,
    node_span,
    reward_span,
    rollout_trace,
    rollout_traces,
    split_think,
    validate_trace_dict,
    verification_span,
)

REPO = Path(__file__).resolve().parents[1]


# -- schema and typed objects -------------------------------------------------------------------

def test_schema_is_valid_versioned_json_schema():
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema_version"] == {"const": SCHEMA_VERSION}
    assert set(schema["properties"]["source"]["enum"]) == {"train", "pipeline", "eval", "distill"}


@pytest.mark.parametrize("text, think, answer", [
    ("<think>add them</think>The answer is 4", "add them", "The answer is 4"),
    ("add them</think> 4", "add them", "4"),                 # template put <think> in the prompt
    ("<think>still going when cut off", "still going when cut off", ""),
    ("just 4", None, "just 4"),
    ("pre <think>a\nb</think> post", "a\nb", "pre  post"),
])
def test_split_think(text, think, answer):
    assert split_think(text) == (think, answer)


def _pipeline_trace(correct=True) -> Trace:
    rec = TraceRecorder("pipeline", task="math", model="tiny-moe", prompt="Solve x + 1 = 3",
                        metadata={"run": "r1"})
    with rec.span("plan"):
        rec.add(model_call_span("plan x+1=3", "<think>subtract one</think>subtract 1", prompt_tokens=5,
                                completion_tokens=7, latency_s=0.25, sampling={"temperature": 0.6, "top_p": 0.95}))
    with rec.span("solve"):
        with rec.span("solve step 1"):
            rec.add(model_call_span("x+1=3", "<think>3-1</think>x = 2", completion_tokens=4))
    with rec.span("vote"):
        pass
    rec.add(verification_span(correct, "x = 2" if correct else "x = 3 is wrong", verifier="sympy"))
    return rec.finish(correct=correct, reward=1.0 if correct else 0.0)


def test_recorder_nests_and_times_spans():
    trace = _pipeline_trace()
    shape = [(depth, span.kind, span.name) for depth, span in trace.walk()]
    assert shape == [(0, "node", "plan"), (1, "model_call", "generate"), (0, "node", "solve"),
                     (1, "node", "solve step 1"), (2, "model_call", "generate"), (0, "node", "vote"),
                     (0, "verification", "verify")]
    plan = trace.spans[0]
    assert plan.status == "ok" and plan.end >= plan.start
    call = plan.children[0].model_call
    assert (call.think, call.answer, call.completion_tokens) == ("subtract one", "subtract 1", 7)
    assert trace.completion_tokens == 11
    validate_trace_dict(trace.to_dict())


def test_recorder_marks_failed_span_and_keeps_parallel_branches_apart():
    rec = TraceRecorder("pipeline", task="math")
    with pytest.raises(ValueError):
        with rec.span("reflect"):
            raise ValueError("model returned nothing")
    assert rec.trace.spans[0].status == "error" and "model returned nothing" in rec.trace.spans[0].error

    def branch(name, parent):
        with rec.span(name, parent=parent):
            for i in range(50):
                rec.add(model_call_span(name, f"{name} {i}"))

    with rec.span("vote") as vote:
        threads = [threading.Thread(target=branch, args=(f"sample {k}", vote)) for k in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rec.add(verification_span("pass", "majority"))  # still nests under vote, not under a branch
    branches = {span.name: span for span in vote.children if span.kind == "node"}
    assert set(branches) == {"sample 0", "sample 1"} and vote.children[-1].kind == "verification"
    for name, span in branches.items():  # each branch holds only its own calls
        assert [c.model_call.prompt for c in span.children] == [name] * 50


def test_rollout_traces_from_trl_style_lists():
    traces = rollout_traces(prompts=["p0", "p1", "p2"], completions=["<think>a</think>1", "2", "3"],
                            rewards={"accuracy": [1.0, 0.0, float("nan")], "format": [0.5, 0.5, 0.5]},
                            advantages=[0.7, -0.3, -0.4], correct=[True, False, None], step=12,
                            task="gsm8k", model="tiny-moe", metadata={"run": "abc"})
    assert [t.reward for t in traces] == [1.5, 0.5, 0.5]  # NaN (no reward) is dropped from the sum
    first = traces[0]
    assert first.source == "train" and first.metadata == {"step": 12, "index": 0, "run": "abc"}
    step = first.spans[0]
    assert step.kind == "step" and step.attributes["step"] == 12
    kinds = [span.kind for span in step.children]
    assert kinds == ["model_call", "verification", "reward"]
    assert step.children[2].reward.advantage == 0.7
    assert [span.kind for span in traces[2].spans[0].children] == ["model_call", "reward"]  # unknown: no verdict
    assert traces[2].spans[0].children[1].reward.components["accuracy"] is None
    for trace in traces:
        validate_trace_dict(trace.to_dict())


def test_schema_rejects_bad_traces():
    good = rollout_trace(prompt="p", completion="c", rewards={}, step=0, task="t").to_dict()
    for path, value in ((("source",), "training"), (("spans", 0, "kind"), "thought"),
                        (("spans", 0, "children", 0, "model_call", "prompt_tokens"), -1),
                        (("schema_version",), 1.5)):
        bad = json.loads(json.dumps(good))
        target = bad
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(TraceValidationError, match="does not match the trace schema"):
            validate_trace_dict(bad)
    newer = dict(good, schema_version=2)
    with pytest.raises(TraceValidationError, match="schema v2"):
        validate_trace_dict(newer)


# -- the store ----------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    with TraceStore.open(tmp_path / "traces.db") as opened:
        yield opened


def _populate(store: TraceStore) -> list[Trace]:
    now = datetime.now(timezone.utc)
    traces = []
    for i in range(12):
        trace = rollout_trace(prompt=f"question {i}", completion=f"<think>idea {i}</think>answer {i}",
                              rewards={"accuracy": float(i % 2), "format": i / 20}, advantage=i / 10, step=i // 4,
                              correct=bool(i % 2), task="gsm8k" if i < 8 else "math500", model="m1",
                              completion_tokens=10 * i)
        trace.created = now - timedelta(days=i)
        traces.append(trace)
    pipeline = _pipeline_trace(correct=False)
    pipeline.created = now - timedelta(hours=1)
    traces.append(pipeline)
    assert store.add_many(traces) == len(traces)
    return traces


def test_store_round_trips_typed_traces(store):
    traces = _populate(store)
    for trace in traces:
        assert store.get(trace.id) == trace
    assert store.get(traces[3].id[:10]) == traces[3]
    assert store.path.name == "traces.db"


def test_store_filters_and_sorts(store):
    traces = _populate(store)
    now = datetime.now(timezone.utc)
    ids = lambda **f: [t.id for t in store.query(**f)]  # noqa: E731
    assert store.count() == 13
    assert ids(limit=3) == [traces[0].id, traces[12].id, traces[1].id]  # newest first
    assert store.count(source="pipeline") == 1 and store.count(source="train") == 12
    assert store.count(task="math5*") == 4 and store.count(task="gsm8k", correct=True) == 4
    assert store.count(correct=False) == 7  # 6 even rollouts + the failed pipeline run
    assert {t.reward for t in store.query(min_reward=1.0, max_reward=1.3)} == {1.05, 1.15, 1.25}
    assert store.count(since=now - timedelta(days=3, hours=12)) == 5
    assert store.count(until=now - timedelta(days=9, hours=12)) == 2
    assert store.count(metadata={"step": 2}) == 4
    assert ids(text="IDEA 7") == [traces[7].id]  # case-insensitive, anywhere in the trace
    assert ids(text="50%") == []  # LIKE wildcards are taken literally
    assert ids(sort="reward", limit=1) == [traces[11].id]
    rewards = [t.reward for t in store.query(sort="reward", descending=False)]
    assert rewards == sorted(rewards)
    assert [s.completion_tokens for s in store.summaries(sort="tokens", limit=2)] == [110, 100]
    assert ids(ids=[traces[5].id, traces[2].id], sort="created") == [traces[2].id, traces[5].id]
    with pytest.raises(TypeError, match="unknown trace filter"):
        store.query(colour="red")


def test_add_many_is_all_or_nothing(store):
    good = [rollout_trace(prompt=f"p{i}", completion="c", rewards={}, step=0, task="t") for i in range(5)]
    bad = rollout_trace(prompt="p", completion="c", rewards={}, step=0, task="t")
    bad.source = "somewhere"
    with pytest.raises(TraceValidationError):
        store.add_many(good + [bad])
    assert store.count() == 0
    store.add_many(good)
    with pytest.raises(TraceStoreError, match="UNIQUE"):
        store.add_many([rollout_trace(prompt="new", completion="c", rewards={}, step=0, task="t"), good[0]])
    assert store.count() == 5
    assert store.add_many(good, on_conflict="ignore") == 0


def test_get_reports_missing_and_ambiguous_ids(store):
    for i in range(3):
        trace = rollout_trace(prompt="p", completion="c", rewards={}, step=0, task="t")
        trace.id = f"abc{i}"
        store.add(trace)
    with pytest.raises(TraceNotFound, match="several traces"):
        store.get("abc")
    with pytest.raises(TraceNotFound, match="no trace"):
        store.get("zzz")
    assert store.get("abc1").id == "abc1"


def test_default_location(tmp_path, monkeypatch):
    monkeypatch.delenv("REASONER_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_store_path() == Path("runs/traces.db")
    monkeypatch.setenv("REASONER_HOME", str(tmp_path / "home"))
    with TraceStore.open() as store:
        assert store.path == tmp_path / "home" / "traces.db"
    run_dir = tmp_path / "run-7"
    run_dir.mkdir()
    with TraceStore.open(run_dir) as store:  # a run directory holds its own traces.db
        assert store.path == run_dir / "traces.db"


# -- import and export ----------------------------------------------------------------------------

def test_jsonl_export_imports_back(tmp_path, store, capsys):
    traces = _populate(store)
    out = tmp_path / "all.jsonl"
    assert reasoner_main(["traces", "--store", str(store.path), "export", "--format", "jsonl", "-o", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == len(traces)
    with TraceStore.open(tmp_path / "other.db") as other:
        assert other.import_jsonl(out) == (13, 0)
        assert import_jsonl(out, other) == (0, 13)  # importing again adds nothing
        assert sorted(t.id for t in other.query()) == sorted(t.id for t in traces)
        assert other.get(traces[12].id) == traces[12]


def test_import_legacy_rollout_lines_and_reject_bad_lines(tmp_path, store):
    legacy = tmp_path / "rollouts.jsonl"
    legacy.write_text("\n".join(json.dumps(record) for record in [
        {"prompt": "2+2?", "completion": "<think>sum</think>4", "rewards": {"accuracy": 1.0}, "advantage": 0.5,
         "step": 3, "correct": True, "task": "arith"},
        {"prompt": "3+3?", "completion": "7", "reward": 0.0, "step": 3, "correct": False},
    ]) + "\n\n")
    assert store.import_jsonl(legacy) == (2, 0)
    first = store.query(correct=True)[0]
    assert first.reward == 1.0 and first.model_calls()[0].think == "sum" and first.metadata["step"] == 3
    broken = tmp_path / "broken.jsonl"
    valid = rollout_trace(prompt="p", completion="c", rewards={}, step=0, task="t").to_dict()
    broken.write_text(json.dumps(valid) + "\n" + json.dumps(dict(valid, id="x2", source="nowhere")) + "\n")
    with pytest.raises(TraceValidationError, match=r"broken.jsonl:2 .*at source"):
        store.import_jsonl(broken)
    (tmp_path / "garbage.jsonl").write_text("{not json\n")
    with pytest.raises(ReasonerError, match="garbage.jsonl:1: not JSON"):
        store.import_jsonl(tmp_path / "garbage.jsonl")
    assert store.count() == 2, "a failed import must import nothing"


def test_otlp_export_is_a_span_tree_with_gen_ai_attributes(tmp_path, store):
    traces = _populate(store)
    out = tmp_path / "otlp.jsonl"
    assert reasoner_main(["traces", "--store", str(store.path), "export", "--format", "otlp", "-o", str(out),
                          "--source", "pipeline"]) == 0
    [line] = out.read_text().splitlines()
    request = json.loads(line)
    [resource_spans] = request["resourceSpans"]
    service = {a["key"]: a["value"] for a in resource_spans["resource"]["attributes"]}
    assert service["service.name"] == {"stringValue": "reasoner"}
    spans = resource_spans["scopeSpans"][0]["spans"]
    pipeline = traces[12]
    assert len(spans) == 1 + sum(1 for _ in pipeline.walk())
    assert {s["traceId"] for s in spans} == {pipeline.id}
    by_id = {s["spanId"]: s for s in spans}
    assert len(by_id) == len(spans) and all(len(i) == 16 for i in by_id)
    roots = [s for s in spans if "parentSpanId" not in s]
    assert len(roots) == 1 and all(s["parentSpanId"] in by_id for s in spans if s is not roots[0])
    for span in spans:
        assert int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"]) > 1_600_000_000 * 10**9
    calls = [s for s in spans if any(a["key"] == "gen_ai.operation.name" for a in s["attributes"])]
    assert len(calls) == 2
    attributes = {a["key"]: a["value"] for a in calls[0]["attributes"]}
    assert attributes["gen_ai.request.model"] == {"stringValue": "tiny-moe"}
    assert attributes["gen_ai.usage.output_tokens"] == {"intValue": "7"}
    assert attributes["gen_ai.request.temperature"] == {"doubleValue": 0.6}
    assert attributes["reasoner.think"] == {"stringValue": "subtract one"}
    assert json.loads(attributes["gen_ai.output.messages"]["stringValue"])[0]["parts"][0]["type"] == "reasoning"
    assert calls[0]["name"] == "chat tiny-moe" and calls[0]["kind"] == 3


# -- the CLI --------------------------------------------------------------------------------------

def _run(capsys, *args) -> tuple[int, str, str]:
    code = reasoner_main(["traces", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_list_json_filters(store, capsys):
    traces = _populate(store)
    code, out, _ = _run(capsys, "--store", store.path, "list", "--json")
    items = json.loads(out)
    assert code == 0 and len(items) == 13 and all({"id", "source"} <= set(item) for item in items)
    code, out, _ = _run(capsys, "list", "--store", store.path, "--json", "--incorrect", "--task", "gsm8k",
                        "--min-reward", "0.2", "--sort", "reward", "--asc")
    got = [item["id"] for item in json.loads(out)]
    expected = sorted((t for t in traces[:8] if t.correct is False and t.reward >= 0.2), key=lambda t: t.reward)
    assert got == [t.id for t in expected] and got
    _, out, _ = _run(capsys, "--store", store.path, "list", "--json", "--meta", "step=1", "--since", "5d")
    assert {item["metadata"]["step"] for item in json.loads(out)} == {1} and len(json.loads(out)) == 1
    _, out, _ = _run(capsys, "--store", store.path, "list", "--json", "--source", "pipeline")
    assert [item["id"] for item in json.loads(out)] == [traces[12].id]


def test_cli_list_table(store, capsys):
    traces = _populate(store)
    code, out, _ = _run(capsys, "--store", store.path, "list", "--limit", "5")
    assert code == 0
    assert traces[0].id[:8] in out and "5 of 13 traces" in out


def test_cli_show_folds_think_and_colours_verdicts(store, capsys):
    traces = _populate(store)
    pipeline = traces[12]
    pipeline.spans[0].children[0].model_call.think = "a long chain of thought " * 20
    store.add_many([pipeline], on_conflict="replace")
    code, out, _ = _run(capsys, "--store", store.path, "show", pipeline.id[:8])
    assert code == 0
    for expected in ("solve step 1", "✘ fail", "x = 3 is wrong", "think (480 chars, folded"):
        assert expected in out
    squeeze = lambda text: "".join(text.split()).replace("│", "")  # noqa: E731  (undo rich's wrapping)
    assert squeeze(out).count("alongchainofthought") <= 4  # folded: only the start of its first line
    _, unfolded, _ = _run(capsys, "--store", store.path, "show", pipeline.id, "--think")
    assert squeeze(unfolded).count("alongchainofthought") == 20
    _, as_json, _ = _run(capsys, "--store", store.path, "show", pipeline.id, "--json")
    assert Trace.from_dict(json.loads(as_json)) == pipeline


def test_cli_diff_shows_both_traces(store, capsys):
    traces = _populate(store)
    before, after = traces[2], traces[3]
    code, out, _ = _run(capsys, "--store", store.path, "diff", before.id, after.id)
    assert code == 0
    assert before.id[:12] in out and after.id[:12] in out
    assert "answer 2" in out and "answer 3" in out and "A vs B" in out


def test_cli_import_and_errors(tmp_path, store, capsys):
    traces = _populate(store)
    exported = tmp_path / "t.jsonl"
    _run(capsys, "--store", store.path, "export", "--format", "jsonl", "-o", exported, traces[0].id, traces[1].id)
    new_store = tmp_path / "new" / "traces.db"
    code, out, _ = _run(capsys, "--store", new_store, "import", exported)
    assert code == 0 and "imported 2 traces" in out
    code, _, err = _run(capsys, "--store", new_store, "show", "nope")
    assert code == 2 and "no trace 'nope'" in err
    code, _, err = _run(capsys, "--store", new_store, "import", tmp_path / "missing.jsonl")
    assert code == 2 and "cannot read" in err
    code, _, err = _run(capsys, "--store", new_store, "export", "--format", "html", "-o", tmp_path / "no/dir/x.html")
    assert code == 2 and "does not exist" in err


def test_cli_module_stays_light():
    """`reasoner --help` imports every CLI module: ours must not pull in sqlite, rich or jsonschema."""
    code = ("import argparse, sys; import reasoner.cli.traces as t; "
            "t.add_parser(argparse.ArgumentParser().add_subparsers()); "
            "print(sorted(m for m in ('rich', 'jsonschema', 'sqlite3', 'reasoner.traces.store') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_benchmark_runs(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "traces.py"), "--n", "300", "--runs", "1",
                           "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["traces"] == 300
    rows = {q["query"]: q["rows"] for q in report["queries"]}
    assert rows["count all"] == 300 and rows["list all summaries"] == 300
    assert 0 < rows["filter source=train, incorrect"] < 300
    assert all(0 < q["ms"] < 10_000 for q in report["queries"]), report["queries"]  # timed, and not absurdly
