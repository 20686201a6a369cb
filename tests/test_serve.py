"""The OpenAI-compatible server and client, over real HTTP on 127.0.0.1."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from reasoner.api import Reasoner
from reasoner.cli import main
from reasoner.model import load_model, save_checkpoint
from reasoner.serving.backends import BackendError, LocalBackend, OpenAIBackend, Sampling
from reasoner.serving.server import ChatServer
from reasoner.traces.store import TraceStore

FAST = {"samples": 2, "retries": 1, "max_tokens": 10, "seed": 0}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, tokenizer = load_model("tiny")
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("serve") / "ckpt")


def start(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture(scope="module")
def server(checkpoint):
    server = start(ChatServer(LocalBackend.from_pretrained(checkpoint), "127.0.0.1", 0, model_name="tiny"))
    yield server
    server.shutdown()
    server.server_close()


def post(url, body, raw=None):
    request = urllib.request.Request(url + "/chat/completions", raw or json.dumps(body).encode(),
                                     {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_chat_completions_returns_n_choices_in_openai_format(server):
    status, reply = post(server.base_url, {"model": "tiny", "messages": [{"role": "user", "content": "2+2"}],
                                           "n": 3, "max_tokens": 6, "temperature": 0.9, "seed": 1})
    assert status == 200 and reply["object"] == "chat.completion" and reply["model"] == "tiny"
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2]
    assert all(c["message"]["role"] == "assistant" and isinstance(c["message"]["content"], str) for c in reply["choices"])
    assert reply["usage"]["prompt_tokens"] == len("2+2") + 2 and 0 < reply["usage"]["completion_tokens"] <= 18
    with urllib.request.urlopen(server.base_url + "/models", timeout=10) as response:
        assert json.loads(response.read())["data"][0]["id"] == "tiny"


def test_greedy_replies_match_the_local_backend(server):
    sampling = Sampling(temperature=0.0, max_tokens=8)
    messages = [{"role": "user", "content": "7*6"}]
    remote = OpenAIBackend(server.base_url, "tiny").generate(messages, 2, sampling)
    local = server.backend.generate(messages, 1, sampling)
    assert [g.text for g in remote] == [local[0].text] * 2


@pytest.mark.parametrize("body, message", [
    ({"messages": []}, "'messages' must be a non-empty list"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "each message needs a role"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 0}, "'n' must be between"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "'temperature' must be a number"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "'stream' must be true or false"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": True}, "'n' must be a whole number"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": 7}, "'stop' must be a string or a list of strings"),
    ([1, 2], "the body must be a JSON object"),
    ({"messages": [{"role": "user", "content": "1+" * 600}]}, "this model reads at most 1024"),
])
def test_bad_requests_get_400_with_a_message(server, body, message):
    status, reply = post(server.base_url, body)
    assert status == 400 and message in reply["error"]["message"]


def test_malformed_json_gets_400(server):
    status, reply = post(server.base_url, None, raw=b"{not json")
    assert status == 400 and reply["error"]["message"] == "the body is not valid JSON"


def test_pipeline_over_http_with_the_real_model(server, tmp_path):
    reasoner = Reasoner.from_openai(server.base_url, "tiny", checkpoints=tmp_path / "p.db", traces=tmp_path / "t.db",
                                    **FAST)
    solution = reasoner.solve("12+5")
    assert solution.status in ("failed", "unverified") and solution.trace_id
    with TraceStore.open(tmp_path / "t.db") as store:
        trace = store.get(solution.trace_id)
    # k plans per round, two rounds (no majority), then k answers per attempt: one attempt, a retry if no answer
    assert trace.model == "tiny" and len(trace.model_calls()) == solution.samples_drawn >= FAST["samples"] * 3
    [planner] = json.loads(trace.model_calls()[0].prompt)  # the planner's prompt, in the style of from_openai
    assert planner["role"] == "user" and planner["content"].startswith("12+5\n") and "plan" in planner["content"]


def fail_after_delay(server, method, body):
    time.sleep(server.delay)
    return 500, {"error": {"message": "boom"}}


@pytest.fixture
def broken(json_server):
    return json_server(fail_after_delay, delay=0)


def url_of(server):
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def test_http_500_is_a_clear_error_and_the_run_ends_gracefully(broken, tmp_path):
    with pytest.raises(BackendError, match="HTTP 500.*boom"):
        OpenAIBackend(url_of(broken), "m").generate([{"role": "user", "content": "1"}], 1, Sampling())
    reasoner = Reasoner.from_openai(url_of(broken), "m", checkpoints=tmp_path / "p.db", traces=tmp_path / "t.db", **FAST)
    solution = reasoner.solve("1+1")
    assert solution.answer is None and solution.status == "failed" and "HTTP 500" in solution.error


def test_a_backend_that_hangs_times_out(broken):
    broken.delay = 5
    started = time.monotonic()
    with pytest.raises(BackendError, match="no answer within 0.5s"):
        OpenAIBackend(url_of(broken), "m", timeout=0.5).generate([{"role": "user", "content": "1"}], 1, Sampling())
    assert time.monotonic() - started < 4


def test_nothing_listening_is_a_clear_error(broken):
    port = broken.server_address[1]
    broken.shutdown()
    broken.server_close()
    with pytest.raises(BackendError, match="cannot connect"):
        OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m").generate([{"role": "user", "content": "1"}], 1, Sampling())


def test_cli_solve_prints_progress_and_the_answer(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REASONER_HOME", str(tmp_path))
    code = main(["solve", "--base-url", server.base_url, "--model", "tiny", "--samples", "2", "--retries", "0",
                 "--max-tokens", "8", "6*7"])
    out, err = capsys.readouterr()
    status = err.split("] run ")[0].rsplit("[", 1)[1]  # "[unverified] run <id> (0.4s)"
    assert code == {"verified": 0, "unverified": 0, "rejected": 3}.get(status, 1), (status, code)
    assert "plan     asking for sub-problems" in err and "solve    step 1: 6*7" in err
    assert "] run " in err and out.strip()  # the answer, or why there is none
    assert (tmp_path / "pipeline.db").exists() and (tmp_path / "traces.db").exists()


def test_cli_reports_user_errors_without_a_traceback(broken, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REASONER_HOME", str(tmp_path))
    assert main(["solve", "--base-url", url_of(broken), "--model", "m", "--retries", "0", "1+1"]) == 1
    out, err = capsys.readouterr()
    assert "no answer:" in out and "HTTP 500" in out and "Traceback" not in err
    assert main(["solve", "--model", str(tmp_path), "1+1"]) == 2
    assert "not a checkpoint" in capsys.readouterr().err
    assert main(["solve", "--base-url", url_of(broken), "--model", "m", ""]) == 2
    assert "the problem is empty" in capsys.readouterr().err


def test_reasoner_serve_command_serves_a_checkpoint(checkpoint, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "reasoner", "serve", "--model", str(checkpoint), "--port", "0",
                             "--name", "demo", "--pipeline"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env={**os.environ, "REASONER_HOME": str(tmp_path), "REASONER_API_KEY": "k"})
    try:
        line = proc.stdout.readline()  # "serving demo at http://127.0.0.1:PORT/v1, and reasoner-pipeline (...)"
        assert line.startswith("serving demo at http://127.0.0.1:"), line
        url = line.split()[3].rstrip(",")
        status, reply = post(url, {"messages": [{"role": "user", "content": "1+2"}], "max_tokens": 4})
        assert status == 401 and "API key" in reply["error"]["message"]  # the key came from REASONER_API_KEY
        client = openai.OpenAI(base_url=url, api_key="k", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["demo", "reasoner-pipeline"]
        reply = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "1+2"}],
                                               max_tokens=4)
        assert len(reply.choices) == 1 and reply.usage.completion_tokens <= 4
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn finishes what is in flight, then the command returns
        proc.wait(timeout=30)
    assert proc.returncode == 0 and proc.stdout.read().strip().endswith("stopped")
