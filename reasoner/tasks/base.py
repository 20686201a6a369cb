"""One interface for generated and real tasks: a Task yields Problems for a split."""
from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Protocol

from reasoner.errors import ReasonerError

SPLITS = ("train", "validation", "heldout")
# What a solver is asked to do, by task: "math" (an answer to vote on), "countdown" (a proposal the
# question's own numbers and target certify), "code" (a program run on the examples the problem shows).
KINDS = {"countdown": "countdown", "code": "code", "humaneval": "code"}


@dataclass(frozen=True)
class Question:
    """What a solver receives: the problem as a user has it, and nothing a grader keeps back.

    There is no gold answer and no hidden test here, by construction: the pipeline, its verifiers and
    the API take Questions, and only reasoner.evaluation's grader sees a Problem.
    """

    text: str
    kind: str = "math"
    examples: tuple[str, ...] = ()     # tests the problem itself shows (code), as assert statements
    entry_point: str | None = None


@dataclass
class Problem:
    """A problem with its gold answer (the grader's); `trace` is a worked `<think>` text where the task has one.

    `tests` are the grader's hidden tests; `examples` are the ones the question text shows the solver.
    """

    id: str
    question: str
    answer: str
    task: str
    level: int = 0
    trace: str | None = None
    tests: list[str] = field(default_factory=list)   # code tasks: hidden assert statements (grader only)
    entry_point: str | None = None                   # code tasks: the function under test
    meta: dict[str, Any] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # code tasks: the asserts the question shows

    @property
    def kind(self) -> str:
        return KINDS.get(self.task, "math")

    def for_solver(self) -> Question:
        """The question as a user has it: text, shown examples, entry point. Never the answer or hidden tests."""
        return Question(self.question, self.kind, tuple(self.examples), self.entry_point)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def target(self) -> str:
        """The assistant text a worked solution should produce: reasoning then answer."""
        return f"<think>{self.trace or ''}</think><answer>{self.answer}</answer>"


class Task(Protocol):
    name: str
    levels: tuple[int, ...]

    def problems(self, split: str, n: int, level: int | None = None, seed: int = 0) -> list[Problem]: ...


def split_of(canonical: str, heldout_percent: int = 10, validation_percent: int = 5) -> str:
    """A problem's split is a pure function of its text, so train, validation (where settings are chosen)
    and held-out (the test split, reported once) never share one."""
    bucket = int(hashlib.sha256(canonical.encode()).hexdigest()[:8], 16) % 100
    if bucket < heldout_percent:
        return "heldout"
    return "validation" if bucket < heldout_percent + validation_percent else "train"


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ReasonerError(f"unknown split '{split}'; expected one of {', '.join(SPLITS)}")


def take_unique(candidates: Iterator[Problem], split: str, n: int, max_tries: int) -> list[Problem]:
    """Draw from a generator until n distinct problems of `split` are found."""
    seen: set[str] = set()
    out: list[Problem] = []
    for tries, problem in enumerate(candidates):
        if len(out) == n or tries >= max_tries:
            break
        if problem.question in seen or split_of(problem.question) != split:
            continue
        seen.add(problem.question)
        out.append(problem)
    return out


class GeneratedTask:
    """A seeded generator of problems: subclasses give `name`, `levels` and `make(rng, level)`.

    `make` returns None for a draw it rejects (e.g. an unsolvable countdown); the draw is simply repeated.
    The generator is a pure function of (name, level, seed), so the same call gives the same problems.
    """

    name: str
    levels: tuple[int, ...]

    def make(self, rng, level: int) -> Problem | None:
        raise NotImplementedError

    def problems(self, split: str, n: int, level: int | None = None, seed: int = 0) -> list[Problem]:
        check_split(split)
        return take_unique(self._generate(level, seed), split, n, max_tries=200 * n + 1000)

    def _generate(self, level: int | None, seed: int) -> Iterator[Problem]:
        rng = random.Random(f"{self.name}-{level}-{seed}")
        while True:
            problem = self.make(rng, level if level is not None else rng.choice(self.levels))
            if problem is not None:
                yield problem
