"""The OpenAI chat-completions request and response, as pydantic models, and the 400 messages for bad requests.

Requests are validated strictly (a string is not a number, `true` is not 1) and extra fields are ignored, as
OpenAI clients send many. A validation error becomes one sentence naming the field, the messages
`reasoner serve` has always given.
"""
from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reasoner.sampling import Sampling


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    n: int = Field(1, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=1e-6, le=1.0)
    top_k: int | None = Field(None, ge=-1)   # vLLM's extension; -1 or 0: off
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=-(1 << 63), le=(1 << 63) - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    task: Literal["math", "countdown", "code"] | None = None   # the pipeline model's problem kind,
    samples: int | None = Field(None, ge=1, le=64)              # samples per (sub-)problem,
    retries: int | None = Field(None, ge=0, le=10)              # and retry rounds (default: the pipeline's)

    def requested_tokens(self, default: int) -> int:
        return self.max_tokens or self.max_completion_tokens or default

    def sampling(self, default_max_tokens: int) -> Sampling:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return Sampling(temperature=1.0 if self.temperature is None else self.temperature,
                        top_p=1.0 if self.top_p is None else self.top_p, top_k=max(0, self.top_k or 0),
                        max_tokens=self.requested_tokens(default_max_tokens), seed=self.seed,
                        stop=tuple(s for s in stop if s))

    def plain_messages(self) -> list[dict]:
        return [{"role": m.role, "content": m.content} for m in self.messages]

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


WHOLE_NUMBERS = {"n", "top_k", "max_tokens", "max_completion_tokens", "seed", "samples", "retries"}
WORDING = {"stream": "true or false", "model": "a string", "stop": "a string or a list of strings",
           "stream_options": "an object", "task": "one of math, countdown, code"}


def error_message(err: ValidationError, max_n: int) -> str:
    """One sentence for the first thing wrong with a request body."""
    first = err.errors()[0]
    kind, loc, ctx = first["type"], first["loc"], first.get("ctx") or {}
    if kind == "json_invalid":
        return "the body is not valid JSON"
    if not loc:
        return "the body must be a JSON object"
    key = loc[0]
    if key == "messages":
        return "'messages' must be a non-empty list" if len(loc) == 1 else \
            "each message needs a role (system, user, assistant) and text content"
    if key in WORDING:
        return f"'{key}' must be {WORDING[key]}"
    if kind in ("greater_than_equal", "less_than_equal"):
        return _range_message(key, max_n)
    return f"'{key}' must be a {'whole ' if key in WHOLE_NUMBERS else ''}number"


def _range_message(key: str, max_n: int) -> str:
    field = ChatRequest.model_fields[key]
    bounds = {type(m).__name__: getattr(m, type(m).__name__.lower()) for m in field.metadata}
    low, high = bounds.get("Ge"), bounds.get("Le")
    if key == "n":
        high = max_n
    return f"'{key}' must be between {low} and {high}" if high is not None else f"'{key}' must be at least {low}"


# ---------------------------------------------------------------- responses


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    trace_id: str | None = None   # the pipeline model's run: `reasoner traces show <trace_id>`
    solution: dict | None = None  # the pipeline model's answer, status, verified, trace_id, error


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: str | None = None


class ChatChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    trace_id: str | None = None
    solution: dict | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "reasoner"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


def error_body(message: str, kind: str, code: int) -> dict:
    return {"error": {"message": message, "type": kind, "code": code}}
