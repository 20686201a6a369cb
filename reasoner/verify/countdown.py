"""Countdown: is an arithmetic expression a valid way to reach the target from the given numbers?

Rules follow TinyZero's countdown reward: + - * / and parentheses only, every given number used
exactly once, the value equal to the target (division is exact: Fractions, no rounding).

The expression is evaluated by the calculator (calculator.py: an `ast` walk, never eval()) in its
whole-numbers grammar: anything but integer literals and the four binary operators (names, calls,
attributes, unary minus, powers, decimals) is rejected. A length cap bounds parse time and recursion
depth on adversarial input.
"""
from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction

from reasoner.verify.answers import extract_answer
from reasoner.verify.calculator import NotArithmetic, evaluate, format_value

MAX_EXPRESSION_CHARS = 200
_TRAILING_RESULT = re.compile(r"=\s*-?\d+\s*$")  # "3*7+2 = 23": the model restating the target


def evaluate_expression(expression: str) -> tuple[Fraction, list[int]] | None:
    """(value, integers used) of a countdown expression, or None if it is not one."""
    if not isinstance(expression, str) or len(expression) > MAX_EXPRESSION_CHARS:
        return None
    try:
        value, numbers = evaluate(expression, whole_numbers=True)
    except NotArithmetic:
        return None
    return value, [int(n) for n in numbers]


def countdown_correct(expression: str, numbers: list[int], target: int) -> bool:
    """True if `expression` uses each of `numbers` exactly once and equals `target`."""
    if not isinstance(expression, str):
        return False
    stated = _TRAILING_RESULT.search(expression)
    if stated:  # accept "expr = target", but not "expr = something else"
        if int(stated.group().lstrip("= \t")) != target:
            return False
        expression = expression[:stated.start()]
    result = evaluate_expression(expression)
    return result is not None and result[0] == target and Counter(result[1]) == Counter(numbers)


_QUESTION = re.compile(r"numbers\s*\[([\d,\s]+)\].*?\bmake\s+(\d+)", re.DOTALL)


def countdown_question(question: str) -> tuple[list[int], int] | None:
    """(numbers, target) as a countdown question states them ("Using the numbers [2, 3, 7], make 23."),
    else None. This is what the problem shows the user, so a solver may check proposals against it."""
    found = _QUESTION.search(question) if isinstance(question, str) else None
    if not found:
        return None
    numbers = [int(n) for n in re.findall(r"\d+", found.group(1))]
    return (numbers, int(found.group(2))) if numbers else None


def check_certificate(completion: str, question: str) -> tuple[bool, str]:
    """The certificate check the pipeline may run: does the proposed expression reach the target the
    question states, using each of its numbers once? (passed, why) -- it checks a proposal, it never solves."""
    stated = countdown_question(question)
    if stated is None:
        return False, "the question does not state numbers and a target"
    numbers, target = stated
    answer = extract_answer(completion)
    if answer is None:
        return False, "no <answer> found"
    if countdown_correct(answer, numbers, target):
        return True, f"{answer} = {target}"
    result = evaluate_expression(answer.split("=")[0])
    if result is None:
        return False, f"{answer} is not an expression of the numbers"
    if Counter(result[1]) != Counter(numbers):
        return False, f"{answer} does not use each of {numbers} exactly once"
    return False, f"{answer} = {format_value(result[0])}, not {target}"


def check_countdown(completion: str, reference: str) -> bool:
    """Grade a completion against a reference solution, which fixes both the numbers and the target.

    The reference (the task's gold `answer`, e.g. "7*3+2") carries everything the check needs, so
    the GRPO dataset's `answer` column works unchanged.
    """
    gold = evaluate_expression(reference)
    if gold is None or gold[0].denominator != 1:
        raise ValueError(f"countdown reference {reference!r} is not a valid expression with an integer value")
    answer = extract_answer(completion)
    return answer is not None and countdown_correct(answer, gold[1], int(gold[0]))
