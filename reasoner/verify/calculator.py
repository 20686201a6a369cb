"""The calculator: exact +-*/ arithmetic on an expression the model wrote, e.g. a plan step "17+{}*3"
with earlier results written in, or the expression a countdown answer proposes.

It evaluates by walking the `ast` (never eval()), with Fractions, so 7/2 is 7/2 and nothing rounds.
Anything but numbers, unary +/- and the four binary operators is rejected, and magnitudes are capped,
so adversarial text costs nothing. Countdown's stricter grammar (whole numbers and the four binary
operators only: no signs, no decimals) is `evaluate(..., whole_numbers=True)`. The pipeline may apply it
to what the model wrote; never to the user's own question (see reasoner.pipeline's rule).
"""
from __future__ import annotations

import ast
import operator
from fractions import Fraction

MAX_EXPRESSION_CHARS = 500
MAX_MAGNITUDE = 10 ** 60  # for checking steps, not for evaluating 9**9**9
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


class NotArithmetic(ValueError):
    """The text is not a +-*/ expression of numbers (or its value is out of range)."""


def evaluate(expression: str, *, whole_numbers: bool = False) -> tuple[Fraction, list[Fraction]]:
    """(value, the numbers in order of appearance); NotArithmetic when it is not an expression.
    `whole_numbers`: integer literals and binary operators only (countdown's rules)."""
    text = expression.strip() if isinstance(expression, str) else ""
    if not text or len(text) > MAX_EXPRESSION_CHARS:
        raise NotArithmetic("empty or too long")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise NotArithmetic(str(err)) from None
    numbers: list[Fraction] = []
    try:
        return _value(tree.body, numbers, (int,) if whole_numbers else (int, float), not whole_numbers), numbers
    except (ZeroDivisionError, RecursionError, MemoryError) as err:
        raise NotArithmetic(str(err) or type(err).__name__) from None


def _value(node: ast.AST, numbers: list[Fraction], literals: tuple[type, ...], signs: bool) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in literals:
        numbers.append(Fraction(str(node.value)))
        return numbers[-1]
    if signs and isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _value(node.operand, numbers, literals, signs)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        value = _OPERATORS[type(node.op)](_value(node.left, numbers, literals, signs),
                                          _value(node.right, numbers, literals, signs))
        if abs(value) > MAX_MAGNITUDE:
            raise NotArithmetic("value out of range")
        return value
    raise NotArithmetic(f"{type(node).__name__} is not arithmetic")


def calculate(expression: str) -> str | None:
    """The value of a +-*/ expression of numbers as text ("144+-37" -> "107", "7/2" -> "7/2"), else None."""
    try:
        value, _ = evaluate(expression.strip().rstrip("=") if isinstance(expression, str) else expression)
    except NotArithmetic:
        return None
    return format_value(value)


def format_value(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
