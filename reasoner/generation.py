"""Sampling text from a local model: one function for evaluation, the demo and the pipeline backend.

Uses the absorbed-MLA rollout engine (reasoner.rollout), which reads the live weights of a
DeepseekV3ForCausalLM; other models (or a PEFT wrapper) go through transformers' `generate`.
Returns, per prompt, `num_samples` completion texts with special tokens removed (the reasoning tags
are ordinary tokens and stay).
"""
from __future__ import annotations

import weakref

import torch
from transformers import DeepseekV3ForCausalLM

from reasoner.progress import progress

_ENGINES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def engine_for(model, tokenizer):
    """One rollout engine per model object (it keeps a preallocated cache), or None if unsupported."""
    if type(model) is not DeepseekV3ForCausalLM:
        return None
    if model not in _ENGINES:
        from reasoner.rollout import RolloutEngine

        _ENGINES[model] = RolloutEngine(model, tokenizer, max_batch_size=256)
    return _ENGINES[model]


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], num_samples: int = 1, temperature: float = 0.0,
           top_p: float = 1.0, max_new_tokens: int = 96, batch_size: int = 256, seed: int = 0,
           description: str | None = None) -> list[list[str]]:
    was_training = model.training
    model.eval()
    per_batch = max(1, batch_size // num_samples)
    chunks = range(0, len(prompts), per_batch)
    generate = _engine_sample if engine_for(model, tokenizer) is not None else _hf_sample
    out: list[list[str]] = []
    for start in progress(chunks, description, total=len(chunks)):
        out += generate(model, tokenizer, prompts[start:start + per_batch], num_samples, temperature, top_p,
                        max_new_tokens, seed + start)
    model.train(was_training)
    return out


def _engine_sample(model, tokenizer, prompts, num_samples, temperature, top_p, max_new_tokens, seed):
    prompt_ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    completions = engine_for(model, tokenizer).generate(
        prompt_ids, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, num_samples=num_samples)
    texts = tokenizer.batch_decode([c.token_ids for c in completions], skip_special_tokens=True)
    return [texts[i:i + num_samples] for i in range(0, len(texts), num_samples)]


def _hf_sample(model, tokenizer, prompts, num_samples, temperature, top_p, max_new_tokens, seed):
    torch.manual_seed(seed)
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    greedy = temperature == 0
    output = model.generate(
        **encoded, max_new_tokens=max_new_tokens, do_sample=not greedy, num_return_sequences=num_samples,
        temperature=None if greedy else temperature, top_p=None if greedy else top_p, top_k=None,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    texts = tokenizer.batch_decode(output[:, encoded.input_ids.shape[1]:], skip_special_tokens=True)
    return [texts[i:i + num_samples] for i in range(0, len(texts), num_samples)]
