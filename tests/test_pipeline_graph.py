"""Graph logic with a scripted backend, so every assertion is exact; real SQLite checkpoints and traces."""
import json
import threading

import pytest

from reasoner.api import Reasoner
from reasoner.pipeline.backends import BackendError, ScriptedBackend
from reasoner.pipeline.checks import recompute
from reasoner.pipeline.plans import arithmetic_plan, arithmetic_split, plan_text
from reasoner.pipeline.prompts import render

PLAN_CUE = render("plan", problem="")  # the planner prompt is the problem, then this
from reasoner.traces.store import TraceStore


class Oracle:
    """Plans arithmetic perfectly and answers sub-questions right, except where a test says otherwise."""

    def __init__(self, answers=None, plan=None):
        self.answers = answers or {}  # question -> list of completions, cycled per call
        self.plan = plan              # list of planner outputs, taken in order
        self.lock = threading.Lock()
        self.solve_prompts: list[str] = []

    def __call__(self, messages, n):
        content = messages[-1]["content"]
        if content.endswith(PLAN_CUE) or len(messages) > 1:
            if self.plan:
                return [self.plan.pop(0)]
            return [json.dumps(arithmetic_split(content.removesuffix(PLAN_CUE)))]
        with self.lock:
            self.solve_prompts.append(content)
        content = content.split("\n")[0]  # a reflect prompt starts with the question
        if content in self.answers:
            script = self.answers[content]
            return [script[i % len(script)] for i in range(n)]
        value = recompute(content)
        return [f"<think>{content}={value}</think><answer>{value}</answer>"] * n


@pytest.fixture
def make(tmp_path):
    def make(script, **options):
        return Reasoner(ScriptedBackend(script), checkpoints=tmp_path / "pipeline.db", traces=tmp_path / "traces.db",
                        **{"samples": 3, "retries": 2, **options})
    return make


def trace_of(solution, tmp_path):
    with TraceStore.open(tmp_path / "traces.db") as store:
        return store.get(solution.trace_id)


def test_steps_fan_out_in_dependency_order_with_results_substituted(make, tmp_path):
    oracle = Oracle()
    solution = make(oracle).solve("2*3+4*5-6")
    assert (solution.answer, solution.verified, solution.status, solution.decomposed) == ("20", True, "verified", True)
    assert [(s.id, s.question, s.answer) for s in solution.steps] == [
        (1, "2*3", "6"), (2, "4*5", "20"), (3, "6+20", "26"), (4, "26-6", "20")]
    # 2*3 and 4*5 are independent: the first wave; each later step waits for its inputs.
    assert sorted(oracle.solve_prompts[:2]) == ["2*3", "4*5"] and oracle.solve_prompts[2:] == ["6+20", "26-6"]
    trace = trace_of(solution, tmp_path)
    assert trace.source == "pipeline" and trace.id == solution.trace_id and trace.correct is True
    names = [(depth, span.name) for depth, span in trace.walk()]
    assert (0, "plan") in names and (0, "step 3") in names and (0, "answer") in names
    assert (1, "sample") in names and (2, "generate") in names and (1, "vote") in names
    call = next(c for c in trace.model_calls() if c.prompt.find('"6+20"') != -1)
    assert call.think == "6+20=26" and call.answer == "<answer>26</answer>" or call.answer.endswith("26")
    assert call.sampling["temperature"] == 0.7


def test_samples_are_one_batched_call_per_attempt(make):
    backend_script = Oracle()
    reasoner = make(backend_script, samples=5)
    reasoner.solve("7+8", decompose=False)
    assert [n for _, n in reasoner.backend.calls] == [5]


def test_invalid_plan_gets_one_repair_with_the_error_fed_back(make, tmp_path):
    good = plan_text(arithmetic_plan("3*4+5"))
    reasoner = make(Oracle(plan=['[{"id":1,"q":"3*4"},{"id":2,"q":"{7}+5"}]', good]))
    solution = reasoner.solve("3*4+5")
    assert solution.decomposed and solution.answer == "17"
    repair_messages = reasoner.backend.calls[1][0]
    assert [m["role"] for m in repair_messages] == ["user", "assistant", "user"]
    assert "step 2 uses [7]" in repair_messages[-1]["content"]
    spans = [span for _, span in trace_of(solution, tmp_path).walk()]
    assert any(s.name == "invalid plan" and "uses [7]" in s.error for s in spans)


def test_plan_still_invalid_after_repair_falls_back_to_direct(make):
    oracle = Oracle(plan=["garbage <answer>", '[{"id":1,"q":'])
    solution = make(oracle).solve("3*4+5")
    assert not solution.decomposed and solution.answer == "17" and solution.verified
    assert oracle.solve_prompts == ["3*4+5"]
    assert any("no valid plan after one repair" in e for e in solution.events)


def test_vote_takes_the_majority_over_verified_answers(make, tmp_path):
    wrong, right = "<answer>8</answer>", "<think>3+4=7</think><answer>7</answer>"
    oracle = Oracle(answers={"3+4": [wrong, right, wrong, "no tags at all", right]})
    solution = make(oracle, samples=5).solve("3+4", decompose=False)
    assert (solution.answer, solution.verified) == ("7", True)  # 8 has more votes, but fails its check
    vote = next(span for _, span in trace_of(solution, tmp_path).walk() if span.name == "vote")
    assert vote.attributes["votes"] == 2 and vote.attributes["verdicts"] == {"fail": 3, "pass": 2}


def test_reflect_retries_with_the_failure_fed_back_and_is_bounded(make, tmp_path):
    oracle = Oracle(answers={"9-2": ["<answer>11</answer>"]})
    reasoner = make(oracle, retries=2)
    solution = reasoner.solve("9-2", decompose=False)
    assert len(reasoner.backend.calls) == 3  # one attempt + two retries, then it stops
    retry = render("reflect", question="9-2", answer="11", feedback="9-2 is not 11")
    assert reasoner.backend.calls[1][0][-1]["content"] == retry
    assert (solution.answer, solution.verified, solution.status) == ("11", False, "rejected")
    assert solution.steps[0].attempts == 3
    reflects = [span for _, span in trace_of(solution, tmp_path).walk() if span.name == "reflect"]
    assert [r.attributes["attempt"] for r in reflects] == [1, 2]


def test_reflect_recovers_when_a_retry_succeeds(make):
    state = {"calls": 0}

    def script(messages, n):
        state["calls"] += 1
        return ["<answer>5</answer>" if state["calls"] == 1 else "<answer>7</answer>"] * n
    solution = make(script).solve("9-2", decompose=False)
    assert (solution.answer, solution.verified, solution.steps[0].attempts) == ("7", True, 2)


def test_garbage_and_unclosed_tags_end_without_an_answer_not_a_traceback(make, tmp_path):
    oracle = Oracle(answers={"1+1": ["\x00\ufffd<think>never closes", "<answer>", "}}}{{{"]})
    solution = make(oracle, retries=1).solve("1+1", decompose=False)
    assert solution.answer is None and solution.status == "failed" and not solution.verified
    assert "no <answer> found" in solution.error
    assert trace_of(solution, tmp_path).metadata["status"] == "failed"


def test_backend_errors_are_recorded_and_end_gracefully(make, tmp_path):
    def down(messages, n):
        raise BackendError("http://127.0.0.1:1/v1/chat/completions: HTTP 500 Internal Server Error: boom")
    reasoner = make(down, retries=1)
    solution = reasoner.solve("2+2")
    assert solution.answer is None and solution.status == "failed" and "HTTP 500" in solution.error
    assert any("planner unavailable" in e for e in solution.events)
    errors = [span.error for _, span in trace_of(solution, tmp_path).walk() if span.error]
    assert sum("HTTP 500" in e for e in errors) >= 3  # planner, first attempt, the retry
    assert len(reasoner.backend.calls) == 3


def test_unverifiable_problems_are_voted_without_retries(make):
    oracle = Oracle(answers={"What is the capital of France?": ["<answer>Paris</answer>", "<answer>Lyon</answer>",
                                                              "<answer>Paris</answer>"]})
    reasoner = make(oracle, decompose=False)
    solution = reasoner.solve("What is the capital of France?")
    assert (solution.answer, solution.status, solution.verified) == ("Paris", "unverified", False)
    assert len(reasoner.backend.calls) == 1


def test_reference_answer_is_checked_when_given(make):
    oracle = Oracle(answers={"How many legs do 3 cats have?": ["<answer>12</answer>"]})
    solution = make(oracle, decompose=False).solve("How many legs do 3 cats have?", reference="12")
    assert solution.verified and solution.status == "verified"


def test_wrong_plan_is_caught_by_the_whole_problem_check_then_solved_directly(make):
    wrong = '[{"id":1,"q":"3*4"},{"id":2,"q":"{1}-5"}]'  # the planner flipped + to -
    solution = make(Oracle(plan=[wrong])).solve("3*4+5")
    assert (solution.answer, solution.status, solution.verified) == ("17", "verified", True)
    assert [s.question for s in solution.steps] == ["3*4", "12-5", "3*4+5"]
    assert any("the plan's answer 7 failed the whole-problem check" in e for e in solution.events)
    # The direct answer is wrong too: the best remaining guess, marked rejected; no second fallback.
    stubborn = Oracle(plan=[wrong], answers={"3*4+5": ["<answer>9</answer>"]})
    solution = make(stubborn).solve("3*4+5")
    assert (solution.answer, solution.status, solution.verified) == ("9", "rejected", False)
    assert len(solution.steps) == 3


def test_time_budget_stops_the_run(make):
    solution = make(Oracle()).solve("2*3+4", time_budget=0.001)
    assert solution.status == "timeout" and solution.answer is None
    assert any("time budget" in e for e in solution.events)


def test_interrupted_run_resumes_from_its_checkpoint(make, tmp_path):
    oracle, calls = Oracle(), []

    def flaky(messages, n):
        calls.append(messages[-1]["content"])
        if messages[-1]["content"] == "6+20" and calls.count("6+20") == 1:
            raise KeyboardInterrupt  # Ctrl-C in the middle of step 3
        return oracle(messages, n)
    reasoner = make(flaky)
    with pytest.raises(KeyboardInterrupt):
        reasoner.solve("2*3+4*5-6", run_id="run-1")
    done_before = list(calls)
    with TraceStore.open(tmp_path / "traces.db") as store:
        assert store.count() == 0  # no half trace
    solution = reasoner.resume("run-1")
    assert solution.answer == "20" and solution.verified and solution.trace_id == "run-1"
    assert calls[len(done_before):] == ["6+20", "26-6"]  # plan and steps 1-2 were not asked again
    history = reasoner.history("run-1")
    assert history[0]["next"] == ["__start__"] and history[-1]["next"] == []
    assert "run-1" in reasoner.runs()
    assert reasoner.resume("run-1").answer == "20"  # a finished run is returned, not recomputed
    with TraceStore.open(tmp_path / "traces.db") as store:
        assert store.count() == 1


def test_resuming_an_unknown_run_is_a_clear_error(make):
    from reasoner.errors import ReasonerError

    with pytest.raises(ReasonerError, match="no run 'nope'"):
        make(Oracle()).resume("nope")


def test_progress_reports_nodes_and_sub_problems(make):
    events = []
    make(Oracle()).solve("2*3+1", progress=events.append)
    nodes = [(e["node"], e.get("question")) for e in events]
    assert nodes[0] == ("plan", None)
    assert ("sample", "2*3") in nodes and ("solved", "6+1") in nodes and nodes[-1] == ("answer", None)
