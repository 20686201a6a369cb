"""Batched token sampling: temperature, top-k, top-p, seeded, with the log-probability of each pick.

The processing order is transformers' own (temperature -> top-k -> top-p), so a seeded run here and a
`model.generate(do_sample=True, ...)` run draw from the same distribution. `temperature == 0` is greedy.
The returned log-probabilities are those of the *processed* distribution the token was drawn from
(vLLM's `processed_logprobs`), which is what GRPO's importance-sampling correction compares against.
"""
from __future__ import annotations

import torch

from reasoner.sampling import Sampling


def process_logits(logits: torch.Tensor, params: Sampling) -> torch.Tensor:
    """Float32 logits with temperature applied and filtered tokens set to -inf. logits: [batch, vocab]."""
    logits = logits.float()
    if params.greedy:
        return logits
    if params.temperature != 1.0:
        logits = logits / params.temperature
    vocab = logits.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        # transformers' TopPLogitsWarper: drop the low tail whose cumulative mass is <= 1 - top_p,
        # always keeping at least the most likely token.
        sorted_logits, sorted_idx = torch.sort(logits, descending=False, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - params.top_p)
        remove_sorted[..., -1:] = False
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def sample(logits: torch.Tensor, params: Sampling, generator: torch.Generator | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [batch], logprobs [batch]) for one decoding step."""
    processed = process_logits(logits, params)
    logprobs = torch.log_softmax(processed, dim=-1)
    if params.greedy:
        tokens = processed.argmax(dim=-1)
    else:
        # Exponential-race sampling: argmax(p / E), E ~ Exp(1) i.i.d., picks token i with probability p_i
        # (the same distribution as torch.multinomial, as in gpt-fast / vLLM) without multinomial's CPU cost.
        noise = torch.empty_like(logprobs).exponential_(1.0, generator=generator)
        tokens = (logprobs.exp() / noise).argmax(dim=-1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


def accept_draft(target_logits: torch.Tensor, draft_logits: torch.Tensor, draft: torch.Tensor,
                 params: Sampling, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Speculative sampling (Leviathan et al. 2023; Chen et al. 2023) for one drafted token per row.

    The draft token d ~ q was drawn from `draft_logits`; the target distribution p comes from `target_logits`
    (both processed by `params`). Keep d with probability min(1, p(d) / q(d)), else draw from
    norm(max(0, p - q)): the token then follows p exactly, whatever q is. Greedy: keep d iff it is p's argmax.
    Returns (tokens, accepted, logprobs under p), each [batch]."""
    logp = torch.log_softmax(process_logits(target_logits, params), dim=-1)
    if params.greedy:
        tokens = logp.argmax(dim=-1)
        accepted = tokens == draft
    else:
        p = logp.exp()
        q = torch.softmax(process_logits(draft_logits, params), dim=-1)
        pd, qd = p.gather(-1, draft[:, None]).squeeze(-1), q.gather(-1, draft[:, None]).squeeze(-1)
        u = torch.rand(pd.shape, generator=generator, device=pd.device)
        accepted = u * qd < pd
        residual = (p - q).clamp(min=0)
        residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p)
        noise = torch.empty_like(residual).exponential_(1.0, generator=generator)
        tokens = torch.where(accepted, draft, (residual / noise).argmax(dim=-1))
    return tokens, accepted, logp.gather(-1, tokens[:, None]).squeeze(-1)
