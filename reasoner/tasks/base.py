"""One interface for generated and real tasks: a Task yields Problems for a split."""
from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Protocol

SPLITS = ("train", "heldout")


@dataclass
class Problem:
    """A problem with its gold answer; `trace` is a worked `<think>` text where the task has one."""

    id: str
    question: str
    answer: str
    task: str
    level: int = 0
    trace: str | None = None
    tests: list[str] = field(default_factory=list)   # code tasks: assert statements
    entry_point: str | None = None                   # code tasks: the function under test
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def target(self) -> str:
        """The assistant text a worked solution should produce: reasoning then answer."""
        return f"<think>{self.trace or ''}</think><answer>{self.answer}</answer>"


class Task(Protocol):
    name: str
    levels: tuple[int, ...]

    def problems(self, split: str, n: int, level: int | None = None, seed: int = 0) -> list[Problem]: ...


def split_of(canonical: str, heldout_percent: int = 10) -> str:
    """A problem's split is a pure function of its text, so train and held-out never share one."""
    digest = int(hashlib.sha256(canonical.encode()).hexdigest()[:8], 16)
    return "heldout" if digest % 100 < heldout_percent else "train"


def check_split(split: str) -> None:
    if split not in SPLITS:
        from reasoner.errors import ReasonerError

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
