"""Multi-step word problems (GSM8K-like), generated: people, things, buying, giving, sharing, groups, prices.

    Ana has 7 shells. She finds 5. She gives 4 to Ben. She buys 3 bags of 2. How many now?

Turning the text into arithmetic is the solver's job: the question is prose, so no tool can evaluate it.
The worked trace writes one expression per sentence, each on the previous result (`7+5=12`, `12-4=8`,
`8+3*2=14`), and the plan for the same problem is those expressions with `{}` for the previous result
(`["7+5","{}-4","{}+3*2"]`), the pipeline's plan format: a calculator may compute the steps the model
wrote, never the question. Levels are step counts, 2 to 8. Every value stays a whole number from 0 to 999.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

from reasoner.tasks.base import GeneratedTask, Problem

LEVELS = {steps: steps for steps in range(2, 9)}  # level n: n steps
PEOPLE = [("Ana", "She"), ("Ben", "He"), ("Cal", "He"), ("Dia", "She"), ("Eli", "He"), ("Fay", "She"),
          ("Gus", "He"), ("Ivy", "She"), ("Jon", "He"), ("Kim", "She"), ("Leo", "He"), ("Mia", "She")]
THINGS = ["apples", "pens", "cards", "books", "coins", "eggs", "cups", "toys", "stamps", "shells"]
MAX_VALUE = 999


@dataclass(frozen=True)
class Step:
    sentence: str
    expression: str   # on the previous result, written "{}"
    value: int


def events(rng: random.Random, total: int, pronoun: str, other: str) -> list[Step]:
    """The sentences that can follow when the count is `total`, each with its expression and result."""
    b, c = rng.randint(2, 9), rng.randint(2, 9)
    options = [
        Step(f"{pronoun} buys {b}.", f"{{}}+{b}", total + b),
        Step(f"{pronoun} finds {b}.", f"{{}}+{b}", total + b),
        Step(f"{other} gives {'her' if pronoun == 'She' else 'him'} {b}.", f"{{}}+{b}", total + b),
        Step(f"{pronoun} buys {b} bags of {c}.", f"{{}}+{b}*{c}", total + b * c),
        Step(f"{pronoun} doubles them.", "{}*2", total * 2),
        Step(f"{pronoun} triples them.", "{}*3", total * 3),
    ]
    if total > b:
        options += [Step(f"{pronoun} gives {b} to {other}.", f"{{}}-{b}", total - b),
                    Step(f"{pronoun} sells {b}.", f"{{}}-{b}", total - b),
                    Step(f"{pronoun} loses {b}.", f"{{}}-{b}", total - b)]
    if total > b * c:
        options.append(Step(f"{pronoun} gives {b} kids {c} each.", f"{{}}-{b}*{c}", total - b * c))
    for k in (2, 3, 4, 5):
        if total % k == 0 and total >= 2 * k:
            options.append(Step(f"{pronoun} keeps 1 of {k} equal parts.",
                                f"{{}}/{k}", total // k))
    return [step for step in options if 0 <= step.value <= MAX_VALUE]


def make_word_problem(rng: random.Random, level: int) -> Problem:
    (name, pronoun), things = rng.choice(PEOPLE), rng.choice(THINGS)
    other = rng.choice([p for p, _ in PEOPLE if p != name])
    start = rng.randint(2, 20)
    sentences, expressions, lines, total = [f"{name} has {start} {things}."], [], [], start
    for index in range(LEVELS[level] - 1):
        step = rng.choice(events(rng, total, pronoun, other))
        expression = step.expression.replace("{}", str(start), 1) if index == 0 else step.expression
        lines.append(f"{expression.replace('{}', str(total))}={step.value}")
        sentences.append(step.sentence)
        expressions.append(expression)
        total = step.value
    price = rng.randint(2, 9)
    if rng.random() < 0.3 and total * price <= MAX_VALUE:  # a rate: the last step prices them
        sentences.append(f"Each costs {price} dollars. How many dollars in all?")
        expressions.append(f"{{}}*{price}")
        lines.append(f"{total}*{price}={total * price}")
        total *= price
    else:
        sentences.append("How many now?")
        if len(expressions) < LEVELS[level]:  # keep the step count: one more event before the question
            step = rng.choice(events(rng, total, pronoun, other))
            sentences.insert(-1, step.sentence)
            expressions.append(step.expression)
            lines.append(f"{step.expression.replace('{}', str(total))}={step.value}")
            total = step.value
    question = " ".join(sentences)
    return Problem(id=f"word-{level}-{hashlib.sha256(question.encode()).hexdigest()[:12]}", question=question, answer=str(total),
                   task="word", level=level, trace="\n".join(lines), meta={"plan": expressions})


def plan_text(problem: Problem) -> str:
    """The planner's target for a word problem: its steps as a compact JSON plan, `{}` the previous result."""
    return json.dumps(problem.meta["plan"], separators=(",", ":"))


class WordTask(GeneratedTask):
    """Generated word problems; the answer is a whole number, the trace one expression per step."""

    name = "word"
    levels = tuple(LEVELS)
    prompt_style = "plain"
    max_new_tokens = 128

    def make(self, rng: random.Random, level: int) -> Problem:
        return make_word_problem(rng, level)
