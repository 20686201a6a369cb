"""`reasoner eval --base-url`: a served model scored like a local checkpoint, over real HTTP on 127.0.0.1.

The parity test serves the tiny checkpoint with `reasoner serve`'s ChatServer and evaluates it both ways,
greedy: the same completions, correctness and printed figures. (Random weights score 0; a stub server that
answers from the question gives the resume and retry tests mixed right and wrong answers.)
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from reasoner.cli import main
from reasoner.evaluation.endpoint import evaluate_endpoint, list_models, settings_path
from reasoner.errors import ReasonerError
from reasoner.serving.backends import LocalBackend, OpenAIBackend
from reasoner.serving.server import ChatServer
from reasoner.tasks import get_task

ARGS = ["--task", "arithmetic", "--n", "6", "--seed", "0"]
FIGURE = re.compile(r"^\s+(pass@\d+|maj@\d+)\s+(.+)$", re.M)


def start(server):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop(server):
    server.shutdown()
    server.server_close()


def figures(out: str) -> dict[str, str]:
    return dict(FIGURE.findall(out))


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- parity with the local path


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    server = start(ChatServer(LocalBackend.from_pretrained(tiny_checkpoint), "127.0.0.1", 0, model_name="tiny"))
    yield server
    stop(server)


def test_served_checkpoint_scores_as_the_local_one(served, tiny_checkpoint, tmp_path, capsys):
    common = [*ARGS, "--max-new-tokens", "24"]
    assert main(["eval", "--model", str(tiny_checkpoint), *common, "--output", str(tmp_path / "local.jsonl")]) == 0
    local_out = capsys.readouterr().out
    # no --served-model: the only model the server lists
    assert main(["eval", "--base-url", served.base_url, *common, "--concurrency", "3",
                 "--output", str(tmp_path / "served.jsonl")]) == 0
    served_out = capsys.readouterr().out
    assert figures(local_out) == figures(served_out) and list(figures(served_out)) == ["pass@1"], served_out
    local, remote = rows(tmp_path / "local.jsonl"), rows(tmp_path / "served.jsonl")
    assert [r["id"] for r in remote] == [p.id for p in get_task("arithmetic").problems("heldout", 6, seed=0)]
    assert remote == local  # every key: completions, per-sample correctness, pass@1, maj@1, pass@1
    assert all(r["completions"][0] for r in remote)  # real text came back, not empty strings
    assert "requests: 6 sent, 0 retried; problems: 0 resumed" in served_out
    stored = json.loads(settings_path(tmp_path / "served.jsonl").read_text())
    assert stored["served_model"] == "tiny" and stored["temperature"] == 0.0 and stored["max_new_tokens"] == 24


# ---------------------------------------------------------------- a stub server that answers from the question


def answer_from_question(server, method: str, body: dict | None) -> tuple[int, dict]:
    """Answers arithmetic with `reasoning_content` apart from `content`: right on some samples, off by one on
    others (which, decided by the request's seed). Fails the first `fail` requests (500s, then a 429); a
    question in `broken` always gets `broken_status`; after `hang_after` requests it stops answering."""
    if method == "GET":
        return 200, {"object": "list", "data": [{"id": "stub", "object": "model"}]}
    question = body["messages"][-1]["content"]
    with server.lock:
        server.count += 1
        count = server.count
        server.questions.append(question)
    if server.hang_after is not None and count > server.hang_after:
        time.sleep(60)
    if count <= server.fail:
        return (429 if count == server.fail else 503), {"error": {"message": f"busy ({count})"}}
    if question in server.broken:
        return server.broken_status, {"error": {"message": "this one fails"}}
    value = int(eval(question, {"__builtins__": {}}))
    choices = []
    for i in range(body.get("n", 1)):
        v = value + (0 if (body.get("seed", 0) + i) % 3 else 1)
        choices.append({"index": i, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": f"<answer>{v}</answer>",
                                    "reasoning_content": f"{question} = {v}"}})
    return 200, {"object": "chat.completion", "choices": choices}


@pytest.fixture
def stub(json_server):
    return json_server(answer_from_question, lock=threading.Lock(), count=0, questions=[], fail=0, broken=set(),
                       broken_status=500, hang_after=None)


def problems(n=6):
    return get_task("arithmetic").problems("heldout", n, seed=0)


def run_stub(stub, output, problems_=None, **kwargs):
    options = {"samples": 3, "temperature": 1.0, "concurrency": 3, "backoff": 0.01,
               "settings": {"task": "arithmetic", "split": "heldout", "level": None}, **kwargs}
    return evaluate_endpoint(OpenAIBackend(stub.base_url, "stub"), problems_ or problems(), output, **options)


def test_reasoning_content_is_folded_into_think_and_graded(stub, tmp_path):
    report = run_stub(stub, tmp_path / "r.jsonl")
    first = rows(tmp_path / "r.jsonl")[0]
    assert first["completions"][0].startswith("<think>" + first["question"] + " = ")
    assert "</think><answer>" in first["completions"][0]
    # off by one on a third of the samples: mixed figures, and the vote beats a single sample
    assert 0 < report.metrics["pass@1"].value < 1 and report.metrics["maj@3"].value == 1.0
    assert report.metrics["pass@3"].value == 1.0 and report.graded == 6 and report.requests == 6
    assert all(r["correct"] == [s == f"<think>{r['question']} = {r['gold']}</think><answer>{r['gold']}</answer>"
                                for s in r["completions"]] for r in rows(tmp_path / "r.jsonl"))


def test_rerun_skips_finished_problems_and_drops_a_torn_line(stub, tmp_path):
    output = tmp_path / "r.jsonl"
    full = run_stub(stub, output)
    complete = rows(output)
    # as a run killed mid-write leaves it: 3 rows done, the 4th cut off
    lines = output.read_text().splitlines(keepends=True)
    output.write_text("".join(lines[:3]) + lines[3][:25])
    stub.questions.clear()
    again = run_stub(stub, output)
    assert sorted(stub.questions) == sorted(r["question"] for r in complete[3:])  # only the unfinished three
    assert again.resumed == 3 and rows(output) == complete
    assert {k: str(m) for k, m in again.metrics.items()} == {k: str(m) for k, m in full.metrics.items()}
    stub.questions.clear()
    assert run_stub(stub, output).resumed == 6 and stub.questions == []


def test_rerun_with_other_settings_is_refused_naming_the_difference(stub, tmp_path, capsys):
    output = tmp_path / "r.jsonl"
    argv = ["eval", "--base-url", stub.base_url, "--served-model", "stub", *ARGS, "--output", str(output)]
    assert main([*argv, "--samples", "2"]) == 0
    assert main([*argv, "--samples", "3", "--max-new-tokens", "50"]) == 2
    err = capsys.readouterr().err
    assert "other settings (samples 2 there, 3 now; max_new_tokens 96 there, 50 now)" in err
    assert "Traceback" not in err
    (tmp_path / "local.jsonl").write_text('{"id": "x"}\n')  # a local eval's file: its settings are unknown
    assert main([*argv[:-1], str(tmp_path / "local.jsonl")]) == 2
    assert "settings are unknown" in capsys.readouterr().err


def test_transient_failures_are_retried_and_counted(stub, tmp_path, capsys):
    stub.fail = 4  # three 503s and a 429
    report = run_stub(stub, tmp_path / "r.jsonl", concurrency=2)
    assert report.retries == 4 and report.requests == 10 and report.graded == 6 and not report.errors
    stub.count, stub.fail = 0, 2
    assert main(["eval", "--base-url", stub.base_url, *ARGS, "--output", str(tmp_path / "cli.jsonl")]) == 0
    assert "requests: 8 sent, 2 retried; problems: 0 resumed" in capsys.readouterr().out


def test_a_problem_that_keeps_failing_is_an_error_row_and_a_rerun_retries_it(stub, tmp_path, capsys):
    bad = problems()[2]
    stub.broken = {bad.question}
    output = tmp_path / "r.jsonl"
    argv = ["eval", "--base-url", stub.base_url, *ARGS, "--retries", "1", "--output", str(output)]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "n=5 of 6" in out and "1 failed" in out and f"failed {bad.id}: " in err and "HTTP 500" in err
    assert "run the same command again" in err and "Traceback" not in err
    assert rows(output)[2] == {"id": bad.id, "question": bad.question, "gold": bad.answer,
                               "error": rows(output)[2]["error"]}
    assert stub.questions.count(bad.question) == 2  # asked, retried once
    stub.broken, stub.questions[:] = set(), []
    assert main(argv) == 0
    assert stub.questions == [bad.question] and "5 resumed" in capsys.readouterr().out
    assert "error" not in rows(output)[2] and len(rows(output)) == 6


def test_client_errors_are_not_retried(stub, tmp_path):
    stub.broken, stub.broken_status = {problems()[0].question}, 400
    report = run_stub(stub, tmp_path / "r.jsonl")
    assert list(report.errors) == [problems()[0].id] and "HTTP 400" in report.errors[problems()[0].id]
    assert stub.questions.count(problems()[0].question) == 1 and report.retries == 0


def test_a_server_that_goes_away_stops_the_run(stub, tmp_path):
    stub.broken = {p.question for p in problems(12)}
    report = run_stub(stub, tmp_path / "r.jsonl", problems(12), concurrency=1, retries=0, stop_after=3)
    assert report.stopped and "3 problems in a row failed" in report.stopped
    # the one worker may have sent the 4th request before the 3rd failure was counted
    assert len(report.errors) in (3, 4) and report.graded == 0 and stub.count == len(report.errors)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_url_is_a_one_line_error(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert main(["eval", "--base-url", url, "--served-model", "m", *ARGS, "--output", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"reasoner eval: error: cannot reach {url}: ") and "Traceback" not in err
    assert err.count("\n") == 1 and not (tmp_path / "x.jsonl").exists()
    assert main(["eval", "--base-url", "127.0.0.1:8000", *ARGS]) == 2
    assert "must start with http:// or https://" in capsys.readouterr().err
    with pytest.raises(ReasonerError, match="cannot reach"):
        list_models(url)


def test_model_or_base_url_exactly_one(capsys):
    with pytest.raises(SystemExit):
        main(["eval", *ARGS])
    assert "one of the arguments --model --base-url is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--model", "tiny", "--base-url", "http://127.0.0.1:1/v1", *ARGS])
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["eval", "--model", "tiny", "--served-model", "m", *ARGS]) == 2
    assert "go with --base-url" in capsys.readouterr().err


def test_killed_run_resumes_where_it_stopped(stub, tmp_path, capsys):
    """A real kill: the CLI in a subprocess, SIGKILLed while requests hang after the first three answers."""
    stub.hang_after = 3
    output = tmp_path / "r.jsonl"
    argv = ["eval", "--base-url", stub.base_url, *ARGS, "--concurrency", "1", "--output", str(output)]
    proc = subprocess.Popen([sys.executable, "-m", "reasoner", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if output.exists() and len(output.read_text().splitlines()) == 3 and stub.count > 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        proc.kill()
        proc.wait(timeout=30)
    done = [r["id"] for r in rows(output)]
    assert len(done) == 3
    stub.hang_after, stub.questions[:] = None, []
    assert main(argv) == 0
    assert "3 resumed" in capsys.readouterr().out and len(stub.questions) == 3
    assert [r["id"] for r in rows(output)] == [p.id for p in problems()] and done == [p.id for p in problems()[:3]]


@pytest.mark.parametrize("style", ["plain", "r1"])
def test_the_messages_render_to_the_local_prompt(tiny, style):
    from reasoner.evaluation.endpoint import prompt_messages
    from reasoner.rl.data import render_prompt

    _, tokenizer = tiny
    question = "Natalia sold 48 clips in April and half as many in May. How many in all?"
    messages = prompt_messages(question, style)
    assert [m["role"] for m in messages] == (["system", "user"] if style == "r1" else ["user"])
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == \
        render_prompt(question, tokenizer, style)


def test_a_larger_n_asks_only_for_the_new_problems(stub, tmp_path, capsys):
    output = tmp_path / "r.jsonl"
    argv = ["eval", "--base-url", stub.base_url, "--task", "arithmetic", "--output", str(output)]
    assert main([*argv, "--n", "6"]) == 0
    stub.questions.clear()
    assert main([*argv, "--n", "9"]) == 0
    assert "6 resumed" in capsys.readouterr().out and len(stub.questions) == 3
    assert [r["id"] for r in rows(output)] == [p.id for p in problems(9)]
