"""Hooks that put the rollout engine behind TRL's GRPOTrainer (the pipeline's LocalBackend calls
`RolloutEngine.generate` directly, see reasoner/serving/backends.py).

TRL's `rollout_func(prompts, trainer) -> {"prompt_ids", "completion_ids", "logprobs", ...}` does not need vLLM:
GRPOTrainer calls it in `_generate` in place of `model.generate` and uses the returned ids as-is. TRL hands it
the per-process prompt slice as sampled, in which each prompt already appears `num_generations` times in a row
(RepeatSampler); we collapse each run of identical prompts into one prompt with `num_samples=len(run)`, so the
G completions of a GRPO group share one prefill, and return exactly one completion per input row, in order.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

from reasoner.rollout.engine import Completion, RolloutEngine
from reasoner.sampling import Sampling


def _prompt_ids(tokenizer, prompt, chat_template_kwargs: dict | None = None) -> list[int]:
    if isinstance(prompt, str):  # TRL tokenizes plain-text prompts as processing_class(text=prompts)
        return list(tokenizer(text=prompt)["input_ids"])
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False,
                                        **(chat_template_kwargs or {}))
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def _runs(items: Sequence) -> list[tuple[int, int]]:
    """(start, length) of each run of equal consecutive items."""
    runs, start = [], 0
    for key, group in itertools.groupby(range(len(items)), key=lambda i: repr(items[i])):
        n = sum(1 for _ in group)
        runs.append((start, n))
        start += n
    return runs


def generate_grouped(engine: RolloutEngine, prompt_ids: list[list[int]], sampling: Sampling,
                     **kwargs) -> list[Completion]:
    """One completion per row of `prompt_ids`; runs of identical consecutive prompts share one prefill."""
    runs = _runs(prompt_ids)
    out: list[Completion | None] = [None] * len(prompt_ids)
    by_count: dict[int, list[int]] = {}
    for start, n in runs:
        by_count.setdefault(n, []).append(start)
    for n, starts in by_count.items():
        completions = engine.generate([prompt_ids[s] for s in starts], sampling, num_samples=n, **kwargs)
        for k, c in enumerate(completions):
            out[starts[k // n] + k % n] = c
    return out  # type: ignore[return-value]


def make_rollout_func(engine: RolloutEngine | None = None, *, stop_strings: Sequence[str] = (),
                      max_batch_size: int = 64, seed: int | None = None,
                      **engine_kwargs) -> Callable[[list, Any], dict[str, list]]:
    """A `rollout_func` for `GRPOTrainer(..., rollout_func=make_rollout_func())`.

    Sampling settings come from the trainer's GRPOConfig at each call (temperature, top_p, top_k,
    max_completion_length; `generation_kwargs` may override them and add `stop_strings`), so one function
    serves train and eval. The engine is built on first use from the trainer's (unwrapped) model unless
    given; its absorbed matrices are refreshed automatically after each optimizer step. Returned
    `logprobs` are those of the sampling distribution (vLLM's `processed_logprobs`).
    """
    state = {"engine": engine, "calls": 0, "step": None, "acceptance": None}

    def rollout_func(prompts: list, trainer) -> dict[str, list]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        eng = state["engine"]
        if eng is None or eng.model is not model:
            eng = state["engine"] = RolloutEngine(model, trainer.processing_class, max_batch_size=max_batch_size,
                                                  **engine_kwargs)
        if state["step"] != trainer.state.global_step:  # weights moved since the last rollout
            eng.refresh()
            state["step"] = trainer.state.global_step
        args = trainer.args
        options = dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k or 0,
                       max_tokens=args.max_completion_length, stop=tuple(stop_strings))
        for key, value in (args.generation_kwargs or {}).items():  # generate's names -> Sampling's
            if key in ("temperature", "top_p", "top_k", "max_new_tokens", "stop_strings"):
                name = {"max_new_tokens": "max_tokens", "stop_strings": "stop"}.get(key, key)
                options[name] = tuple(value) if key == "stop_strings" else value
        base = seed if seed is not None else args.seed
        call_seed = base * 1_000_003 + trainer.state.global_step * 1_009 + state["calls"]
        state["calls"] += 1
        tokenizer = trainer.processing_class
        template_kwargs = getattr(trainer, "chat_template_kwargs", None)
        prompt_ids = [_prompt_ids(tokenizer, p, template_kwargs) for p in prompts]
        drafted, accepted = eng.stats["drafted"], eng.stats["accepted"]
        completions = generate_grouped(eng, prompt_ids, Sampling(seed=call_seed, **options))
        if eng.stats["drafted"] > drafted:  # MTP self-speculative rollouts: this call's acceptance rate
            state["acceptance"] = (eng.stats["accepted"] - accepted) / (eng.stats["drafted"] - drafted)
        return {
            "prompt_ids": prompt_ids,
            "completion_ids": [c.token_ids for c in completions],
            "logprobs": [c.logprobs for c in completions],
        }

    rollout_func.state = state  # the engine, for inspection
    return rollout_func
