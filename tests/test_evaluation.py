"""reasoner.evaluation: the grader kept apart from the solver, baselines at the same budget, and the
question-blind control, with scripted models whose every figure is known in advance."""
from __future__ import annotations

import json
import re

import pytest

from reasoner.evaluation.compare import PipelineSettings, compare_task, solve_through_pipeline
from reasoner.evaluation.controls import BlindBackend
from reasoner.evaluation.grading import grade_many
from reasoner.evaluation.summary import write_summary
from reasoner.prompts import render
from reasoner.serving.backends import ScriptedBackend
from reasoner.tasks import get_task
from reasoner.tasks.word import plan_text
from reasoner.verify import check_code

PLAN_CUE = render("plan", "compact", problem="")[0]["content"]


def careless_planner(problems):
    """Reads word problems like a good planner (one plan in four is off by one step) but does arithmetic
    badly: its direct answers are the right number plus one, whatever the sample."""
    by_question = {p.question: p for p in problems}
    counter = {"plans": 0}

    def model(messages, n):
        content = messages[-1]["content"]
        if content.endswith(PLAN_CUE):
            problem = by_question[content.removesuffix(PLAN_CUE)]
            texts = []
            for _ in range(n):
                counter["plans"] += 1
                steps = problem.meta["plan"] if counter["plans"] % 4 else problem.meta["plan"][:-1]
                texts.append(json.dumps(steps))
            return texts
        problem = by_question[content]
        return [f"<think>{problem.trace}</think><answer>{int(problem.answer) + 1}</answer>"] * n
    return model


def test_compare_task_reports_every_figure_at_the_same_sample_budget(tmp_path):
    problems = get_task("word").problems("validation", 12, level=3)
    settings = PipelineSettings(samples=4, retries=1, temperature=1.0, max_tokens=64)
    result = compare_task(ScriptedBackend(careless_planner(problems)), problems, settings, workdir=tmp_path)
    assert result["n"] == 12 and result["settings"]["samples"] == 4
    # Three plans of four agree each round: one round, four samples, and the calculator gets the arithmetic right.
    assert (result["pipeline_accuracy"], result["mean_samples"], result["maj_samples"]) == (1.0, 4.0, 4)
    assert result["direct_accuracy"] == result["sampled_pass_at_1"] == result["maj_accuracy"] == 0.0
    assert result["blind_direct_accuracy"] <= 0.1 and result["blind_pipeline_accuracy"] <= 0.1
    assert set(result["ci95"]) >= {"pipeline_accuracy", "maj_accuracy", "direct_accuracy"}


@pytest.mark.parametrize("task, level, n, budget", [
    ("word", 3, 200, PipelineSettings(samples=4, retries=2, max_tokens=32)),
    ("countdown", 1, 60, PipelineSettings(samples=4, retries=2, max_tokens=32)),
    ("code", 1, 12, PipelineSettings(samples=2, retries=1, max_tokens=32)),
])
def test_the_question_blind_control_gains_nothing_through_the_pipeline(tmp_path, task, level, n, budget):
    """A backend that never reads the prompt, through the same pipeline and its checks: if the pipeline read
    the answer off the question (as the old recompute-the-question check did) this would climb."""
    problems = get_task(task).problems("heldout", n, level=level)
    direct = grade_many(problems, [BlindBackend(task if task != "word" else "math").generate([], 1, None)[0].text
                                   for _ in problems])
    kind = problems[0].kind
    through, drawn = solve_through_pipeline(BlindBackend(kind, seed=1), problems, budget, tmp_path / "p.db",
                                            tmp_path / "t.db", seed=0, description=None)
    assert sum(drawn) >= len(problems) * budget.samples  # it really sampled (and retried where a check failed)
    assert sum(through) / n <= sum(direct) / n + 0.02


def test_blind_backend_answers_in_the_task_format_without_reading(tmp_path):
    for kind, pattern in (("countdown", r"<answer>[\d+\-*/]+</answer>"), ("code", r"def f\(\*args\)"),
                          ("math", r"^\[.*\]$|<answer>-?\d+</answer>")):
        texts = [g.text for g in BlindBackend(kind).generate([{"role": "user", "content": "ignored"}], 20, None)]
        assert all(re.search(pattern, t) for t in texts), texts
        assert texts == [g.text for g in BlindBackend(kind).generate([], 20, None)]  # seeded, prompt unread


def test_the_grader_reads_hidden_tests_the_solver_never_gets():
    problem = get_task("code").problems("heldout", 1, level=2)[0]
    question = problem.for_solver()
    assert set(question.examples).isdisjoint(problem.tests) and not hasattr(question, "answer")
    # A program that fits the shown examples but not the rule passes them and fails the hidden tests.
    calls = [e.removeprefix("assert ").split(" == ") for e in problem.examples]
    table = ", ".join(f"{call.removeprefix('f(').removesuffix(')')!r}: {value}" for call, value in calls)
    fitted = f"<answer>def f(xs):\n    return {{{table}}}.get(repr(xs), 0)</answer>"
    assert check_code(fitted, list(problem.examples), "f") == 1.0
    assert grade_many([problem], [fitted]) == [False]
    assert grade_many([problem], [f"<answer>{problem.answer}</answer>"]) == [True]


def test_summary_is_merged_not_overwritten(tmp_path):
    path = tmp_path / "summary.json"
    write_summary({"a": 1, "b": 2}, path)
    write_summary({"b": 3}, path)
    assert json.loads(path.read_text()) == {"a": 1, "b": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no staging file left behind
