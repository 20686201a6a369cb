"""Self-speculative decoding with DeepSeek-V3's MTP module (reasoner/mtp.py) over the engine's latent cache.

Each row holds `last`, its newest token (sampled, not yet fed), at cache slot n. One step:

    draft   the MTP block reads (token at n-1, main hidden at n-2) and (last, main hidden at n-1) at slots
            n-2, n-1 and drafts d, the token after `last` (slot n+1)
    verify  the main model reads [last, d] at slots n, n+1 in one forward: logits for slots n+1 and n+2
    accept  speculative sampling keeps d (then the logits at n+1 give a bonus token) or replaces it
            (sampling.accept_draft); a row advances by 2 tokens or by 1

The main model's cache only ever holds accepted tokens below n (a rejected draft's slot is rewritten by the
next verify), so greedy output is the non-speculative output token for token, and sampled output follows
the same distribution. The MTP block's own latent cache sits at index len(engine.layers) of the engine's
cache; its slot n-2 is recomputed from unchanged inputs when a row advanced by one.
"""
from __future__ import annotations

import torch

from reasoner.rollout.output import Completion, Output
from reasoner.rollout.sampling import accept_draft, sample


def generate_chunk_speculative(engine, prompts: list[list[int]], first_index: int, request) -> list[Completion]:
    """engine._generate_chunk's speculative twin: prefill (main model and MTP block), then draft-verify steps."""
    G = request.num_samples
    ids, pad = engine._prompt_batch(prompts, min_len=2)  # >= 2 slots: the first draft reads slots P-2, P-1
    P = ids.shape[1]
    engine._reserve(len(prompts) * G, P + request.max_new + 2)
    hidden = engine.prefill(ids, pad, G)  # [Np, P, hidden], final-normed
    _mtp_prefill(engine, ids, hidden, pad, G)
    logits = engine._head(hidden[:, -1]).repeat_interleave(G, dim=0)  # [B, vocab]
    out = Output(engine, len(logits), request, first_row=first_index * G)
    tok, lp = sample(logits, request.params, request.generator)
    out.emit(tok, lp, logits)
    state = _State(n=torch.full_like(tok, P), last=tok, prev=ids[:, P - 1].repeat_interleave(G),
                   h2=hidden[:, P - 2:].repeat_interleave(G, dim=0), pad=pad.repeat_interleave(G))
    state.masks = _pad_masks(engine, state.pad, P)
    while not out.all_done() and not request.out_of_time():
        _step(engine, state, out, request)
        state.select(engine.compact_rows(out, int(state.n.max()) + 2, *state.tensors()))
    return out.completions(prompts, G, first_index)


def _step(engine, state, out: Output, request) -> None:
    """Draft one token per row, verify it with the main model, emit one or two tokens per row."""
    params, generator = request.params, request.generator
    draft_logits, draft = _draft(engine, state, params, generator)  # [B, vocab], [B]
    target, hidden = _verify(engine, state, draft)  # [B, 2, vocab], [B, 2, hidden]
    x1, accepted, lp1 = accept_draft(target[:, 0], draft_logits, draft, params, generator)  # [B] each
    x2, lp2 = sample(target[:, 1], params, generator)  # the bonus token after an accepted draft
    active = out.active()
    engine.stats["drafted"] += int(active.sum())
    engine.stats["accepted"] += int((accepted & active).sum())
    engine.stats["decode_steps"] += 1
    out.emit(x1, lp1, target[:, 0])
    out.emit(x2, lp2, target[:, 1], valid=accepted)
    state.advance(active, accepted, x1, x2, hidden)


class _State:
    """Per row: n (cache slot of `last`), last, prev (the token at n-1), h2 (main hidden at n-2, n-1), pad (left
    padding) and masks ([B, 2, slots], additive: -inf on the padding, for the main model and for the draft)."""

    def __init__(self, n, last, prev, h2, pad):
        self.n, self.last, self.prev, self.h2, self.pad, self.masks = n, last, prev, h2, pad, None

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.n, self.last, self.prev, self.h2, self.pad, self.masks

    def select(self, tensors) -> None:
        self.n, self.last, self.prev, self.h2, self.pad, self.masks = tensors

    def advance(self, active, accepted, x1, x2, hidden) -> None:
        """Accepted rows move by 2 (prev=x1, last=x2), rejected ones by 1 (prev=last, last=x1). Done rows keep
        their slot; their tokens are never emitted again, so what else they hold does not matter."""
        self.n = self.n + (accepted & active).long() + active.long()
        self.h2 = torch.where(accepted[:, None, None], hidden, torch.stack((self.h2[:, 1], hidden[:, 0]), dim=1))
        self.prev = torch.where(accepted, x1, self.last)
        self.last = torch.where(accepted, x2, x1)


def _pad_masks(engine, pad, P: int) -> torch.Tensor:
    """[B, 2, slots] additive: -inf on each row's left padding; [:, 0] for the main model, [:, 1] for the draft.
    A one-token prompt's first draft queries slot P-2, which is padding: the draft's mask leaves that slot
    visible, so no query sees nothing (it only shapes that row's drafts, never what is emitted)."""
    slots = torch.arange(engine._cache.shape[2], device=pad.device)
    masks = torch.zeros(len(pad), 2, len(slots), device=pad.device)
    masks.masked_fill_(slots < pad[:, None, None], float("-inf"))
    masks[:, 1, P - 2] = 0.0
    return masks


def _step_inputs(engine, state, slots, mask_index: int):
    """(rope freqs [B, S, 1, R/2], additive mask [B, S, 1, T], cache writer) for queries at per-row `slots` [B, S]."""
    B, keys = slots.shape[0], int(slots.max()) + 1
    k = torch.arange(keys, device=slots.device)
    mask = state.masks[:, mask_index, None, None, :keys].masked_fill(k > slots[:, :, None, None], float("-inf"))
    rows, cache = torch.arange(B, device=slots.device)[:, None], engine._cache

    def write(li, latent, k_rope):  # [B, S, C], [B, S, R]
        cache[li, rows, slots] = torch.cat((latent, k_rope), dim=-1)
        return cache[li, :B, :keys]

    return engine._rope_tables[(slots - state.pad[:, None]).clamp(min=0)][:, :, None], mask, write


def _draft(engine, state, params, generator):
    """MTP at slots n-2, n-1 -> (draft logits [B, vocab], draft tokens [B]) for slot n+1."""
    freqs, mask, write = _step_inputs(engine, state, torch.stack((state.n - 2, state.n - 1), dim=1), 1)
    x = engine._mtp_forward(torch.stack((state.prev, state.last), dim=1), state.h2, freqs, mask, write)
    logits = engine._mtp_logits(x[:, 1])
    return logits, (logits.argmax(dim=-1) if params.greedy else sample(logits, params, generator)[0])


def _verify(engine, state, draft):
    """Main model on [last, draft] at slots n, n+1 -> (logits [B, 2, vocab], normed hidden [B, 2, hidden])."""
    freqs, mask, write = _step_inputs(engine, state, torch.stack((state.n, state.n + 1), dim=1), 0)
    hidden = engine._final_norm(engine._trunk(torch.stack((state.last, draft), dim=1), freqs, mask, write))
    return engine._head(hidden), hidden


def _mtp_prefill(engine, ids, hidden, pad, G: int) -> None:
    """The MTP block's cache for slots 0..P-3 (token i+1, main hidden i), once per prompt, copied to its G rows."""
    S = ids.shape[1] - 2
    if S <= 0:
        return
    for a, b, freqs, mask, write in engine.prefill_groups(pad, S, G):
        engine._mtp_forward(ids[a:b, 1:S + 1], hidden[a:b, :S], freqs, mask, write)
