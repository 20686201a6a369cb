"""Countdown: is an arithmetic expression a valid way to reach the target from the given numbers?

Rules follow TinyZero's countdown reward: + - * / and parentheses only, every given number used
exactly once, the value equal to the target (division is exact: Fractions, no rounding).

The expression is parsed with `ast` and evaluated by walking the tree, never with eval(): anything
but integer literals and the four binary operators (names, calls, attributes, unary minus, powers)
is rejected. A length cap bounds parse time and recursion depth on adversarial input.
"""
from __future__ import annotations

import ast
import operator
import re
from collections import Counter
from fractions import Fraction

from reasoner.verify.answers import extract_answer

MAX_EXPRESSION_CHARS = 200
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_TRAILING_RESULT = re.compile(r"=\s*-?\d+\s*$")  # "3*7+2 = 23": the model restating the target


class _Rejected(Exception):
    pass


def evaluate_expression(expression: str) -> tuple[Fraction, list[int]] | None:
    """(value, integers used) of a countdown expression, or None if it is not one."""
    if not isinstance(expression, str) or len(expression) > MAX_EXPRESSION_CHARS:
        return None
    try:
        tree = ast.parse(expression.strip(), mode="eval")
        used: list[int] = []
        return _value(tree.body, used), used
    except (SyntaxError, ValueError, RecursionError, MemoryError, ZeroDivisionError, _Rejected):
        return None


def _value(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_value(node.left, used), _value(node.right, used))
    raise _Rejected(type(node).__name__)


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
