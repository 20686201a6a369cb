"""Solve options: one dataclass, validated once, stored in the run's state so a resume uses the same."""
from __future__ import annotations

import difflib
import numbers
from dataclasses import asdict, dataclass, fields

from reasoner.errors import ReasonerError
from reasoner.prompts import STYLES
from reasoner.sampling import Sampling


@dataclass(frozen=True)
class SolveOptions:
    samples: int = 4             # k answers per (sub-)problem, drawn in one batched call, then voted
    retries: int = 2             # retry rounds: after a failed check, or (plans) when no majority agrees
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    decompose: bool = True       # plan sub-problems first (math); off: solve the problem directly
    verify: bool = True
    feedback: bool = True        # a retry shows the failed answer and why; off: it asks the question afresh
    time_budget: float = 300.0   # seconds for the whole run; past it no new retries or steps start
    seed: int | None = None
    prompt_style: str = "compact"  # reasoner.prompts.STYLES: compact/r1 (our checkpoints), chat (instruction-tuned)

    _LIMITS = {"samples": (1, 64), "retries": (0, 10), "temperature": (0.0, 2.0), "top_p": (1e-6, 1.0),
               "max_tokens": (1, 65536), "time_budget": (0.001, 86400.0)}

    _INTEGERS = ("samples", "retries", "max_tokens")

    def __post_init__(self):
        for name, (low, high) in self._LIMITS.items():
            value = getattr(self, name)
            if name in self._INTEGERS:
                if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
                    raise ReasonerError(f"option {name}={value!r}: expected a whole number from {low} to {high}")
                object.__setattr__(self, name, int(value))  # numpy integers too, stored as plain ints
            elif isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value <= high:
                raise ReasonerError(f"option {name}={value!r}: expected a number from {low} to {high}")
        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
                raise ReasonerError(f"option seed={self.seed!r}: expected a whole number or none")
            object.__setattr__(self, "seed", int(self.seed))
        if self.prompt_style not in STYLES:
            raise ReasonerError(f"option prompt_style={self.prompt_style!r}: expected one of {', '.join(STYLES)}")
        for name in ("decompose", "verify", "feedback"):
            if not isinstance(getattr(self, name), bool):
                raise ReasonerError(f"option {name}={getattr(self, name)!r}: expected true or false")

    @classmethod
    def of(cls, **options) -> "SolveOptions":
        known = [f.name for f in fields(cls)]
        for name in options:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ReasonerError(f"unknown solve option '{name}'{hint}; options: {', '.join(known)}")
        return cls(**options)

    def to_dict(self) -> dict:
        return asdict(self)

    def sampling(self, attempt: int = 0) -> Sampling:
        """Each attempt its own seed, so a seeded retry draws new samples rather than the same ones."""
        seed = None if self.seed is None else self.seed + 1000 * attempt
        return Sampling(self.temperature, self.top_p, max_tokens=self.max_tokens, seed=seed)
