"""Problems -> TRL datasets. Prompts are rendered with the tokenizer's chat template once, here, so
SFT, GRPO, evaluation and the pipeline all see exactly the same prompt text."""
from __future__ import annotations

from pathlib import Path

from datasets import Dataset

from reasoner.config import PACKAGE_ROOT
from reasoner.tasks.base import Problem, split_of

PROMPT_STYLES = ("plain", "r1")


def r1_system_prompt() -> str:
    return (PACKAGE_ROOT / "prompts" / "r1_system.txt").read_text().strip()


def render_prompt(question: str, tokenizer, style: str = "plain") -> str:
    """`plain`: the question alone (compact for character-level models); `r1`: DeepSeek-R1's template."""
    messages = [{"role": "user", "content": question}]
    if style == "r1":
        messages.insert(0, {"role": "system", "content": r1_system_prompt()})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def sft_dataset(problems: list[Problem], tokenizer, style: str = "plain", extra_rows: list[dict] = (),
                direct_fraction: float = 0.0) -> Dataset:
    """Prompt/completion rows. A `direct_fraction` of problems (chosen by id, so reproducibly) answer with an
    empty `<think></think>`: cold-start data, like real data, mixes short and worked answers, and GRPO
    then learns from reward alone which of the two pays on harder problems."""
    rows = [_row(render_prompt(p.question, tokenizer, style), _cold_start_target(p, direct_fraction), tokenizer)
            for p in problems]
    return Dataset.from_list(rows + list(extra_rows)).shuffle(seed=0)


def _cold_start_target(problem: Problem, direct_fraction: float) -> str:
    if direct_fraction and split_of(problem.id, heldout_percent=round(100 * direct_fraction)) == "heldout":
        return f"<think></think><answer>{problem.answer}</answer>"
    return problem.target()


def plan_rows(problems: list[Problem], tokenizer, style: str = "plain") -> list[dict]:
    """SFT rows for the pipeline's two roles on these problems: the planner's JSON sub-problems, and the
    solver's worked answer to each distinct planned step, earlier results written in."""
    from reasoner.pipeline.plans import arithmetic_plan_examples, arithmetic_step_problems

    plans = [_row(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), target, tokenizer)
             for messages, target in arithmetic_plan_examples(problems)]
    steps = [_row(render_prompt(step.question, tokenizer, style), step.target(), tokenizer)
             for step in arithmetic_step_problems(problems)]
    return plans + steps


def word_plan_rows(problems: list[Problem], tokenizer) -> list[dict]:
    """SFT rows for the pipeline's planner on word problems: the question in the planner prompt, and the plan
    the worked trace follows (`["7+5","{}-4"]`), which the pipeline's calculator then computes."""
    from reasoner.pipeline.plans import plan_messages
    from reasoner.tasks.word import plan_text

    return [_row(tokenizer.apply_chat_template(plan_messages(p.question), add_generation_prompt=True, tokenize=False),
                 plan_text(p), tokenizer) for p in problems]


def _row(prompt: str, target: str, tokenizer) -> dict:
    return {"prompt": prompt, "completion": target + tokenizer.eos_token}


def grpo_dataset(problems: list[Problem], tokenizer, style: str = "plain") -> Dataset:
    """Prompt plus the columns the rewards read (answer, tests, entry_point, task)."""
    rows = [{"prompt": render_prompt(p.question, tokenizer, style), "answer": p.answer, "task": p.task,
             "problem_id": p.id, "tests": p.tests, "entry_point": p.entry_point or ""} for p in problems]
    return Dataset.from_list(rows)
