"""How to sample: one settings type for the rollout engine, `generate`, the backends, the server and recipes.

Plain data, no torch: the OpenAI backend and the HTTP server use it without loading a model. The engine's
token-level sampling (reasoner/rollout/sampling.py) reads temperature, top_p and top_k from it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0    # 0 is greedy
    top_p: float = 1.0
    top_k: int = 0              # 0: no top-k filter
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        object.__setattr__(self, "stop", (self.stop,) if isinstance(self.stop, str) else tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict:
        return asdict(self)
