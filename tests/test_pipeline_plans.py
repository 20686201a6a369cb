"""Plan format: the reference arithmetic plans, their validation and the substitution of results."""
import json
import re
import subprocess
import sys

import jsonschema
import pytest

from reasoner.pipeline.plans import PlanError, parse_plan, ready_steps, substitute
from reasoner.prompts import plan_schema, render
from reasoner.rl.data import plan_rows, word_plan_rows
from reasoner.tasks.arithmetic import (ArithmeticTask, arithmetic_plan, arithmetic_plan_examples, arithmetic_split,
                                       arithmetic_step_problems, plan_text)
from reasoner.tasks.word import WordTask, plan_text as word_plan
from reasoner.tokenizer import builtin_tokenizer
from reasoner.verify import calculate as recompute


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
    assert plan_text(arithmetic_plan("37+48*3-25")) == '["48*3","37+{}","{}-25"]'
    steps = [s.to_dict() for s in parse_plan(plan_text(arithmetic_plan("1-2*3*4+5*6")))]
    assert [(s["q"], s["deps"]) for s in steps] == [
        ("2*3", []), ("{1}*4", [1]), ("1-{2}", [2]), ("5*6", []), ("{3}+{4}", [3, 4])]


def test_sft_examples_are_every_planner_call_with_a_schema_valid_target():
    examples = arithmetic_plan_examples(["3+4-2+5", "1+4-2+5"])
    assert examples == [
        ("3+4-2+5", '["3+4","{}-2+5"]'), ("{}-2+5", '["{}-2","{}+5"]'),
        ("{}+5", '["{}+5"]'),  # one operation: nothing left to split
        ("1+4-2+5", '["1+4","{}-2+5"]')]  # its tail is already there
    for question, target in arithmetic_plan_examples(ArithmeticTask().problems("train", 5, level=8)):
        jsonschema.validate(json.loads(target), plan_schema())
        assert " " not in target  # compact: the planner pays per character


def test_compact_and_spelled_out_plans_mean_the_same():
    compact = parse_plan('["2*3","{}+1","{1}-{}"]')
    spelled = parse_plan('[{"id":1,"q":"2*3"},{"id":2,"q":"{1}+1"},{"id":3,"q":"{1}-{2}","deps":[1]}]')
    assert compact == spelled
    assert [s.deps for s in compact] == [(), (1,), (1, 2)]
    # {} is the previous step in list order, whatever the ids
    assert [s.q for s in parse_plan('[{"id":7,"q":"1+1"},{"id":3,"q":"{}*2"}]')] == ["1+1", "{7}*2"]


def test_plan_length_grows_by_repetition_not_by_new_step_numbers():
    """A plan for 8 terms is a 6-term plan's pattern repeated: nothing a planner taught on 6 terms has not seen."""
    def shape(expression):
        return re.sub(r"\d", "d", plan_text(arithmetic_plan(expression)))

    assert shape("1+2-3+4-5+6-7+8") == shape("1+2-3+4-5+6")[:-1] + ',"{}-d","{}+d"]'


def test_step_problems_are_the_planned_steps_with_results_written_in():
    steps = arithmetic_step_problems(["3-9-7+5", "3-9+1"])
    assert [(s.question, s.answer) for s in steps] == [("3-9", "-6"), ("-6-7", "-13"), ("-13+5", "-8"), ("-6+1", "-5")]
    assert steps[1].target() == "<think>-6-7=-13</think><answer>-13</answer>"

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
    ('["{}+1","2"]', "uses {}, the previous step's result, but it is the first step"),
    ('["1+1",3]', "3 is not valid under any of the given schemas"),
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


def test_calculator_handles_arithmetic_only():
    assert recompute("144+-37") == "107"
    assert recompute("7/2") == "7/2"
    assert recompute("2**3") is None and recompute("__import__('os')") is None and recompute("x+1") is None
    assert recompute("9" * 70 + "*" + "9" * 70) is None  # past the size bound


def test_sft_rows_teach_both_pipeline_roles():
    rows = plan_rows(["3-9-7", "3-9+1"], builtin_tokenizer())
    assert [(r["prompt"], r["completion"]) for r in rows] == [
        ("<|user|>3-9-7\nplan:<|assistant|>", '["3-9","{}-7"]<eos>'),
        ("<|user|>{}-7\nplan:<|assistant|>", '["{}-7"]<eos>'),
        ("<|user|>3-9+1\nplan:<|assistant|>", '["3-9","{}+1"]<eos>'),
        ("<|user|>{}+1\nplan:<|assistant|>", '["{}+1"]<eos>'),
        ("<|user|>3-9<|assistant|>", "<think>3-9=-6</think><answer>-6</answer><eos>"),
        ("<|user|>-6-7<|assistant|>", "<think>-6-7=-13</think><answer>-13</answer><eos>"),
        ("<|user|>-6+1<|assistant|>", "<think>-6+1=-5</think><answer>-5</answer><eos>")]


def test_word_plan_rows_teach_the_planner_the_trace_steps():
    problems = WordTask().problems("train", 3, level=3)
    rows = word_plan_rows(problems, builtin_tokenizer())
    for problem, row in zip(problems, rows):
        assert row["prompt"] == f"<|user|>{render('plan', 'compact', problem=problem.question)[0]['content']}<|assistant|>"
        assert row["completion"] == word_plan(problem) + "<eos>"
        jsonschema.validate(json.loads(word_plan(problem)), plan_schema())


def test_training_data_and_tasks_load_without_the_pipeline():
    """Data flows one way: tasks and training data (reasoner.rl.data) build plans and prompts without
    importing the solving graph, which is built on top of them."""
    probe = ("import sys, reasoner.rl.data, reasoner.tasks.arithmetic, reasoner.prompts; "
             "print(sorted(m for m in sys.modules if m.startswith(('reasoner.pipeline', 'reasoner.api', 'langgraph'))))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
