"""Trace tools you can trust (issue 16): OTLP spans nest in time, diff shows final answers with the differing
words marked, export takes id prefixes and says when it exported nothing or stopped at its limit, a closed
pipe ends output quietly, and `list` reads at 80 columns."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reasoner.cli import main as reasoner_main
from reasoner.traces import TraceRecorder, TraceStore, model_call_span, rollout_traces, verification_span
from reasoner.traces.exchange import otlp_request
from reasoner.traces.views import question_text

REPO = Path(__file__).resolve().parents[1]


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = reasoner_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _pipeline_trace(answer="1", status="verified", last_call_answer="<answer>-2</answer>"):
    """Like a pipeline run: the trace is created when it is written (after its spans), a model call carries
    only a latency that outlasts its parent's measured time, and the last call is a rejected sample."""
    rec = TraceRecorder("pipeline", task="arithmetic", model="m", prompt="3-2")
    with rec.span("plan"):
        rec.add(model_call_span("plan 3-2", "<think>split</think>[\"3-2\"]", latency_s=0.5))
        with rec.span("step 1", kind="step"):
            rec.add(model_call_span("3-2", "<think>3-2 is 1</think>1", latency_s=0.2, start=time.time()))
            rec.add(verification_span(True, "1 == 1"))
    rec.add(model_call_span("retry", f"<think>hmm</think>{last_call_answer}", latency_s=0.1))
    trace = rec.finish(correct=True, answer=answer, status=status)
    time.sleep(0.01)
    from reasoner.traces.model import utcnow

    trace.created = utcnow()  # as recording.write_trace: after every span
    return trace


def _check_nesting(request: dict, timed: bool = True) -> int:
    spans = request["resourceSpans"][0]["scopeSpans"][0]["spans"]
    by_id = {s["spanId"]: s for s in spans}
    roots = [s for s in spans if "parentSpanId" not in s]
    assert len(roots) == 1
    checked = 0
    for span in spans:
        start, end = int(span["startTimeUnixNano"]), int(span["endTimeUnixNano"])
        assert start <= end, span["name"]
        if "parentSpanId" in span:
            parent = by_id[span["parentSpanId"]]
            assert int(parent["startTimeUnixNano"]) <= start and end <= int(parent["endTimeUnixNano"]), \
                f"{span['name']} [{start}, {end}] outside its parent {parent['name']}"
            checked += 1
    root = roots[0]
    if timed:
        assert int(root["endTimeUnixNano"]) > int(root["startTimeUnixNano"])  # not zero-length
    return checked


def test_otlp_every_child_span_lies_within_its_parent(tmp_path):
    trace = _pipeline_trace()
    assert _check_nesting(otlp_request(trace)) == 6
    rollouts = rollout_traces(prompts=["<|user|>1+1<|assistant|>"] * 2, completions=["2", "3"],
                              rewards={"accuracy_reward": [1.0, 0.0]}, advantages=[1.0, -1.0], correct=[True, False],
                              step=1, task="arithmetic")
    assert _check_nesting(otlp_request(rollouts[0]), timed=False) == 4  # no times at all: still nested
    store_path = tmp_path / "traces.db"
    with TraceStore.open(store_path) as store:
        store.add_many([trace, *rollouts])
    out = tmp_path / "otlp.jsonl"
    assert reasoner_main(["traces", "--store", str(store_path), "export", "--format", "otlp", "-o", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and all(_check_nesting(json.loads(line), timed=False) for line in lines)


@pytest.fixture
def store(tmp_path):
    with TraceStore.open(tmp_path / "traces.db") as opened:
        yield opened


def test_diff_shows_final_answers_and_marks_differences(store, capsys):
    verified = _pipeline_trace()
    store.add(verified)
    right, wrong = rollout_traces(prompts=["<|user|>6-8+0-8<|assistant|>"] * 2,
                                  completions=["<think>-2-8</think>-10", "<think>-2-9</think>-11"],
                                  rewards={"accuracy_reward": [1.0, 0.0]}, correct=[True, False], step=1,
                                  task="arithmetic")
    store.add_many([right, wrong])
    code, out, _ = _run(capsys, "traces", "--store", store.path, "diff", verified.id[:10], right.id[:10])
    assert code == 0
    answer_row = next(line for line in out.splitlines() if line.strip("│ ").startswith("answer"))
    assert "1  (verified)" in answer_row and "<answer>-2" not in answer_row  # metadata, not the last call
    # colours on: the differing words are marked, equal text is not
    os.environ["FORCE_COLOR"] = "1"
    try:
        code, out, _ = _run(capsys, "traces", "--store", store.path, "diff", right.id, wrong.id)
    finally:
        del os.environ["FORCE_COLOR"]
    assert code == 0
    assert "\x1b[1;4;31m10" in out.replace("\x1b[1;31;4m", "\x1b[1;4;31m") or "10\x1b[0m" in out
    assert "11" in out and "-10" in out.replace("\x1b[0m", "")


def test_export_takes_prefixes_warns_on_nothing_and_caps_html(store, capsys, tmp_path, monkeypatch):
    traces = rollout_traces(prompts=["q"] * 3, completions=["a", "b", "c"], rewards={"r": [1.0, 0.0, 1.0]}, step=1,
                            task="t")
    store.add_many(traces)
    out = tmp_path / "one.jsonl"
    code, _, err = _run(capsys, "traces", "--store", store.path, "export", traces[1].id[:8], "--format", "jsonl", "-o", out)
    assert code == 0 and "exported 1 trace " in err
    assert json.loads(out.read_text())["id"] == traces[1].id
    code, _, err = _run(capsys, "traces", "--store", store.path, "export", "--format", "jsonl", "--task", "nothing", "-o", out)
    assert code == 1 and "no trace matched" in err
    code, _, err = _run(capsys, "traces", "--store", store.path, "export", "ffffffffff", "--format", "jsonl", "-o", out)
    assert code == 2 and "no trace" in err
    monkeypatch.setattr("reasoner.cli.traces.DEFAULT_HTML_LIMIT", 2)
    page = tmp_path / "t.html"
    code, _, err = _run(capsys, "traces", "--store", store.path, "export", "--format", "html", "-o", page)
    assert code == 0 and "exported 2 traces" in err
    assert "stops at 2 traces" in err and "of the 3 that matched" in err and "--limit 0" in err
    code, _, err = _run(capsys, "traces", "--store", store.path, "export", "--format", "html", "--limit", "0", "-o", page)
    assert code == 0 and "exported 3 traces" in err and "stops at" not in err


def test_closed_pipe_ends_quietly(store):
    store.add_many(rollout_traces(prompts=["q"] * 300, completions=["a" * 400] * 300, rewards={"r": [1.0] * 300},
                                  step=1, task="t"))
    for action in (["list", "--json"], ["list", "--limit", "0"], ["export", "--format", "jsonl", "-o", "-"]):
        done = subprocess.run(f"{sys.executable} -m reasoner traces --store {store.path} {' '.join(action)} | head -c 100",
                              shell=True, capture_output=True, text=True, cwd=REPO, timeout=120)
        assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
        assert len(done.stdout) == 100


def test_list_reads_at_80_columns(store, tmp_path):
    store.add_many(rollout_traces(prompts=["<|user|>6-8+0-8<|assistant|>"], completions=["-10"],
                                  rewards={"accuracy_reward": [1.0]}, correct=[True], step=1, task="arithmetic",
                                  model="demo/grpo", completion_tokens=12))
    rec = TraceRecorder("pipeline", task="word", model="demo/sft",
                        prompt="Tom has 3 apples and buys 4 more. How many apples does he have now?")
    store.add(rec.finish(correct=False, answer="6"))
    done = subprocess.run([sys.executable, "-m", "reasoner", "traces", "--store", str(store.path), "list"],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "COLUMNS": "80"}, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "<|user|>" not in done.stdout and "6-8+0-8" in done.stdout
    assert "Tom has 3 apples a" in done.stdout  # 4 times what it showed before
    assert question_text("<｜User｜>What is 2+2?<｜Assistant｜><think>\n") == "What is 2+2?"
    assert question_text("<|im_start|>system\nBe brief<|im_end|><|im_start|>user\nHi there<|im_end|>") == "Hi there"


def test_filter_help_texts(capsys):
    with pytest.raises(SystemExit):
        reasoner_main(["traces", "list", "--help"])
    out = capsys.readouterr().out
    for option in ("--source", "--run", "--min-reward", "--max-reward"):
        line = next(line for line in out.splitlines() if line.strip().startswith(option))
        following = out[out.index(line):].splitlines()[:3]
        assert len(" ".join(following).split()) > 4, f"{option} has no help text"
