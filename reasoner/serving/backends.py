"""Model backends behind one call: `generate(messages, n, sampling) -> n Generations`.

The n samples of a vote are one batched call. Backends are shared by parallel graph branches, so
each must be safe to call from several threads at once.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import openai

from reasoner.errors import ReasonerError
from reasoner.sampling import Sampling

if TYPE_CHECKING:
    from reasoner.generation import Output


class BackendError(ReasonerError):
    """The model could not be asked: server down, HTTP error, timeout, prompt too long."""


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" or "length"
    prompt: str         # what the model saw, for the trace
    latency_s: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Backend:
    name = "model"

    def generate(self, messages: list[dict], n: int, sampling: Sampling,
                 timeout: float | None = None) -> list[Generation]:
        raise NotImplementedError


# ---------------------------------------------------------------- local checkpoint


class LocalBackend(Backend):
    """A transformers checkpoint in this process, run by reasoner.generation (where callers take turns)."""

    def __init__(self, model, tokenizer, name: str = "local"):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.context = getattr(model.config, "max_position_embeddings", None)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "LocalBackend":
        from reasoner.model import load_model  # torch: see generate_ids

        model, tokenizer = load_model(path)
        return cls(model, tokenizer, name=Path(str(path)).name)

    def generate(self, messages, n, sampling, timeout=None):
        prompt, ids = self.encode(messages)
        sampling = replace(sampling, max_tokens=self.room(len(ids), sampling.max_tokens))
        start = time.perf_counter()
        outputs = self.generate_ids([ids], sampling, n, timeout)
        latency = time.perf_counter() - start
        return [Generation(o.text, o.finish_reason, prompt, latency, len(ids), len(o.token_ids)) for o in outputs]

    def encode(self, messages: list[dict]) -> tuple[str, list[int]]:
        """The prompt the model sees (chat template, generation prompt added) and its token ids."""
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return prompt, self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def generate_ids(self, prompt_ids: list[list[int]], sampling: Sampling, n: int = 1,
                     timeout: float | None = None, on_tokens=None) -> list[Output]:
        """n completions per prompt, prompt-major; on_tokens(rows, tokens) hears each decoding step."""
        # Here, not at the top: torch + transformers take 3-14 s to import, and the OpenAI and scripted backends
        # (solve/eval --base-url, the graph and its tests, which import this module) never need them.
        from reasoner import generation

        return generation.generate(self.model, self.tokenizer, prompt_ids, sampling, n, timeout, on_tokens)

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def room(self, prompt_tokens: int, max_tokens: int) -> int:
        """max_tokens, cut to what fits in the context after the prompt."""
        if self.context is None:
            return max_tokens
        room = self.context - prompt_tokens
        if room < 1:
            raise BackendError(f"the prompt is {prompt_tokens} tokens; this model reads at most {self.context}")
        return min(max_tokens, room)


# ---------------------------------------------------------------- OpenAI-compatible HTTP


class OpenAIBackend(Backend):
    """Any server with `/v1/chat/completions` (vLLM, SGLang, `reasoner serve`, OpenAI itself), via `openai`."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 120.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.name, self.api_key, self.timeout = model, api_key, timeout
        # "EMPTY" (vLLM's convention) rather than None: the client would otherwise read OPENAI_API_KEY and send
        # the user's OpenAI key to whatever server this is. Retries are the caller's (evaluation/endpoint.py).
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY", max_retries=0)

    def generate(self, messages, n, sampling, timeout=None):
        timeout = min(self.timeout, timeout) if timeout else self.timeout
        generations: list[Generation] = []
        while len(generations) < n:  # some servers ignore n and answer with one choice
            generations += self._request(messages, n - len(generations), sampling, timeout)
        return generations[:n]

    def _request(self, messages, n, sampling, timeout) -> list[Generation]:
        start = time.perf_counter()
        reply = self._send(messages, n, sampling, timeout)
        latency = time.perf_counter() - start
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not choices:
            raise BackendError(f"{self.url}: the reply has no choices: {str(reply)[:200]}")
        usage = reply.get("usage") or {}
        prompt = json.dumps(messages, ensure_ascii=False)
        return [Generation(_choice_text(c), c.get("finish_reason") or "stop", prompt, latency,
                           usage.get("prompt_tokens"), usage.get("completion_tokens") if len(choices) == 1 else None)
                for c in choices]

    def _send(self, messages, n, sampling, timeout: float) -> dict:
        """The reply as a plain dict (servers differ in what they add; reasoning_content is one such field)."""
        extra = {"top_k": sampling.top_k} if sampling.top_k else None  # vLLM's extension; OpenAI has no top_k
        try:
            response = self._client.chat.completions.with_raw_response.create(
                model=self.name, messages=messages, n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                max_tokens=sampling.max_tokens, seed=_given(sampling.seed), stop=_given(list(sampling.stop) or None),
                timeout=timeout, extra_body=extra)
            return json.loads(response.http_response.text)
        except openai.APIStatusError as err:
            detail = err.response.text[:300]
            raise BackendError(f"{self.url}: HTTP {err.status_code} {err.response.reason_phrase}: {detail}") from None
        except openai.APITimeoutError:
            raise BackendError(f"{self.url}: no answer within {timeout:g}s") from None
        except openai.APIConnectionError as err:
            raise BackendError(f"{self.url}: cannot connect: {err.__cause__ or err}") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BackendError(f"{self.url}: the reply is not JSON") from None


def _given(value):
    """None as "leave the field out" (as our requests always did), not as null."""
    return openai.NOT_GIVEN if value is None else value


def _choice_text(choice: dict) -> str:
    """The completion, with reasoning that servers return separately (vLLM's reasoning parsers, DeepSeek's API,
    `reasoner serve`) put back in its tags, as the model wrote it."""
    message = choice.get("message") or {}
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    return f"<think>{reasoning}</think>{content}" if reasoning else content


# ---------------------------------------------------------------- scripted (tests, dry runs)


class ScriptedBackend(Backend):
    """Answers from a script: a list of texts (taken in order) or a function (messages, n) -> texts.

    A script entry that is an exception is raised instead, to rehearse a failing backend.
    """

    name = "scripted"

    def __init__(self, script: Sequence[str | BaseException] | Callable[[list[dict], int], list[str]]):
        self._script = script if callable(script) else list(script)
        self._lock = threading.Lock()
        self.calls: list[tuple[list[dict], int]] = []

    def generate(self, messages, n, sampling, timeout=None):
        with self._lock:
            self.calls.append((messages, n))
            texts = self._script(messages, n) if callable(self._script) else [self._next() for _ in range(n)]
        prompt = json.dumps(messages)
        return [Generation(text, "stop", prompt, 0.0) for text in texts]

    def _next(self) -> str:
        if not self._script:
            raise BackendError("the scripted backend has no answers left")
        item = self._script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item
