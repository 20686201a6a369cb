"""reasoner.prompts: one render(role, style) for training and the pipeline, the compact prompts exactly as the
demo's models were trained on them, a chat style whose instructions a chat model can follow (its plan example
is a valid plan, its answer formats are ones the checks read), and the style chosen per backend."""
import json
import re

import jsonschema
import pytest

from reasoner import api
from reasoner.api import Reasoner
from reasoner.cli import main
from reasoner.errors import ReasonerError
from reasoner.model import save_checkpoint
from reasoner.pipeline.plans import parse_plan, substitute
from reasoner.prompts import ROLES, STYLES, plan_schema, read, render
from reasoner.serving.backends import ScriptedBackend
from reasoner.traces.store import TraceStore
from reasoner.verify import calculate, extract_answer, extract_code

FIELDS = {"problem": "Ana has 7 pens and buys 5. How many?", "question": "{1}+2", "answer": "11",
          "feedback": "7+5 = 12, not 11", "error": "step 1 uses [2]"}
R1_SYSTEM = read("r1_system.txt").strip()
COUNTDOWN = "Using the numbers [2, 3, 7], make 23. Use + - * / and each number exactly once."


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("role", ROLES)
def test_every_role_renders_in_every_style(role, style):
    messages = render(role, style, **FIELDS)
    assert [m["role"] for m in messages] == (["system", "user"] if style == "r1" else ["user"])
    content = messages[-1]["content"]
    assert not re.search(r"\{[a-z_]+\}", content.replace(FIELDS["question"], ""))  # every field filled
    assert content == render(role, "compact", **FIELDS)[0]["content"] or style == "chat"
    if style == "r1":
        assert messages[0]["content"] == R1_SYSTEM


def test_compact_prompts_render_exactly_as_the_demo_models_were_trained_on():
    """The templates of before the styles, byte for byte: a changed character would change what the demo's
    character-level checkpoints are asked, and so its figures."""
    assert render("plan", "compact", problem="3+4-2+5") == [{"role": "user", "content": "3+4-2+5\nplan:"}]
    assert render("solve", "compact", question="{1}+2") == [{"role": "user", "content": "{1}+2"}]
    assert render("reflect", "compact", question="3*7-2", answer="19", feedback="19, not 23") == [
        {"role": "user", "content": "3*7-2\nNot 19: 19, not 23"}]
    assert render("repair", "compact", error="no JSON list of steps found") == [
        {"role": "user", "content": "That plan is invalid: no JSON list of steps found\n"
                                    "Reply with the corrected JSON plan only."}]


def test_the_chat_planner_is_shown_a_valid_plan_that_computes_its_problem():
    content = render("plan", "chat", problem=FIELDS["problem"])[0]["content"]
    problem, example = re.search(r"the plan for (\S+) is\n(.+)\n", content).groups()
    plan = json.loads(example)
    jsonschema.validate(plan, plan_schema())
    assert plan == plan_schema()["examples"][0]
    values: dict[str, str] = {}
    for step in parse_plan(example):
        values[str(step.id)] = calculate(substitute(step.q, values))
    assert values[str(step.id)] == calculate(problem) == "156"
    assert json.loads(render("repair", "chat", error="x")[0]["content"].splitlines()[-1]) == plan


def test_answers_written_as_the_chat_solver_is_told_are_read_by_the_checks():
    content = render("solve", "chat", question="What is 6*7?")[0]["content"]
    assert "\\boxed{}" in content and "<answer>" in content and "```python" in content
    assert extract_answer("<think>6*7 is 42</think>So the answer is \\boxed{42}.") == "42"
    assert extract_answer("<think>6*7 is 42</think><answer>42</answer>") == "42"
    program = "<answer>\n```python\ndef f(x):\n    return x + 1\n```\n</answer>"
    assert extract_code(program) == "def f(x):\n    return x + 1"


def test_unknown_roles_styles_and_missing_fields_are_clear_errors():
    with pytest.raises(ReasonerError, match="unknown prompt style 'fancy'"):
        render("solve", "fancy", question="1+1")
    with pytest.raises(ReasonerError, match="unknown prompt role"):
        render("judge", "compact", question="1+1")
    with pytest.raises(KeyError, match=r"compact_reflect.txt needs \['answer', 'feedback'\]"):
        render("reflect", "compact", question="1+1")
    with pytest.raises(ReasonerError, match="prompt_style='fancy'"):
        Reasoner(ScriptedBackend([]), prompt_style="fancy")


def test_a_chat_model_plans_and_answers_through_the_pipeline_as_the_chat_prompts_ask(tmp_path):
    """R1-like replies (reasoning, then the plan or a boxed answer) to the chat prompts: the plan is computed and
    the boxed countdown answer certified."""
    def chat_model(messages, n):
        content = messages[-1]["content"]
        if "JSON list" in content:
            return ['<think>multiply first, then add and subtract</think>["48*3","37+{}","{}-25"]'] * n
        return ["<think>3*7 is 21, and 2 more is 23</think>The answer is \\boxed{3*7+2}."] * n

    backend = ScriptedBackend(chat_model)
    with Reasoner(backend, checkpoints=tmp_path / "p.db", traces=tmp_path / "t.db", prompt_style="chat",
                  samples=2) as reasoner:
        planned = reasoner.solve("A box holds 48 pens; 3 boxes and 37 loose pens, minus 25 sold. How many pens?")
        certified = reasoner.solve(COUNTDOWN, task="countdown")
    assert (planned.answer, planned.decomposed, [s.question for s in planned.steps]) == (
        "156", True, ["48*3", "37+144", "181-25"])
    assert (certified.answer, certified.status) == ("3*7+2", "verified")
    assert backend.calls[-1][0] == render("solve", "chat", question=COUNTDOWN)


def test_the_style_follows_the_backend_and_can_be_overridden(tmp_path):
    assert Reasoner.from_openai("http://127.0.0.1:9/v1", "r1").defaults.prompt_style == "chat"
    assert Reasoner.from_openai("http://127.0.0.1:9/v1", "tiny", prompt_style="compact").defaults.prompt_style == \
        "compact"
    assert Reasoner(ScriptedBackend([])).defaults.prompt_style == "compact"
    backend = ScriptedBackend(lambda messages, n: ["<answer>2</answer>"] * n)
    with Reasoner(backend, checkpoints=tmp_path / "p.db", traces=tmp_path / "t.db") as reasoner:
        reasoner.solve("1+1", decompose=False, samples=1, prompt_style="r1")
    assert backend.calls[0][0] == render("solve", "r1", question="1+1")


def test_a_checkpoint_is_asked_in_its_recipe_prompt_style(tiny, tmp_path):
    """The r1 style of a training recipe reaches the pipeline: saved with the checkpoint, read back by
    from_pretrained, and rendered through the checkpoint's own chat template, system prompt first."""
    model, tokenizer = tiny
    r1 = save_checkpoint(model, tokenizer, tmp_path / "r1", {"recipe": {"task": {"prompt_style": "r1"}}})
    plain = save_checkpoint(model, tokenizer, tmp_path / "plain", {"recipe": {"task": {"prompt_style": "plain"}}})
    assert Reasoner.from_pretrained(plain).defaults.prompt_style == "compact"
    with Reasoner.from_pretrained(r1, checkpoints=tmp_path / "p.db", traces=tmp_path / "t.db", samples=1,
                                  retries=0, max_tokens=4, seed=0) as reasoner:
        assert reasoner.defaults.prompt_style == "r1"
        solution = reasoner.solve("2+2")
    with TraceStore.open(tmp_path / "t.db") as store:
        prompts = [call.prompt for call in store.get(solution.trace_id).model_calls()]
    expected = tokenizer.apply_chat_template(render("plan", "r1", problem="2+2"), add_generation_prompt=True,
                                             tokenize=False)
    assert prompts[0] == expected and prompts[0].index(R1_SYSTEM) < prompts[0].index("2+2\nplan:")


@pytest.mark.parametrize("flag, style", [([], "chat"), (["--prompt-style", "compact"], "compact")])
def test_reasoner_solve_asks_a_server_in_the_chat_style_unless_told_otherwise(monkeypatch, tmp_path, capsys, flag,
                                                                               style):
    """`reasoner solve --base-url` (our own compact model behind `reasoner serve`, say) takes --prompt-style."""
    backend = ScriptedBackend(lambda messages, n: ["<answer>4</answer>"] * n)
    monkeypatch.setattr(api, "OpenAIBackend", lambda *args: backend)
    code = main(["solve", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--no-decompose", "--samples", "1",
                 "--checkpoints", str(tmp_path / "p.db"), "--traces", str(tmp_path / "t.db"), *flag, "2+2"])
    assert code == 0 and capsys.readouterr().out.strip() == "4  (unverified)"
    assert backend.calls[0][0] == render("solve", style, question="2+2")
