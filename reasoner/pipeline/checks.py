"""Verdicts for the pipeline, delegating to reasoner.verify: {"verdict", "detail", "verifier"}.

Math: equivalence with a reference when one is given, else re-computation when the question is a
plain arithmetic expression (every arithmetic sub-step is), else "unknown". Code: the problem's
tests, run in the sandbox.
"""
from __future__ import annotations

import ast
import operator
from fractions import Fraction

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_MAX_MAGNITUDE = 10 ** 60  # re-computation is for checking steps, not for evaluating 9**9**9


def recompute(question: str) -> str | None:
    """The value of a +-*/ expression of numbers (e.g. "144+-37"), else None."""
    text = question.strip().rstrip("=").strip()
    if not text or len(text) > 500 or not any(c.isdigit() for c in text):
        return None
    try:
        value = _evaluate(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        value = _OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
        if abs(value) > _MAX_MAGNITUDE:
            raise ValueError("too large")
        return value
    raise ValueError("not arithmetic")


def verdict(result: str, detail: str, verifier: str) -> dict:
    return {"verdict": result, "detail": detail, "verifier": verifier}


def check_math(answer: str | None, question: str, reference: str | None = None,
               finish_reason: str = "stop") -> dict:
    from reasoner.verify import answers_equal

    if answer is None:
        why = "ran out of tokens before an <answer>" if finish_reason == "length" else "no <answer> found"
        return verdict("fail", why, "format")
    if reference is not None:
        same = answers_equal(reference, answer)
        return verdict("pass" if same else "fail", f"{answer} {'=' if same else '!='} reference", "reference")
    expected = recompute(question)
    if expected is None:
        return verdict("unknown", "no reference and not re-computable", "none")
    same = answers_equal(expected, answer)
    return verdict("pass" if same else "fail", f"{question} = {answer}" if same else f"{question} is not {answer}",
                   "recompute")


def code_of(completion: str) -> str | None:
    from reasoner.verify import extract_code

    return extract_code(completion)


def check_code(completion: str, tests: list[str], entry_point: str | None) -> dict:
    try:
        from reasoner.verify import check_code as run_tests
    except ImportError:
        return verdict("unknown", "the code sandbox is not installed", "sandbox")
    if not tests:
        return verdict("unknown", "the problem has no tests", "sandbox")
    passed = run_tests(completion, tests, entry_point)
    detail = f"passed {round(passed * len(tests))} of {len(tests)} tests"
    return verdict("pass" if passed == 1.0 else "fail", detail, "sandbox")
