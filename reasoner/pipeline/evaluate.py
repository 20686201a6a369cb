"""The measured outcome: direct single-shot answering against the pipeline, on the same backend.

    from reasoner.pipeline.evaluate import compare, write_summary
    write_summary(compare("runs/demo/checkpoint"), "runs/demo/summary.json")

The pipeline never sees the gold answers: it verifies sub-steps by re-computing them and votes;
gold answers are only used here, to score both arms the same way.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

from reasoner.pipeline.backends import Sampling
from reasoner.pipeline.prompts import render, user


def heldout_arithmetic(n: int = 200, level: int | None = None, seed: int = 0) -> list:
    """Held-out problems of the longest built-in level (longer than any the demo trains on)."""
    from reasoner.tasks.arithmetic import ArithmeticTask

    task = ArithmeticTask()
    return task.problems("heldout", n, level=level or max(task.levels), seed=seed)


def heldout_code(n: int = 20, level: int = 1, seed: int = 0) -> list:
    """Held-out built-in code tasks (level 1: a one-line formula), graded by their tests in the sandbox."""
    from reasoner.tasks.code import CodeTask

    return CodeTask().problems("heldout", n, level=level, seed=seed)


def compare(model, problems: Sequence | None = None, *, n: int = 200, level: int | None = 6, k: int = 8,
            retries: int = 3, max_tokens: int = 256, temperature: float = 1.0, code_problems: Sequence = (),
            ablation: bool = True, workdir: str | Path | None = None, **pipeline_options: Any) -> dict:
    """direct_accuracy, pipeline_accuracy, n_pipeline, pass_at_1 / maj_at_k, and code checks.

    model: a Reasoner or a checkpoint path. problems: Problems (question, answer), else `n` held-out
    arithmetic problems of `level` (6: 8 terms, twice the longest the demo trains on; None: the longest).
    The pipeline draws k samples per attempt at `temperature`, with `retries` retries.
    ablation: also run the pipeline with plans only (one sample, no verification, no retries), to show
    how much of the gain is decomposition alone.
    """
    from reasoner.api import Reasoner

    reasoner = model if isinstance(model, Reasoner) else Reasoner.from_pretrained(
        model, **_run_files(workdir))
    problems = list(problems) if problems is not None else heldout_arithmetic(n, level)
    started = time.perf_counter()
    direct, pass_at_1, maj_at_k = _sampled_baselines(reasoner.backend, problems, k, max_tokens, temperature)
    options = {"samples": k, "retries": retries, "max_tokens": max_tokens, "temperature": temperature,
               **pipeline_options}
    pipeline = _pipeline_accuracy(reasoner, problems, options)
    results = {
        "direct_accuracy": _mean(direct), "pipeline_accuracy": _mean(pipeline), "n_pipeline": len(pipeline),
        "pass_at_1": _mean(pass_at_1), "maj_at_k": _mean(maj_at_k), "k": k,
        "pipeline_level": getattr(problems[0], "level", None) if problems else None,
    }
    if ablation:
        plans_only = {**options, "samples": 1, "retries": 0, "verify": False, "temperature": 0.0}
        results["pipeline_plans_only_accuracy"] = _mean(_pipeline_accuracy(reasoner, problems, plans_only))
    if code_problems:
        results.update(_code_checks(reasoner, code_problems, options, max_tokens))
    results["pipeline_eval_seconds"] = round(time.perf_counter() - started, 1)
    return results


def _run_files(workdir) -> dict:
    if workdir is None:
        return {}
    return {"checkpoints": Path(workdir) / "pipeline.db", "traces": Path(workdir) / "traces.db"}


def _sampled_baselines(backend, problems, k, max_tokens, temperature):
    """Greedy single shot per problem, and k samples in one call for pass@1 and majority@k."""
    from reasoner.pipeline.graph import majority
    from reasoner.verify import extract_answer

    direct, pass_at_1, maj_at_k = [], [], []
    for problem in problems:
        direct.append(_correct(extract_answer(_greedy(backend, problem, max_tokens)), problem.answer))
        messages = user(render("solve", question=problem.question))
        answers = [extract_answer(g.text) for g in backend.generate(messages, k, Sampling(temperature, 1.0, max_tokens))]
        pass_at_1.append(sum(_correct(a, problem.answer) for a in answers) / k)
        voted, _ = majority([a for a in answers if a])
        maj_at_k.append(_correct(voted, problem.answer))
    return direct, pass_at_1, maj_at_k


def _greedy(backend, problem, max_tokens: int) -> str:
    """The single-shot answer: one greedy completion of the solve prompt."""
    return backend.generate(user(render("solve", question=problem.question)), 1, Sampling(0.0, 1.0, max_tokens))[0].text


def _pipeline_accuracy(reasoner, problems, options) -> list[bool]:
    return [_correct(reasoner.solve(p.question, **options).answer, p.answer) for p in problems]


def _code_checks(reasoner, problems, options, max_tokens) -> dict:
    """Pipeline verified answers on code tasks, re-checked independently against their tests, beside
    greedy single-shot programs graded the same way."""
    from reasoner.verify import check_code_many

    def passes(programs: list[str], problems) -> list[bool]:  # one sandbox batch, run in parallel
        scores = check_code_many(programs, [p.tests for p in problems], [p.entry_point for p in problems])
        return [score == 1.0 for score in scores]

    direct = passes([_greedy(reasoner.backend, p, max_tokens) for p in problems], problems)
    solutions = [reasoner.solve(p.question, task="code", tests=p.tests, entry_point=p.entry_point,
                                **{**options, "decompose": False}) for p in problems]
    verified = [(s, p) for s, p in zip(solutions, problems) if s.verified]
    passing = passes([s.answer for s, _ in verified], [p for _, p in verified]) if verified else []
    return {"n_code": len(problems), "code_direct_accuracy": _mean(direct), "code_verified": len(verified),
            "code_verified_pass_rate": _mean(passing) if passing else None}


def _correct(answer: str | None, gold: str) -> bool:
    from reasoner.verify import answers_equal

    return answer is not None and answers_equal(gold, answer)


def _mean(values) -> float:
    values = [float(v) for v in values]
    return round(sum(values) / len(values), 4) if values else 0.0


def write_summary(results: dict, path: str | Path = "runs/demo/summary.json") -> Path:
    """Merge results into the summary JSON (other keys kept), replacing the file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary.update(results)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(json.dumps(summary, indent=2) + "\n")
    staging.replace(path)
    return path
