"""Running a local model: the one function for evaluation, the demo, the pipeline backend and the server.

`generate(model, tokenizer, prompt_ids, sampling)` decides how: the absorbed-MLA rollout engine
(reasoner.rollout) for a DeepseekV3ForCausalLM, transformers' `generate` for anything else (a PEFT wrapper,
another architecture). Both honour `sampling.stop` and a timeout, report why each completion ended, and can
tell a listener each step's new tokens (`on_tokens`: the server streams them). `sample(...)` is the text-in,
text-out form evaluation and the demo use.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, replace

import torch
from transformers import DeepseekV3ForCausalLM
from transformers.generation.streamers import BaseStreamer

from reasoner.progress import progress
from reasoner.rollout import RolloutEngine
from reasoner.rollout.output import OnTokens
from reasoner.sampling import Sampling

_ENGINES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LOCKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


@dataclass
class Output:
    """One completion of one prompt."""

    token_ids: list[int]   # what the model produced, the EOS or stop string's tokens included
    text: str              # decoded without special tokens, cut before the first stop string (OpenAI's rule)
    finish_reason: str     # "stop" (EOS or a stop string) or "length" (max_tokens or the timeout)


def engine_for(model, tokenizer):
    """One rollout engine per model object (it keeps a preallocated cache), or None if unsupported."""
    if type(model) is not DeepseekV3ForCausalLM:
        return None
    if model not in _ENGINES:
        _ENGINES[model] = RolloutEngine(model, tokenizer, max_batch_size=256)
    return _ENGINES[model]


@torch.no_grad()
def generate(model, tokenizer, prompt_ids: list[list[int]], sampling: Sampling, num_samples: int = 1,
             timeout: float | None = None, on_tokens: OnTokens | None = None) -> list[Output]:
    """num_samples completions per prompt, prompt-major. `timeout` (seconds) ends decoding early ("length").
    on_tokens(rows, tokens) hears each step's new tokens (rows index the returned list; a row's EOS is its last).
    Thread-safe: calls on one model take turns (the engine has one cache)."""
    with _lock_for(model):
        engine = engine_for(model, tokenizer)
        if engine is not None:
            return _engine_generate(engine, tokenizer, prompt_ids, sampling, num_samples, timeout, on_tokens)
        return _hf_generate(model, tokenizer, prompt_ids, sampling, num_samples, timeout, on_tokens)


def _lock_for(model) -> threading.Lock:
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(model, threading.Lock())


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """The text before the first stop string, and whether one occurred."""
    ends = [text.find(s) for s in stop if s and s in text]
    return (text[:min(ends)], True) if ends else (text, False)


def _engine_generate(engine, tokenizer, prompt_ids, sampling, num_samples, timeout, on_tokens) -> list[Output]:
    done = engine.generate(prompt_ids, sampling, num_samples=num_samples, max_time=timeout, on_tokens=on_tokens)
    texts = tokenizer.batch_decode([c.token_ids for c in done], skip_special_tokens=True)
    return [_output(c.token_ids, text, c.finish_reason != "length", sampling.stop) for c, text in zip(done, texts)]


def _output(token_ids: list[int], text: str, ended: bool, stop: tuple[str, ...]) -> Output:
    text, stopped = cut_at_stop(text, stop)
    return Output(list(token_ids), text, "stop" if ended or stopped else "length")


class _StepStreamer(BaseStreamer):
    """transformers' streamer hook, batched: each step's tokens to on_tokens, until a row's EOS (generate pads
    finished rows after it), pad tokens left out as _hf_output leaves them out. The first put is the prompt."""

    def __init__(self, on_tokens: OnTokens, tokenizer):
        self.on_tokens, self.prompt_seen, self.ended = on_tokens, False, set()
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        tokens = value.reshape(-1).tolist()  # [rows]: one new token each
        kept = [r for r in range(len(tokens)) if r not in self.ended]
        rows = [r for r in kept if tokens[r] != self.pad or tokens[r] == self.eos]
        self.ended.update(r for r in rows if tokens[r] == self.eos)
        if rows:
            self.on_tokens(rows, [tokens[r] for r in rows])

    def end(self) -> None:
        pass


def _hf_generate(model, tokenizer, prompt_ids, sampling, num_samples, timeout, on_tokens) -> list[Output]:
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    inputs, mask = _left_padded(prompt_ids, tokenizer.pad_token_id, model.device)
    extra = {} if sampling.greedy else {"temperature": sampling.temperature, "top_p": sampling.top_p,
                                        "top_k": sampling.top_k or None}
    if sampling.stop:
        extra.update(stop_strings=list(sampling.stop), tokenizer=tokenizer)
    if on_tokens is not None:
        extra["streamer"] = _StepStreamer(on_tokens, tokenizer)
    out = model.generate(input_ids=inputs, attention_mask=mask, max_new_tokens=sampling.max_tokens,
                         do_sample=not sampling.greedy, num_return_sequences=num_samples, max_time=timeout,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **extra)
    return [_hf_output(row, tokenizer, sampling.stop) for row in out[:, inputs.shape[1]:].tolist()]


def _left_padded(prompt_ids, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompt_ids):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    return ids.to(device), mask.to(device)


def _hf_output(row: list[int], tokenizer, stop: tuple[str, ...]) -> Output:
    eos = tokenizer.eos_token_id
    ended = eos in row
    row = row[:row.index(eos) + 1] if ended else [t for t in row if t != tokenizer.pad_token_id]
    return _output(row, tokenizer.decode(row, skip_special_tokens=True), ended, stop)


def sample(model, tokenizer, prompts: list[str], sampling: Sampling, num_samples: int = 1, batch_size: int = 256,
           description: str | None = None) -> list[list[str]]:
    """Per prompt, num_samples completion texts: prompts in chunks of batch_size rows, chunk i seeded with
    sampling.seed + its first row (0 when unset), so a rerun draws the same texts."""
    was_training = model.training
    model.eval()
    per_batch = max(1, batch_size // num_samples)
    chunks = range(0, len(prompts), per_batch)
    seed = sampling.seed or 0
    out: list[list[str]] = []
    for start in progress(chunks, description, total=len(chunks)):
        ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts[start:start + per_batch]]
        texts = [o.text for o in generate(model, tokenizer, ids, replace(sampling, seed=seed + start), num_samples)]
        out += [texts[i:i + num_samples] for i in range(0, len(texts), num_samples)]
    model.train(was_training)
    return out
