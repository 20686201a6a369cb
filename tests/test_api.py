"""The Python API with real components: a tiny checkpoint, the SQLite checkpointer, the code sandbox."""
import threading

import pytest

from reasoner.api import MAX_PROBLEM_CHARS, Reasoner, Solution
from reasoner.errors import ReasonerError
from reasoner.model import load_model, save_checkpoint
from reasoner.serving.backends import LocalBackend, Sampling, ScriptedBackend
from reasoner.traces.store import TraceStore

FAST = {"samples": 2, "retries": 1, "max_tokens": 12, "temperature": 1.0, "seed": 0}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, tokenizer = load_model("tiny")
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("api") / "ckpt")


@pytest.fixture
def reasoner(checkpoint, tmp_path):
    with Reasoner.from_pretrained(checkpoint, checkpoints=tmp_path / "p.db", traces=tmp_path / "t.db", **FAST) as r:
        yield r


def test_real_model_runs_through_the_whole_graph(reasoner, tmp_path):
    solution = reasoner.solve("3+4*2")
    assert isinstance(solution, Solution) and solution.trace_id
    # Random weights write garbage: no valid plan in any round, so it is solved directly. Nothing a user has can
    # check an answer to "3+4*2" (the question itself is never evaluated), so at best it is unverified.
    assert not solution.decomposed and any("no valid plan" in e for e in solution.events)
    assert solution.status in ("failed", "unverified") and not solution.verified
    with TraceStore.open(tmp_path / "t.db") as store:
        trace = store.get(solution.trace_id)
    calls = trace.model_calls()
    assert calls[0].prompt == "<|user|>3+4*2\nplan:<|assistant|>"
    assert calls[0].prompt_tokens == len("3+4*2\nplan:") + 2  # one token per character, plus the role tokens
    assert all(0 < c.completion_tokens <= FAST["max_tokens"] for c in calls if c.prompt.endswith("3+4*2<|assistant|>")
               and "plan" not in c.prompt)
    plans = [c for c in calls if c.prompt.endswith("plan:<|assistant|>")]
    answers = [c for c in calls if c not in plans]  # the question, then retries with the failure fed back
    # k plans per round, a second round for want of a majority; then k answers (a retry only after a failed check)
    assert len(plans) == 2 * FAST["samples"] and 1 <= len(answers) // FAST["samples"] <= FAST["retries"] + 1
    assert all(c.sampling["temperature"] == 1.0 for c in plans + answers)
    assert solution.samples_drawn == len(plans) + len(answers)
    assert trace.model == "ckpt" and trace.source == "pipeline"


def test_local_backend_is_safe_and_deterministic_across_threads(reasoner):
    backend: LocalBackend = reasoner.backend
    sampling = Sampling(temperature=1.0, max_tokens=8, seed=7)
    messages = [[{"role": "user", "content": q}] for q in ("1+1", "2*3", "9-4")]
    alone = [[g.text for g in backend.generate(m, 2, sampling)] for m in messages]
    together = [None] * 3

    def ask(i):
        together[i] = [g.text for g in backend.generate(messages[i], 2, sampling)]
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == alone


def test_solve_many_keeps_order_and_writes_one_trace_each(checkpoint, tmp_path):
    reasoner = Reasoner(ScriptedBackend(lambda m, n: ["<answer>4</answer>"] * n), checkpoints=tmp_path / "p.db",
                        traces=tmp_path / "t.db", samples=1)
    solutions = reasoner.solve_many(["2+2", "1+3", "5-1"], decompose=False)
    assert [s.problem for s in solutions] == ["2+2", "1+3", "5-1"]
    assert [s.answer for s in solutions] == ["4"] * 3 and {s.status for s in solutions} == {"unverified"}
    with TraceStore.open(tmp_path / "t.db") as store:
        assert {t.id for t in store.query()} == {s.trace_id for s in solutions}


@pytest.mark.parametrize("problem, message", [
    ("", "the problem is empty"),
    ("   \n\t", "the problem is empty"),
    ("1+" * MAX_PROBLEM_CHARS, "characters; the limit is"),
    (None, "a problem is text"),
])
def test_bad_problems_are_user_errors(reasoner, problem, message):
    with pytest.raises(ReasonerError, match=message):
        reasoner.solve(problem)


def test_bad_options_are_user_errors(reasoner, checkpoint, tmp_path):
    with pytest.raises(ReasonerError, match="did you mean 'samples'"):
        reasoner.solve("1+1", sampels=3)
    with pytest.raises(ReasonerError, match="retries=-1"):
        reasoner.solve("1+1", retries=-1)
    with pytest.raises(ReasonerError, match="not a checkpoint"):
        Reasoner.from_pretrained(tmp_path)
    with pytest.raises(ReasonerError, match="expected http"):
        Reasoner.from_openai("localhost:8000", "m")


def test_problem_longer_than_the_context_fails_with_a_clear_error(reasoner):
    solution = reasoner.solve("1+" * 600 + "1", decompose=False)
    assert solution.answer is None and solution.status == "failed"
    assert "this model reads at most 1024" in solution.error


CODE = "Write add(a, b) returning the sum."
TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]


def test_code_answers_are_verified_by_running_their_tests_in_the_sandbox(tmp_path):
    attempts = iter(["<answer>```python\ndef add(a, b):\n    return abs(a) + b\n```</answer>",
                     "<answer>```python\ndef add(a, b):\n    return a + b\n```</answer>"])
    reasoner = Reasoner(ScriptedBackend(lambda m, n: [next(attempts)] * n), checkpoints=tmp_path / "p.db",
                        traces=tmp_path / "t.db", samples=1, retries=2)
    solution = reasoner.solve(CODE, task="code", tests=TESTS, entry_point="add")
    assert solution.verified and "return a + b" in solution.answer and solution.steps[0].attempts == 2
    assert not solution.decomposed  # code is solved whole
    with TraceStore.open(tmp_path / "t.db") as store:
        verdicts = [s.verification for _, s in store.get(solution.trace_id).walk() if s.verification]
    assert [(v.verdict, v.detail) for v in verdicts] == [("fail", "passed 1 of 2 shown examples"),
                                                         ("pass", "passed 2 of 2 shown examples")]


def test_code_that_never_passes_is_not_verified(tmp_path):
    # Exits before any test runs, hoping a clean exit code passes for success.
    hostile = "<answer>```python\nimport os\ndef add(a, b):\n    return a + b\nos._exit(0)\n```</answer>"
    reasoner = Reasoner(ScriptedBackend(lambda m, n: [hostile] * n), checkpoints=tmp_path / "p.db",
                        traces=tmp_path / "t.db", samples=1, retries=0)
    solution = reasoner.solve(CODE, task="code", tests=TESTS[:1], entry_point="add")
    assert not solution.verified and solution.status == "rejected"


def test_a_cancelled_run_asks_nothing_more_and_still_writes_its_trace(tmp_path):
    cancel = threading.Event()

    def wrong_then_leave(messages, n):  # the caller leaves while the first (failing) attempt is drawn
        cancel.set()
        return ["<answer>```python\ndef add(a, b):\n    return a - b\n```</answer>"] * n

    backend = ScriptedBackend(wrong_then_leave)
    reasoner = Reasoner(backend, checkpoints=tmp_path / "p.db", traces=tmp_path / "t.db", samples=1, retries=5)
    solution = reasoner.solve(CODE, task="code", tests=TESTS, entry_point="add", cancel=cancel)
    assert len(backend.calls) == 1  # without cancel: 6 attempts (5 retries)
    assert not solution.verified and solution.steps[0].attempts == 1
    with TraceStore.open(tmp_path / "t.db") as store:
        assert store.get(solution.trace_id).id == solution.trace_id


def test_cancel_must_be_an_event(tmp_path):
    reasoner = Reasoner(ScriptedBackend(lambda m, n: ["<answer>4</answer>"] * n), checkpoints=tmp_path / "p.db",
                        traces=tmp_path / "t.db")
    with pytest.raises(ReasonerError, match="cancel: expected a threading.Event"):
        reasoner.solve("2+2", cancel=True)
