"""Inputs that never crash, and `reasoner solve`'s answer line and exit codes (issues #12, #13)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from reasoner.api import Reasoner, Solution
from reasoner.cli import main
from reasoner.cli.solve import EXIT_ANSWERED, EXIT_NO_ANSWER, EXIT_REJECTED
from reasoner.errors import ReasonerError
from reasoner.serving.backends import ScriptedBackend
from reasoner.traces.store import TraceStore

CODE = "Write add(a, b) returning the sum."
GOOD = "<answer>```python\ndef add(a, b):\n    return a + b\n```</answer>"


def scripted(tmp_path, reply="<answer>4</answer>", **options):
    return Reasoner(ScriptedBackend(lambda m, n: [reply] * n), checkpoints=tmp_path / "p.db",
                    traces=tmp_path / "t.db", **{"samples": 1, "retries": 0, **options})


@pytest.mark.parametrize("problem", ["1+\udcff", "\ud800", "2+2 \udc80\udc81"])
def test_lone_surrogates_are_rejected_before_a_run(tmp_path, problem):
    reasoner = scripted(tmp_path)
    with pytest.raises(ReasonerError, match="not valid UTF-8"):
        reasoner.solve(problem)
    assert not (tmp_path / "p.db").exists() and not (tmp_path / "t.db").exists()


@pytest.mark.parametrize("options, name", [
    ({"samples": 2.5}, "samples=2.5"), ({"retries": 1.0}, "retries=1.0"), ({"max_tokens": "8"}, "max_tokens='8'"),
    ({"samples": True}, "samples=True"), ({"seed": 0.5}, "seed=0.5"), ({"temperature": float("nan")}, "temperature=nan"),
    ({"time_budget": float("inf")}, "time_budget=inf"), ({"top_p": "1"}, "top_p='1'"),
])
def test_every_numeric_option_is_type_checked(tmp_path, options, name):
    with pytest.raises(ReasonerError, match=name.replace("(", r"\(").replace("[", r"\[")):
        scripted(tmp_path).solve("1+1", **options)
    with pytest.raises(ReasonerError, match=name.replace("(", r"\(").replace("[", r"\[")):
        scripted(tmp_path, **options)
    assert not (tmp_path / "p.db").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"tests": 5}, "tests: expected a list"),
    ({"tests": ["assert 1", 2]}, r"tests\[1\]"),
    ({"tests": ["assert add(1, 1) == 2"], "task": "math"}, "tests are for code problems"),
    ({"reference": ["4"]}, "reference: expected text"),
    ({"entry_point": "add; import os"}, "entry_point"),
    ({"progress": "yes"}, "progress: expected a function"),
    ({"task": "poetry"}, "task 'poetry'"),
])
def test_bad_arguments_are_user_errors(tmp_path, kwargs, message):
    with pytest.raises(ReasonerError, match=message):
        scripted(tmp_path).solve(CODE, **kwargs)


def test_one_test_as_a_string_is_one_test_and_tests_imply_code(tmp_path):
    reasoner = scripted(tmp_path, GOOD)
    solution = reasoner.solve(CODE, tests="assert add(1, 2) == 3", entry_point="add")  # no task given
    assert solution.verified and "return a + b" in solution.answer
    with TraceStore.open(tmp_path / "t.db") as store:
        trace = store.get(solution.trace_id)
    assert trace.task == "code"
    details = [s.verification.detail for _, s in trace.walk() if s.verification]
    assert len(details) == 1 and details[0].startswith("passed 1 of 1")


def test_str_and_repr_of_a_solution_show_the_status(tmp_path):
    verified = scripted(tmp_path).solve("2+2", decompose=False, reference="4")
    assert str(verified) == "4  (verified)"
    rejected = scripted(tmp_path, "<answer>5</answer>").solve("2+2", decompose=False, reference="4")
    assert rejected.status == "rejected" and str(rejected) == "5  (rejected)"
    none = scripted(tmp_path, "no idea").solve("2+2", decompose=False)
    assert none.answer is None and str(none).startswith("(no answer: ") and str(none).endswith("(failed)")
    assert "status='verified'" in repr(verified) and "steps=" in repr(verified)
    code = scripted(tmp_path, GOOD).solve(CODE, tests=["assert add(1, 2) == 3"])
    assert str(code).endswith("return a + b\n(verified)")


@pytest.fixture
def cli_scripted(monkeypatch, tmp_path):
    """`reasoner solve --base-url ...` answered by a scripted backend."""
    replies = {"reply": "<answer>4</answer>"}

    def from_openai(cls, base_url, model, api_key=None, **kwargs):
        return cls(ScriptedBackend(lambda m, n: [replies["reply"]] * n), **kwargs)
    monkeypatch.setattr(Reasoner, "from_openai", classmethod(from_openai))
    monkeypatch.setenv("REASONER_HOME", str(tmp_path))
    return replies


def solve(*args):
    return main(["solve", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--no-decompose", "--samples", "1",
                 "--retries", "0", *args])


@pytest.mark.parametrize("reply, reference, code, line", [
    ("<answer>4</answer>", ["--reference", "4"], EXIT_ANSWERED, "4  (verified)"),
    ("<answer>4</answer>", [], EXIT_ANSWERED, "4  (unverified)"),
    ("<answer>5</answer>", ["--reference", "4"], EXIT_REJECTED, "5  (rejected)"),
    ("nothing", [], EXIT_NO_ANSWER, "status: failed"),
])
def test_cli_prints_the_status_beside_the_answer_and_exits_by_it(cli_scripted, capsys, reply, reference, code, line):
    cli_scripted["reply"] = reply
    assert solve(*reference, "2+2") == code
    out = capsys.readouterr().out
    assert line in out
    assert (EXIT_ANSWERED, EXIT_NO_ANSWER, EXIT_REJECTED) == (0, 1, 3)


def test_cli_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["solve", "--help"])
    out = capsys.readouterr().out
    assert "exit codes:" in out and "3  an answer was found but a check rejected it" in out


def test_cli_one_test_file_line_is_one_test(cli_scripted, tmp_path, capsys):
    cli_scripted["reply"] = GOOD
    tests = tmp_path / "tests.py"
    tests.write_text("assert add(1, 2) == 3\n")
    assert solve("--code-tests", str(tests), "--entry-point", "add", CODE) == 0
    assert "(verified)" in capsys.readouterr().out
    tests.write_bytes(b"assert add(1, 2) == 3 # \xff\n")
    assert solve("--code-tests", str(tests), CODE) == 2
    assert "not UTF-8" in capsys.readouterr().err
    assert solve("--entry-point", "add", CODE) == 2


def run_cli(args, stdin=b"", home=None):
    env = {**os.environ, "REASONER_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "reasoner", *args], input=stdin, capture_output=True, timeout=120,
                          env=env)


def test_non_utf8_argv_and_stdin_are_rejected_before_a_run(tmp_path):
    base = ["solve", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"]
    for args, stdin in (([*base, os.fsdecode(b"1+\xff")], b""), ([*base, "-"], b"1+\xfe2")):
        result = run_cli(args, stdin, tmp_path)
        err = result.stderr.decode("utf-8", "replace")
        assert result.returncode == 2, err
        assert "not" in err and "UTF-8" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "pipeline.db").exists() and not (tmp_path / "traces.db").exists()
