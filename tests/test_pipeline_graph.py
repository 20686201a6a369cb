"""Graph logic with a scripted model, so every assertion is exact; real SQLite checkpoints and traces.

The scripted model never computes anything: it says what a test tells it to. Whatever the pipeline then
knows beyond that comes from the checks a user could run, which is what these tests pin down.
"""
import threading
import time

import pytest

from reasoner.api import Reasoner
from reasoner.errors import ReasonerError
from reasoner.pipeline.graph import RunContext, RunInput, RunOutput, build_graph, read_result, run_input
from reasoner.pipeline.options import SolveOptions
from reasoner.prompts import render
from reasoner.serving.backends import BackendError, ScriptedBackend
from reasoner.tasks import get_task
from reasoner.tasks.base import Question
from reasoner.traces.store import TraceStore

PLAN_CUE = render("plan", "compact", problem="")[0]["content"]  # the planner prompt is the problem, then this
COUNTDOWN = "Using the numbers [2, 3, 7], make 23. Use + - * / and each number exactly once."


class Model:
    """Plans from `plans` (problem -> list of planner outputs, cycled) and answers from `answers`
    (question -> list of completions, cycled per call); records what the solver was asked."""

    def __init__(self, plans=None, answers=None):
        self.plans, self.answers = plans or {}, answers or {}
        self.lock = threading.Lock()
        self.plan_calls = 0
        self.asked: list[str] = []
        self._cursor: dict[str, int] = {}

    def __call__(self, messages, n):
        content = messages[-1]["content"]
        if content.endswith(PLAN_CUE):
            problem = content.removesuffix(PLAN_CUE)
            with self.lock:
                self.plan_calls += 1
            return self._take(self.plans.get(problem, ["no plan here"]), problem, n)
        with self.lock:
            self.asked.append(content)
        question = content.split("\n")[0]  # a reflect prompt starts with the question
        return self._take(self.answers.get(question, ["<answer>?</answer>"]), question, n)

    def _take(self, script, key, n):
        with self.lock:
            start = self._cursor.get(key, 0)
            self._cursor[key] = start + n
        return [script[(start + i) % len(script)] for i in range(n)]


@pytest.fixture
def make(tmp_path):
    def make(script, **options):
        return Reasoner(ScriptedBackend(script), checkpoints=tmp_path / "pipeline.db", traces=tmp_path / "traces.db",
                        **{"samples": 3, "retries": 2, **options})
    return make


def trace_of(solution, tmp_path):
    with TraceStore.open(tmp_path / "traces.db") as store:
        return store.get(solution.trace_id)


WORD = "Ana has 3 bags of 4 apples. She buys 5 more. How many apples does she have?"


def test_plans_are_computed_by_the_calculator_and_voted(make, tmp_path):
    model = Model(plans={WORD: ['["3*4","{}+5"]', '["3*4","{}-5"]', '["3*4","{}+5"]']})
    solution = make(model).solve(WORD)
    assert (solution.answer, solution.decomposed, solution.samples_drawn) == ("17", True, 3)
    # The calculator checked the arithmetic the model wrote; nothing checked that the plan reads the text
    # right, so the answer is unverified, not verified.
    assert (solution.status, solution.verified) == ("unverified", False)
    assert [(s.question, s.answer, s.status) for s in solution.steps] == [("3*4", "12", "computed"),
                                                                          ("12+5", "17", "computed")]
    assert model.asked == []  # no solver call: the steps were arithmetic
    plan = next(span for _, span in trace_of(solution, tmp_path).walk() if span.name == "plan")
    assert (plan.attributes["votes"], plan.attributes["plans"]) == (2, 3)


def test_without_a_majority_more_plans_are_drawn_up_to_the_retry_budget(make):
    model = Model(plans={WORD: ['["3*4","{}+5"]', '["3*4","{}-5"]', '["3+4","{}+5"]']})
    reasoner = make(model, retries=2)
    solution = reasoner.solve(WORD)
    assert model.plan_calls == 3 and solution.samples_drawn == 9  # three rounds of three, no majority in any
    assert solution.answer in {"17", "7", "12"} and solution.status == "unverified"
    settled = Model(plans={WORD: ['["3*4","{}+5"]', '["3*4","{}-5"]', '["3*4","{}+5"]']})
    make(settled, retries=2).solve(WORD)
    assert settled.plan_calls == 1  # 2 of 3 agree: no second round


def test_the_users_own_question_is_never_evaluated(make):
    """A plain expression as the question: the calculator could read the answer off it, so it must not.
    The model's wrong answer stays unverified rather than being corrected, or rejected by an oracle."""
    model = Model(answers={"2+2": ["<answer>5</answer>"]})
    solution = make(model, decompose=False).solve("2+2")
    assert (solution.answer, solution.status) == ("5", "unverified")
    assert len(model.asked) == 1  # no check failed, so no retry either
    planned = make(Model(plans={"2+2": ["not a plan"]}, answers={"2+2": ["<answer>5</answer>"]})).solve("2+2")
    assert (planned.answer, planned.status, planned.decomposed) == ("5", "unverified", False)
    assert any("no valid plan in 9 samples" in e for e in planned.events)


def test_steps_in_words_fan_out_in_dependency_order_and_model_written_arithmetic_is_checked(make, tmp_path):
    problem = "How many legs do 2 cats and 3 hens have?"
    plan = '["legs of 2 cats","legs of 3 hens","{1}+{2}"]'
    model = Model(plans={problem: [plan]}, answers={
        "legs of 2 cats": ["<answer>8</answer>"], "legs of 3 hens": ["<answer>6</answer>"],
        "8+6": ["<answer>15</answer>", "<answer>14</answer>", "<answer>14</answer>"]})
    solution = make(model).solve(problem)
    assert solution.answer == "14" and solution.decomposed and solution.status == "unverified"
    assert [(s.question, s.answer, s.status) for s in solution.steps] == [
        ("legs of 2 cats", "8", "unverified"), ("legs of 3 hens", "6", "unverified"), ("8+6", "14", "verified")]
    # The two independent steps are the first wave; the sum waits for both, results written in.
    assert sorted(model.asked[:2]) == ["legs of 2 cats", "legs of 3 hens"] and model.asked[2] == "8+6"
    checks = {s.verification.detail for _, s in trace_of(solution, tmp_path).walk() if s.verification}
    assert {"8+6 = 14, not 15", "8+6 = 14", "nothing a user has can check this answer"} <= checks


def test_countdown_is_certified_against_the_numbers_the_question_states(make, tmp_path):
    model = Model(answers={COUNTDOWN: ["<answer>3*7-2</answer>", "<answer>3*7+2</answer>", "<answer>3*8-1</answer>"]})
    solution = make(model).solve(COUNTDOWN, task="countdown")
    assert (solution.answer, solution.status, solution.verified) == ("3*7+2", "verified", True)
    vote = next(span for _, span in trace_of(solution, tmp_path).walk() if span.name == "vote")
    assert vote.attributes["verdicts"] == {"fail": 2, "pass": 1}


def test_a_failed_check_is_retried_with_the_failure_fed_back_and_bounded(make, tmp_path):
    model = Model(answers={COUNTDOWN: ["<answer>3*7-2</answer>"]})
    reasoner = make(model, retries=2)
    solution = reasoner.solve(COUNTDOWN, task="countdown")
    assert len(reasoner.backend.calls) == 3  # one attempt and two retries, then it stops
    retry = render("reflect", "compact", question=COUNTDOWN, answer="3*7-2", feedback="3*7-2 = 19, not 23")
    assert reasoner.backend.calls[1][0] == retry
    assert (solution.answer, solution.verified, solution.status) == ("3*7-2", False, "rejected")
    assert solution.steps[0].attempts == 3 and solution.samples_drawn == 9
    reflects = [span for _, span in trace_of(solution, tmp_path).walk() if span.name == "reflect"]
    assert [r.attributes["attempt"] for r in reflects] == [1, 2]
    plain = make(Model(answers={COUNTDOWN: ["<answer>3*7-2</answer>"]}), retries=1, feedback=False)
    plain.solve(COUNTDOWN, task="countdown")
    assert [call[0][-1]["content"] for call in plain.backend.calls] == [COUNTDOWN, COUNTDOWN]


def test_a_retry_that_passes_is_verified(make):
    model = Model(answers={COUNTDOWN: ["<answer>3*7-2</answer>"] * 3 + ["<answer>2+3*7</answer>"]})
    solution = make(model).solve(COUNTDOWN, task="countdown")
    assert (solution.answer, solution.verified, solution.steps[0].attempts) == ("2+3*7", True, 2)


def test_code_is_run_on_the_examples_the_problem_shows(make, tmp_path):
    right = "<answer>def f(x):\n    return x*3+2</answer>"
    fits_examples_only = "<answer>def f(x):\n    return {1: 5, 4: 14}.get(x, 0)</answer>"
    question = "Write f(x) that returns x*3+2. For example, f(1) == 5 and f(4) == 14."
    examples = ["assert f(1) == 5", "assert f(4) == 14"]
    model = Model(answers={question: ["<answer>def f(x):\n    return x*3</answer>", right, right]})
    solution = make(model).solve(question, tests=examples, entry_point="f")
    assert solution.status == "verified" and "x*3+2" in solution.answer
    checks = {s.verification.detail for _, s in trace_of(solution, tmp_path).walk() if s.verification}
    assert {"passed 0 of 2 shown examples", "passed 2 of 2 shown examples"} <= checks
    # Passing the shown examples is all the pipeline can know: a program that only fits them is "verified"
    # too, and the grader's hidden tests (reasoner.evaluation) are what tell the two apart.
    overfit = make(Model(answers={question: [fits_examples_only]})).solve(question, tests=examples, entry_point="f")
    assert overfit.status == "verified"


def test_solve_many_hands_the_solver_only_what_the_problem_shows(make):
    problem = get_task("code").problems("heldout", 1, level=1)[0]
    seen: list[list[dict]] = []

    def spy(messages, n):
        seen.append(messages)
        return [f"<answer>{problem.answer}</answer>"] * n
    [solution] = make(spy).solve_many([problem])
    assert solution.status == "verified"
    text = str(seen)
    assert problem.question in text
    assert not any(test.removeprefix("assert ") in text for test in problem.tests)  # hidden tests stay hidden


def test_garbage_and_unclosed_tags_end_without_an_answer_not_a_traceback(make, tmp_path):
    model = Model(answers={COUNTDOWN: ["\x00\ufffd<think>never closes", "<answer>", "}}}{{{"]})
    solution = make(model, retries=1).solve(COUNTDOWN, task="countdown")
    assert solution.answer is None and solution.status == "failed" and not solution.verified
    assert "no answer found" in solution.error
    assert trace_of(solution, tmp_path).metadata["status"] == "failed"


def test_backend_errors_are_recorded_and_end_gracefully(make, tmp_path):
    def down(messages, n):
        raise BackendError("http://127.0.0.1:1/v1/chat/completions: HTTP 500 Internal Server Error: boom")
    reasoner = make(down, retries=1)
    solution = reasoner.solve("2+2")
    assert solution.answer is None and solution.status == "failed" and "HTTP 500" in solution.error
    errors = [span.error for _, span in trace_of(solution, tmp_path).walk() if span.error]
    assert sum("HTTP 500" in e for e in errors) >= 3  # the planner, the direct attempt, its one retry (and the step)
    assert len(reasoner.backend.calls) == 3


def test_unverifiable_answers_are_voted_without_retries(make):
    question = "What is the capital of France?"
    model = Model(answers={question: ["<answer>Paris</answer>", "<answer>Lyon</answer>", "<answer>Paris</answer>"]})
    reasoner = make(model, decompose=False)
    solution = reasoner.solve(question)
    assert (solution.answer, solution.status, solution.verified) == ("Paris", "unverified", False)
    assert len(reasoner.backend.calls) == 1


def test_a_reference_the_caller_passes_is_checked(make):
    question = "How many legs do 3 cats have?"
    model = Model(answers={question: ["<answer>12</answer>"]})
    assert make(model, decompose=False).solve(question, reference="12").status == "verified"
    wrong = make(Model(answers={question: ["<answer>11</answer>"]}), decompose=False, retries=0)
    assert wrong.solve(question, reference="12").status == "rejected"
    planned = make(Model(plans={WORD: ['["3*4","{}+5"]']}))
    assert planned.solve(WORD, reference="17").status == "verified"
    assert planned.solve(WORD, reference="18").status == "rejected"


def test_time_budget_stops_the_run(make):
    solution = make(Model()).solve(COUNTDOWN, task="countdown", time_budget=0.001)
    assert solution.status == "timeout" and solution.answer is None


def test_interrupted_run_resumes_from_its_checkpoint(make, tmp_path):
    problem = "How many legs do 2 cats and 3 hens have?"
    model = Model(plans={problem: ['["legs of 2 cats","legs of 3 hens","{1}+{2}"]']}, answers={
        "legs of 2 cats": ["<answer>8</answer>"], "legs of 3 hens": ["<answer>6</answer>"],
        "8+6": ["<answer>14</answer>"]})
    calls = []

    def flaky(messages, n):
        calls.append(messages[-1]["content"])
        if messages[-1]["content"] == "8+6" and calls.count("8+6") == 1:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the last step
        return model(messages, n)
    reasoner = make(flaky)
    with pytest.raises(KeyboardInterrupt):
        reasoner.solve(problem, run_id="run-1")
    done_before = list(calls)
    with TraceStore.open(tmp_path / "traces.db") as store:
        assert store.count() == 0  # no half trace
    solution = reasoner.resume("run-1")
    assert solution.answer == "14" and solution.trace_id == "run-1"
    assert calls[len(done_before):] == ["8+6"]  # plan and the first two steps were not asked again
    history = reasoner.history("run-1")
    assert history[0]["next"] == ["__start__"] and history[-1]["next"] == []
    assert "run-1" in reasoner.runs()
    assert reasoner.resume("run-1").answer == "14"  # a finished run is returned, not recomputed
    with TraceStore.open(tmp_path / "traces.db") as store:
        assert store.count() == 1


def test_resuming_an_unknown_run_is_a_clear_error(make):
    with pytest.raises(ReasonerError, match="no run 'nope'"):
        make(Model()).resume("nope")


def test_progress_reports_nodes_and_sub_problems(make):
    events = []
    problem = "How many legs do 2 cats and 3 hens have?"
    model = Model(plans={problem: ['["legs of 2 cats","{}+6"]']}, answers={
        "legs of 2 cats": ["<answer>8</answer>"], "8+6": ["<answer>14</answer>"]})
    make(model).solve(problem, progress=events.append)
    nodes = [(e["node"], e.get("question")) for e in events]
    assert nodes[0] == ("plan", None)
    assert ("sample", "legs of 2 cats") in nodes and ("solved", "8+6") in nodes and nodes[-1] == ("answer", None)


def test_the_graph_declares_its_input_and_output():
    """A run starts from run_input (the question and options, nothing the graph keeps for itself) and yields
    RunOutput, which read_result reads; reducer state such as spans needs no seeding by the caller."""
    graph = build_graph()
    question = Question("Using the numbers [2, 3, 7], make 23.", "countdown")
    inputs = run_input(question, SolveOptions(samples=2, retries=0), reference=None)
    assert set(inputs) == set(RunInput.__annotations__) == set(graph.get_input_jsonschema()["properties"])
    backend = ScriptedBackend(lambda messages, n: ["<answer>3*7+2</answer>"] * n)
    output = graph.invoke(inputs, context=RunContext(backend, deadline=time.time() + 60))
    assert set(output) <= set(RunOutput.__annotations__) == set(graph.get_output_jsonschema()["properties"])
    assert not {"tests", "reference", "votes"} & set(output)  # inputs and working state stay inside
    result = read_result(output)
    assert (result.answer, result.status, result.drawn, result.planned) == ("3*7+2", "verified", 2, 1)
    assert result.steps == [{"id": 1, "question": question.text, "answer": "3*7+2", "verified": True,
                             "status": "verified", "attempts": 1}]
    assert [s["name"] for s in result.spans] == ["plan", "step 1", "answer"]
    assert read_result({}) is None
