"""Problems -> TRL datasets. Prompts are rendered by reasoner.prompts.render, through the tokenizer's chat
template, once, here, so SFT, GRPO, evaluation and the pipeline all see exactly the same prompt text.

`style` is a recipe's task.prompt_style: `plain` (the compact prompts, for character-level models) or `r1`
(the same after DeepSeek-R1's system prompt).
"""
from __future__ import annotations

from datasets import Dataset

from reasoner.prompts import read, recipe_style, render
from reasoner.tasks.arithmetic import arithmetic_plan_examples, arithmetic_step_problems
from reasoner.tasks.base import Problem, split_of
from reasoner.tasks.word import plan_text

PROMPT_STYLES = ("plain", "r1")


def r1_system_prompt() -> str:
    return read("r1_system.txt").strip()


def render_prompt(question: str, tokenizer, style: str = "plain") -> str:
    """The solver's prompt: `plain`, the question alone; `r1`, after DeepSeek-R1's system prompt."""
    return _chat(render("solve", recipe_style(style), question=question), tokenizer)


def _plan_prompt(question: str, tokenizer, style: str) -> str:
    return _chat(render("plan", recipe_style(style), problem=question), tokenizer)


def _chat(messages: list[dict], tokenizer) -> str:
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
    plans = [_row(_plan_prompt(question, tokenizer, style), target, tokenizer)
             for question, target in arithmetic_plan_examples(problems)]
    steps = [_row(render_prompt(step.question, tokenizer, style), step.target(), tokenizer)
             for step in arithmetic_step_problems(problems)]
    return plans + steps


def word_plan_rows(problems: list[Problem], tokenizer, style: str = "plain") -> list[dict]:
    """SFT rows for the pipeline's planner on word problems: the question in the planner prompt, and the plan
    the worked trace follows (`["7+5","{}-4"]`), which the pipeline's calculator then computes."""
    return [_row(_plan_prompt(p.question, tokenizer, style), plan_text(p), tokenizer) for p in problems]


def _row(prompt: str, target: str, tokenizer) -> dict:
    return {"prompt": prompt, "completion": target + tokenizer.eos_token}


def grpo_dataset(problems: list[Problem], tokenizer, style: str = "plain") -> Dataset:
    """Prompt plus the columns the rewards read (answer, tests, entry_point, task)."""
    rows = [{"prompt": render_prompt(p.question, tokenizer, style), "answer": p.answer, "task": p.task,
             "problem_id": p.id, "tests": p.tests, "entry_point": p.entry_point or ""} for p in problems]
    return Dataset.from_list(rows)
