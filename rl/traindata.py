"""GSM8K's and MATH's train splits as Problems, for GRPO prompts on real data (`task.train_data`).

Neither train split ships with the package (the test sets do, for evaluation). Each comes from a path you
give, or from a hub with `datasets.load_dataset` when the recipe says "hub" and the machine is online:

    gsm8k: openai/grade-school-math `train.jsonl` (7473 rows, {"question", "answer" ending "#### N"})
    math:  MATH train (7500 problems) as JSON lines of {"problem", "solution", ...} (the hub layout) or
           {"question", "answer"}, or hendrycks' folder of one .json per problem (MATH/train/<subject>/*.json)

The gold answer is GSM8K's number after '####', or MATH's last \\boxed{} (or "The answer is:") in the
solution. MATH-500, our MATH test set, is drawn from MATH's test split, so MATH train does not overlap it.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

from reasoner.errors import ReasonerError
from reasoner.tasks.base import Problem
from reasoner.verify import extract_answer

HUB = "hub"
HUB_DATASETS = {"gsm8k": ("openai/gsm8k", "main"), "math": ("DigitalLearningGmbH/MATH-lighteval", None)}


def train_problems(train_data, n: int | None = None, seed: int = 0) -> list[Problem]:
    """Problems from every configured source (a TrainData), n drawn evenly across them (None: all)."""
    sources = {name: where for name, where in (("gsm8k", train_data.gsm8k), ("math", train_data.math)) if where}
    if not sources:
        raise ReasonerError("task.train_data: set gsm8k and/or math to a JSON-lines path (or 'hub')")
    chosen: list[Problem] = []
    for name, where in sources.items():
        problems = load_source(name, where)
        share = None if n is None else max(1, n // len(sources))
        if share is not None and share < len(problems):
            keep = sorted(random.Random(f"{name}-train-{seed}").sample(range(len(problems)), share))
            problems = [problems[i] for i in keep]
        chosen += problems
    return chosen


def load_source(name: str, where: str) -> list[Problem]:
    rows = _hub_rows(name) if where == HUB else _file_rows(name, Path(os.path.expandvars(os.path.expanduser(where))))
    parse = _gsm8k_problem if name == "gsm8k" else _math_problem
    problems = [parse(i, row, where) for i, row in enumerate(rows)]
    if not problems:
        raise ReasonerError(f"task.train_data.{name}: {where} has no rows")
    return problems


def _file_rows(name: str, path: Path) -> list[dict]:
    if not path.exists():
        raise ReasonerError(f"task.train_data.{name}: {path} not found (give the train split's JSON-lines file, "
                            f"or 'hub' to download it with `datasets`)")
    files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
    rows = []
    for file in files:
        with file.open() as lines:
            if file.suffix == ".json" and path.is_dir():
                rows.append(json.load(lines))
                continue
            for number, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ReasonerError(f"task.train_data.{name}: {file}:{number}: not JSON ({err})") from None
    return rows


def _hub_rows(name: str) -> list[dict]:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise ReasonerError(f"task.train_data.{name}: 'hub' downloads the split, and HF_HUB_OFFLINE=1 (the reasoner "
                            f"command's default) forbids it: run with HF_HUB_OFFLINE=0, or give a local path")
    from datasets import load_dataset

    repo, config = HUB_DATASETS[name]
    try:
        return list(load_dataset(repo, config, split="train"))
    except Exception as err:  # noqa: BLE001 - network, auth or a moved dataset: one readable line
        raise ReasonerError(f"task.train_data.{name}: could not load {repo} from the hub: {err}") from None


def _gsm8k_problem(i: int, row: dict, where: str) -> Problem:
    try:
        question, solution = row["question"], row["answer"]
    except KeyError as err:
        raise ReasonerError(f"task.train_data.gsm8k: {where}: row {i} has no {err} (expected question/answer)") from None
    worked, sep, final = solution.rpartition("####")
    if not sep:
        raise ReasonerError(f"task.train_data.gsm8k: {where}: row {i}'s answer has no '#### N' (is this GSM8K?)")
    return Problem(id=f"gsm8k-train-{i}", question=question, answer=final.strip().replace(",", ""), task="gsm8k",
                   trace=worked.strip())


def _math_problem(i: int, row: dict, where: str) -> Problem:
    question = row.get("problem") or row.get("question")
    solution = row.get("solution") or row.get("answer")
    if not question or not solution:
        raise ReasonerError(f"task.train_data.math: {where}: row {i} needs problem/solution (or question/answer)")
    answer = solution.rpartition("The answer is:")[2].strip() if "The answer is:" in solution else None
    if answer is None:
        answer = extract_answer(solution) if "\\boxed" in solution or "\\fbox" in solution else solution.strip()
    if not answer:
        raise ReasonerError(f"task.train_data.math: {where}: row {i} has no final answer (\\boxed{{}})")
    level = str(row.get("level", "")).rpartition(" ")[2]
    return Problem(id=f"math-train-{i}", question=question, answer=answer, task="math500",
                   level=int(level) if level.isdigit() else 0, trace=solution.strip())
