"""Plan format: the reference arithmetic plans, their validation and the substitution of results."""
import json

import jsonschema
import pytest

from reasoner.pipeline.checks import recompute
from reasoner.pipeline.plans import (PlanError, arithmetic_plan, arithmetic_plan_examples, parse_plan, plan_text,
                                     ready_steps, substitute)
from reasoner.pipeline.prompts import PROMPTS_DIR, plan_schema, render
from reasoner.tasks.arithmetic import ArithmeticTask


def run_plan(steps) -> str:
    """Execute a plan with exact arithmetic, the way the graph would with a perfect solver."""
    results = {}
    for step in parse_plan(plan_text(steps)):
        results[str(step.id)] = recompute(substitute(step.q, results))
    return results[str(step.id)]


def test_reference_plans_compute_the_task_answers_at_every_level():
    for level in ArithmeticTask.levels:
        for problem in ArithmeticTask().problems("train", 20, level=level, seed=1):
            steps = arithmetic_plan(problem.question)
            assert run_plan(steps) == problem.answer, problem.question
            assert len(steps) == problem.meta["steps"]  # one step per operator


def test_plan_reads_left_to_right_with_products_first():
    assert plan_text(arithmetic_plan("37+48*3-25")) == '[{"id":1,"q":"48*3"},{"id":2,"q":"37+{1}"},{"id":3,"q":"{2}-25"}]'
    steps = [s.to_dict() for s in parse_plan(plan_text(arithmetic_plan("1-2*3*4+5*6")))]
    assert [(s["q"], s["deps"]) for s in steps] == [
        ("2*3", []), ("{1}*4", [1]), ("1-{2}", [2]), ("5*6", []), ("{3}+{4}", [3, 4])]


def test_sft_examples_are_the_planner_prompt_and_a_schema_valid_target():
    problems = ArithmeticTask().problems("train", 5, level=5)
    examples = arithmetic_plan_examples(problems)
    assert len(examples) == 5
    for problem, (messages, target) in zip(problems, examples):
        assert messages == [{"role": "user", "content": render("plan", problem=problem.question)}]
        assert problem.question in messages[0]["content"]
        jsonschema.validate(json.loads(target), plan_schema())
        assert " " not in target  # compact: the planner pays per character
    assert arithmetic_plan_examples(["2+3"])[0][1] == '[{"id":1,"q":"2+3"}]'


def test_prompt_files_exist_for_every_role():
    for role in ("plan", "solve", "repair", "reflect"):
        assert (PROMPTS_DIR / f"{role}.txt").read_text().strip()
    assert render("solve", question="{1}+2") == "{1}+2"  # braces in problems are left alone


@pytest.mark.parametrize("text, message", [
    ("no json here", "no JSON list"),
    ("[{\"id\":1,\"q\":\"2+3\"", "no JSON list"),
    ("[{\"id\":1,\"q\":\"2+3\"},]", "not valid JSON"),
    ("[]", "should be non-empty"),
    ("[{\"id\":1}]", "'q' is a required property"),
    ("[{\"id\":1,\"q\":\"1\",\"x\":2}]", "Additional properties"),
    ("[{\"id\":1,\"q\":\"{2}+1\"},{\"id\":2,\"q\":\"3\"}]", "step 1 uses [2]"),
    ("[{\"id\":1,\"q\":\"1+1\"},{\"id\":1,\"q\":\"2\"}]", "used twice"),
    ("[{\"id\":1,\"q\":\"1+1\",\"deps\":[1]}]", "step 1 uses [1]"),
])
def test_invalid_plans_say_what_is_wrong(text, message):
    with pytest.raises(PlanError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_plan(text)


def test_plan_found_inside_answer_tags_and_prose():
    steps = parse_plan('<think>split it</think><answer>Plan: [{"id":1,"q":"2*3"},{"id":2,"q":"{1}+1"}]</answer>')
    assert [s.q for s in steps] == ["2*3", "{1}+1"]


def test_ready_steps_form_waves_in_dependency_order():
    steps = parse_plan(plan_text(arithmetic_plan("2*3+4*5-6")))
    assert [s.id for s in ready_steps(steps, [])] == [1, 2]
    assert [s.id for s in ready_steps(steps, ["1", "2"])] == [3]
    assert substitute("{3}-6", {"3": "-26"}) == "-26-6"


def test_recompute_handles_arithmetic_only():
    assert recompute("144+-37") == "107"
    assert recompute("7/2") == "7/2"
    assert recompute("2**3") is None and recompute("__import__('os')") is None and recompute("x+1") is None
    assert recompute("9" * 70 + "*" + "9" * 70) is None  # past the size bound
