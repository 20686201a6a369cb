"""The pipeline as a model over real HTTP: `reasoner serve --pipeline` lists `reasoner-pipeline`, whose chat
completion runs Reasoner.solve and returns the answer, the decomposed trace and the trace id."""
import json
import os
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from reasoner.serving.backends import LocalBackend
from reasoner.serving.server import ChatServer
from reasoner.traces.store import TraceStore

FAST = {"samples": 2, "retries": 1, "max_tokens": 10, "seed": 0}
PROBLEM = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "12+5"}]


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    return tmp_path_factory.mktemp("pipeline") / "traces.db"


@pytest.fixture(scope="module")
def client(tiny_checkpoint, traces):
    home = os.environ.get("REASONER_HOME")
    os.environ["REASONER_HOME"] = str(traces.parent)  # the pipeline's run checkpoints go beside the traces
    server = ChatServer(LocalBackend.from_pretrained(tiny_checkpoint), "127.0.0.1", 0, model_name="tiny",
                        pipeline=True, traces=str(traces))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    server.shutdown()
    server.server_close()
    if home is None:
        os.environ.pop("REASONER_HOME")
    else:
        os.environ["REASONER_HOME"] = home


def show(traces, trace_id: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "reasoner", "traces", "show", trace_id, "--store", str(traces),
                           "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_pipeline_model_answers_with_its_trace(client, traces):
    assert [m.id for m in client.models.list().data] == ["tiny", "reasoner-pipeline"]
    reply = client.chat.completions.create(model="reasoner-pipeline", messages=PROBLEM, extra_body=FAST)
    body = reply.model_dump()
    message, solution = body["choices"][0]["message"], body["solution"]
    assert body["trace_id"] == solution["trace_id"] and solution["status"] in ("unverified", "failed")
    assert message["content"] == (solution["answer"] or "")
    reasoning = message["reasoning_content"]
    assert reasoning.startswith(f"trace {body['trace_id']}") and "plan" in reasoning
    trace = show(traces, body["trace_id"])
    assert trace["id"] == body["trace_id"] and trace["source"] == "pipeline" and trace["prompt"] == "12+5"


def test_a_streamed_pipeline_run_reports_progress_as_it_goes(client, traces):
    stream = client.chat.completions.create(model="reasoner-pipeline", messages=PROBLEM, stream=True, extra_body=FAST)
    chunks = [chunk.model_dump() for chunk in stream]
    reasoning = [c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks if c["choices"]]
    progress = [text for text in reasoning if text and not text.startswith("\n")]
    # e.g. plan, no majority (retry 1), ..., step 1: 12+5, the check failed (retry 1), ..., step 1: 12+5 -> None
    assert progress[0] == "plan: asking for sub-problems\n"
    assert " -> " in progress[-1] or progress[-1].startswith("answer: ")
    assert any("(retry 1)" in text for text in progress) and any(text.startswith("step 1: ") for text in progress)
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "stop" and last["trace_id"]
    # progress came in chunks of its own, before the final trace and answer
    assert chunks.index(next(c for c in chunks if c.get("trace_id"))) > len(progress)
    assert show(traces, last["trace_id"])["id"] == last["trace_id"]


def test_the_pipeline_model_needs_a_user_message(client):
    with pytest.raises(openai.BadRequestError, match="needs a user message"):
        client.chat.completions.create(model="reasoner-pipeline", messages=[{"role": "system", "content": "hi"}])


def test_a_problem_the_pipeline_refuses_gets_its_message_whole_or_streamed(client):
    long = [{"role": "user", "content": "1+" * 30_000}]
    with pytest.raises(openai.BadRequestError, match="the problem is 60,000 characters; the limit is 50,000"):
        client.chat.completions.create(model="reasoner-pipeline", messages=long)
    with pytest.raises(openai.APIError, match="the problem is 60,000 characters; the limit is 50,000"):
        for _ in client.chat.completions.create(model="reasoner-pipeline", messages=long, stream=True):
            pass


def test_a_client_that_leaves_a_streamed_run_stops_it(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("REASONER_HOME", str(tmp_path))
    server = ChatServer(LocalBackend.from_pretrained(tiny_checkpoint), "127.0.0.1", 0, model_name="tiny",
                        pipeline=True, traces=str(tmp_path / "traces.db"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # The random tiny model never writes a valid plan, so a whole run asks the planner again and again.
    body = {"model": "reasoner-pipeline", "messages": PROBLEM, "stream": True, "samples": 2, "retries": 10,
            "max_tokens": 10, "seed": 0}
    try:
        with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body, timeout=120) as response:
            assert next(line for line in response.iter_lines() if "plan: asking" in line)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _traces(tmp_path / "traces.db"):
            time.sleep(0.1)  # the cancelled run winds up and still writes its trace
        assert _traces(tmp_path / "traces.db") == 1
        cancelled_calls = server.service.batcher.calls
        whole = httpx.post(f"{server.base_url}/chat/completions", json={**body, "stream": False}, timeout=120)
        assert whole.status_code == 200  # its slot was given back
        whole_calls = server.service.batcher.calls - cancelled_calls
        assert whole_calls >= 10 and cancelled_calls <= 3, (cancelled_calls, whole_calls)
    finally:
        server.shutdown()
        server.server_close()


def _traces(path) -> int:
    if not path.exists():
        return 0
    with TraceStore.open(path, read_only=True) as store:
        return store.count()
