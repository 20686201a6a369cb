"""Typed trace objects and their JSON form (see trace.schema.json)."""
from __future__ import annotations

import math
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

SCHEMA_VERSION = 1
SOURCES = ("train", "pipeline", "eval", "distill")
SPAN_KINDS = ("node", "step", "model_call", "verification", "reward", "other")
VERDICTS = ("pass", "fail", "error", "unknown")

_THINK = re.compile(r"<think>(.*?)(?:</think>|\Z)", re.DOTALL)


def split_think(text: str) -> tuple[str | None, str]:
    """Split a completion into (think text, answer text).

    R1-style chat templates often put `<think>` in the prompt, so a completion may hold only
    the closing tag; an unclosed `<think>` (truncated generation) counts as all thinking.
    """
    match = _THINK.search(text)
    if match:
        think = match.group(1)
        answer = text[: match.start()] + text[match.end():]
    elif "</think>" in text:
        think, answer = text.split("</think>", 1)
    else:
        return None, text.strip()
    return think.strip(), answer.strip()


def new_trace_id() -> str:
    return uuid.uuid4().hex  # 32 hex digits: also a valid OpenTelemetry trace id


def new_span_id() -> str:
    return secrets.token_hex(8)  # 16 hex digits: also a valid OpenTelemetry span id


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def finite_or_none(value: Any) -> float | None:
    """NaN/inf rewards (TRL's 'no reward' marker) become None: JSON has no NaN."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _drop_none(data: dict) -> dict:
    return {key: value for key, value in data.items() if value is not None}


@dataclass
class ModelCall:
    prompt: str
    completion: str
    think: str | None = None
    answer: str = ""
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    sampling: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = _drop_none({k: getattr(self, k) for k in (
            "model", "prompt", "completion", "answer", "prompt_tokens", "completion_tokens", "latency_s")})
        data["think"] = self.think
        data["sampling"] = dict(self.sampling)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelCall":
        return cls(**{**data, "sampling": dict(data.get("sampling") or {})})


@dataclass
class Verification:
    verdict: str
    detail: str = ""
    verifier: str | None = None

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def to_dict(self) -> dict:
        return _drop_none({"verdict": self.verdict, "detail": self.detail, "verifier": self.verifier})

    @classmethod
    def from_dict(cls, data: dict) -> "Verification":
        return cls(**data)


@dataclass
class Reward:
    total: float | None = None
    components: dict[str, float | None] = field(default_factory=dict)
    advantage: float | None = None

    def to_dict(self) -> dict:
        return {
            "total": finite_or_none(self.total),
            "components": {name: finite_or_none(v) for name, v in self.components.items()},
            "advantage": finite_or_none(self.advantage),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Reward":
        return cls(data.get("total"), dict(data.get("components") or {}), data.get("advantage"))


_PAYLOADS = {"model_call": ModelCall, "verification": Verification, "reward": Reward}


@dataclass
class Span:
    kind: str
    name: str
    id: str = field(default_factory=new_span_id)
    start: float | None = None
    end: float | None = None
    status: str | None = None
    error: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    model_call: ModelCall | None = None
    verification: Verification | None = None
    reward: Reward | None = None
    children: list["Span"] = field(default_factory=list)

    @property
    def duration_s(self) -> float | None:
        if self.start is not None and self.end is not None:
            return self.end - self.start
        return self.model_call.latency_s if self.model_call else None

    def walk(self, depth: int = 0) -> Iterator[tuple[int, "Span"]]:
        yield depth, self
        for child in self.children:
            yield from child.walk(depth + 1)

    def to_dict(self) -> dict:
        data = _drop_none({"id": self.id, "kind": self.kind, "name": self.name, "start": self.start,
                           "end": self.end, "status": self.status, "error": self.error})
        if self.attributes:
            data["attributes"] = dict(self.attributes)
        for key in _PAYLOADS:
            payload = getattr(self, key)
            if payload is not None:
                data[key] = payload.to_dict()
        if self.children:
            data["children"] = [child.to_dict() for child in self.children]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Span":
        fields = {k: data[k] for k in ("id", "start", "end", "status", "error") if k in data}
        payloads = {key: kind.from_dict(data[key]) for key, kind in _PAYLOADS.items() if key in data}
        return cls(kind=data["kind"], name=data["name"], attributes=dict(data.get("attributes") or {}),
                   children=[cls.from_dict(c) for c in data.get("children") or ()], **fields, **payloads)


@dataclass
class Trace:
    source: str
    task: str
    model: str | None = None
    prompt: str | None = None
    correct: bool | None = None
    reward: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    spans: list[Span] = field(default_factory=list)
    id: str = field(default_factory=new_trace_id)
    created: datetime = field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION

    def walk(self) -> Iterator[tuple[int, Span]]:
        """Every span, depth first, with its depth (0 for top-level spans)."""
        for span in self.spans:
            yield from span.walk()

    def model_calls(self) -> list[ModelCall]:
        return [span.model_call for _, span in self.walk() if span.model_call]

    @property
    def completion_tokens(self) -> int | None:
        counts = [call.completion_tokens for call in self.model_calls() if call.completion_tokens is not None]
        return sum(counts) if counts else None

    @property
    def completion_chars(self) -> int:
        return sum(len(call.completion) for call in self.model_calls())

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version, "id": self.id, "source": self.source, "task": self.task,
            "model": self.model, "created": _iso(self.created), "prompt": self.prompt,
            "correct": self.correct, "reward": finite_or_none(self.reward),
            "metadata": dict(self.metadata), "spans": [span.to_dict() for span in self.spans],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Trace":
        return cls(
            source=data["source"], task=data["task"], model=data.get("model"), prompt=data.get("prompt"),
            correct=data.get("correct"), reward=data.get("reward"), metadata=dict(data.get("metadata") or {}),
            spans=[Span.from_dict(s) for s in data.get("spans") or ()], id=data["id"],
            created=parse_time(data["created"]), schema_version=data.get("schema_version", SCHEMA_VERSION),
        )


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:  # naive datetimes are taken as UTC so every stored time is comparable
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.isoformat()


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
