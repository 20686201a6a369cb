"""Grading model-written code: pull the program out of a completion, run tests on it in the sandbox.

All tests run in one sandboxed process (one interpreter start per completion, not per test), each
in its own try block. A passing test prints a random per-run token; a candidate that exits early
(os._exit(0) before the tests) therefore scores 0 rather than full marks, and one that fails a test
loses only that test.
"""
from __future__ import annotations

import secrets
from typing import Sequence

from reasoner.verify.answers import _last_answer_tag, _strip_thinking
from reasoner.verify.sandbox import ExecResult, run_many

_PYTHON_TAGS = {"python", "py", "python3"}
_OUTPUT_BYTES = 256 * 1024  # room for the pass markers after whatever the candidate prints

_HARNESS = '''

def _reasoner_run_tests(tests, token):
    import sys
    for index, test in enumerate(tests):
        try:
            exec(compile(test, f"<test {{index}}>", "exec"), dict(globals()))
        except BaseException as error:
            try:
                print(f"test {{index}} failed: {{type(error).__name__}}: {{error}}"[:500], file=sys.stderr)
            except BaseException:
                pass
        else:
            print(f"\\n{{token}}:{{index}}", flush=True)


_reasoner_run_tests({tests!r}, {token!r})
'''


def extract_code(completion: str) -> str | None:
    """The last fenced python block of the answer (after any <think>), else the whole answer."""
    if not isinstance(completion, str):
        return None
    text = _strip_thinking(completion)
    text = _last_answer_tag(text) or text
    blocks = text.split("```")[1::2]  # an unclosed last fence (truncated output) still counts
    tagged, untagged = [], []
    for block in blocks:
        first_line, _, body = block.partition("\n")
        language = first_line.strip().lower()
        (tagged if language in _PYTHON_TAGS else untagged if not language else []).append(body)
    chosen = tagged[-1] if tagged else untagged[-1] if untagged else text
    return chosen.strip("\n") or None


def check_code(
    completion: str, tests: str | Sequence[str], entry_point: str | None = None, timeout: float = 10.0
) -> float:
    """Fraction of tests the completion's program passes, for the code reward.

    tests: assertion snippets run one by one, or a single string; a test that defines
    `check(candidate)` (HumanEval style) is called with entry_point.
    """
    return check_code_many([completion], [tests], [entry_point], timeout)[0]


def check_code_many(
    completions: Sequence[str],
    tests: Sequence[str | Sequence[str]],
    entry_points: Sequence[str | None],
    timeout: float = 10.0,
) -> list[float]:
    """check_code over a batch, run in parallel on all cores."""
    jobs = [_program(completion, test, entry) for completion, test, entry in zip(completions, tests, entry_points)]
    runnable = [job for job in jobs if job is not None]
    results = iter(run_many([program for program, _, _ in runnable], timeout, max_output_bytes=_OUTPUT_BYTES))
    return [0.0 if job is None else _fraction_passed(next(results), *job[1:]) for job in jobs]


def _program(completion: str, tests: str | Sequence[str], entry_point: str | None) -> tuple[str, str, int] | None:
    code = extract_code(completion)
    tests = [tests] if isinstance(tests, str) else list(tests)
    if not code or not tests:
        return None
    tests = [_with_check_call(test, entry_point) for test in tests]
    token = secrets.token_hex(8)
    return code + _HARNESS.format(tests=tests, token=token), token, len(tests)


def _with_check_call(test: str, entry_point: str | None) -> str:
    if entry_point and "def check(" in test:
        return f"{test}\n\ncheck({entry_point})\n"
    return test


def _fraction_passed(result: ExecResult, token: str, total: int) -> float:
    passed = {line for line in result.stdout.splitlines() if line.startswith(token + ":")}
    return min(len(passed), total) / total
