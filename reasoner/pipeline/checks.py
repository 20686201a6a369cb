"""Verdicts for the pipeline, delegating to reasoner.verify: {"verdict", "detail", "verifier"}.

What a check may use is what a user has (see the package docstring): a reference answer only when the
caller passed one, the calculator only on an expression the model wrote (a plan step), the countdown
certificate checker on the numbers and target the question states, and the sandbox on the examples the
problem shows. Never the user's own question evaluated, never a gold answer or a hidden test.
"""
from __future__ import annotations

from reasoner.verify import answers_equal, calculate, check_certificate
from reasoner.verify import check_code as run_tests


def verdict(result: str, detail: str, verifier: str) -> dict:
    return {"verdict": result, "detail": detail, "verifier": verifier}


def check(kind: str, text: str, answer: str | None, question: str, *, model_written: bool = False,
          reference: str | None = None, tests: list[str] = (), entry_point: str | None = None,
          finish_reason: str = "stop") -> dict:
    """One sample's verdict. `model_written`: the question is a plan step the model wrote, so the calculator
    may evaluate it; the user's own question never is."""
    if answer is None:
        why = "ran out of tokens before an answer" if finish_reason == "length" else "no answer found"
        return verdict("fail", why, "format")
    if kind == "countdown":
        passed, detail = check_certificate(text, question)
        return verdict("pass" if passed else "fail", detail, "certificate")
    if kind == "code":
        return check_examples(text, list(tests), entry_point)
    if reference is not None:
        same = answers_equal(reference, answer)
        return verdict("pass" if same else "fail", f"{answer} {'=' if same else '!='} reference", "reference")
    expected = calculate(question) if model_written else None
    if expected is None:
        return verdict("unknown", "nothing a user has can check this answer", "none")
    same = answers_equal(expected, answer)
    return verdict("pass" if same else "fail", f"{question} = {expected}" + ("" if same else f", not {answer}"),
                   "calculator")


def check_examples(completion: str, tests: list[str], entry_point: str | None) -> dict:
    """The program run in the sandbox on the examples the problem shows (never the grader's hidden tests)."""
    if not tests:
        return verdict("unknown", "the problem shows no examples to run", "sandbox")
    passed = run_tests(completion, tests, entry_point)
    detail = f"passed {round(passed * len(tests))} of {len(tests)} shown examples"
    return verdict("pass" if passed == 1.0 else "fail", detail, "sandbox")
