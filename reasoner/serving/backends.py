"""Model backends behind one call: `generate(messages, n, sampling) -> n Generations`.

The n samples of a vote are one batched call. Backends are shared by parallel graph branches, so
each must be safe to call from several threads at once.
"""
from __future__ import annotations

import functools
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from reasoner.errors import ReasonerError
from reasoner.sampling import Sampling


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


@functools.cache
def _rollout_engine_class():
    """The fast engine when the rollout package provides it; None means plain `model.generate`."""
    try:
        from reasoner.rollout import RolloutEngine
    except ImportError:
        return None
    return RolloutEngine


class LocalBackend(Backend):
    """A transformers checkpoint in this process. One lock: concurrent branches take turns."""

    def __init__(self, model, tokenizer, name: str = "local"):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.context = getattr(model.config, "max_position_embeddings", None)
        self._lock = threading.Lock()
        engine_class = _rollout_engine_class()
        self._engine = engine_class(model, tokenizer) if engine_class else None

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "LocalBackend":
        from reasoner.model import load_model

        model, tokenizer = load_model(path)
        return cls(model, tokenizer, name=Path(str(path)).name)

    def generate(self, messages, n, sampling, timeout=None):
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        max_new = self._room(len(ids), sampling.max_tokens)
        with self._lock:
            start = time.perf_counter()
            texts = self._sample(ids, n, sampling, max_new, timeout)
            latency = time.perf_counter() - start
        return [Generation(text, reason, prompt, latency, len(ids), count) for text, reason, count in texts]

    def _room(self, prompt_tokens: int, max_tokens: int) -> int:
        if self.context is None:
            return max_tokens
        room = self.context - prompt_tokens
        if room < 1:
            raise BackendError(f"the prompt is {prompt_tokens} tokens; this model reads at most {self.context}")
        return min(max_tokens, room)

    def _sample(self, ids, n, sampling, max_new, timeout) -> list[tuple[str, str, int]]:
        if self._engine is not None:
            done = self._engine.generate([ids], max_new_tokens=max_new, temperature=sampling.temperature,
                                         top_p=sampling.top_p, top_k=0, seed=sampling.seed, stop_strings=(),
                                         num_samples=n)
            return [(c.text, "length" if c.finish_reason == "length" else "stop", len(c.token_ids)) for c in done]
        return self._hf_generate(ids, n, sampling, max_new, timeout)

    def _hf_generate(self, ids, n, sampling, max_new, timeout):
        import torch

        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        inputs = torch.tensor([ids] * n, device=self.model.device)
        greedy = sampling.temperature <= 0
        extra = {} if greedy else {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
        with torch.no_grad():
            out = self.model.generate(
                input_ids=inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new,
                do_sample=not greedy, max_time=timeout, pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id, **extra)
        results = []
        for row in out[:, len(ids):].tolist():
            stopped = self.tokenizer.eos_token_id in row
            row = row[:row.index(self.tokenizer.eos_token_id)] if stopped else row
            row = [t for t in row if t != self.tokenizer.pad_token_id]
            results.append((self.tokenizer.decode(row, skip_special_tokens=True), "stop" if stopped else "length",
                            len(row)))
        return results


# ---------------------------------------------------------------- OpenAI-compatible HTTP


class OpenAIBackend(Backend):
    """Any server with `/v1/chat/completions` (vLLM, SGLang, `reasoner serve`, OpenAI itself)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 120.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.name, self.api_key, self.timeout = model, api_key, timeout

    def generate(self, messages, n, sampling, timeout=None):
        timeout = min(self.timeout, timeout) if timeout else self.timeout
        generations: list[Generation] = []
        while len(generations) < n:  # some servers ignore n and answer with one choice
            generations += self._request(messages, n - len(generations), sampling, timeout)
        return generations[:n]

    def _request(self, messages, n, sampling, timeout) -> list[Generation]:
        body = {"model": self.name, "messages": messages, "n": n, "temperature": sampling.temperature,
                "top_p": sampling.top_p, "max_tokens": sampling.max_tokens}
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        start = time.perf_counter()
        reply = self._send(request, timeout)
        latency = time.perf_counter() - start
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not choices:
            raise BackendError(f"{self.url}: the reply has no choices: {str(reply)[:200]}")
        usage = reply.get("usage") or {}
        prompt = json.dumps(messages, ensure_ascii=False)
        return [Generation(_choice_text(c), c.get("finish_reason") or "stop", prompt, latency,
                           usage.get("prompt_tokens"), usage.get("completion_tokens") if len(choices) == 1 else None)
                for c in choices]

    def _send(self, request, timeout: float) -> dict:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode(errors="replace")
            raise BackendError(f"{self.url}: HTTP {err.code} {err.reason}: {detail}") from None
        except (TimeoutError, socket.timeout):
            raise BackendError(f"{self.url}: no answer within {timeout:g}s") from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, (TimeoutError, socket.timeout)):
                raise BackendError(f"{self.url}: no answer within {timeout:g}s") from None
            raise BackendError(f"{self.url}: cannot connect: {err.reason}") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BackendError(f"{self.url}: the reply is not JSON") from None
        except (ConnectionError, OSError) as err:
            raise BackendError(f"{self.url}: connection failed: {err}") from None


def _choice_text(choice: dict) -> str:
    """The completion, with reasoning that servers return separately put back in its tags."""
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
