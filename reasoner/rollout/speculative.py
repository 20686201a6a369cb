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

import time

import torch

from reasoner.rollout.sampling import accept_draft, sample


def generate_chunk_speculative(engine, prompts, first_index, G, max_new, params, generator, stop_strings,
                               ignore_eos, return_logits, deadline=None):
    dev = engine.device
    Np, B = len(prompts), len(prompts) * G
    ids, pad = engine._prompt_batch(prompts, min_len=2)  # >= 2 slots: the first draft reads slots P-2, P-1
    P = ids.shape[1]
    cache = engine._ensure_cache(B, P + max_new + 2)
    rot = engine._rope_table(P + max_new + 2)
    rep = torch.arange(Np, device=dev).repeat_interleave(G)  # cache row -> prompt
    hidden = engine._prefill(ids, pad, G, cache, rot, keep_hidden=True)  # [Np, P, H]
    _mtp_prefill(engine, ids, hidden, pad, G, cache, rot)
    logits = engine._lm_head(hidden[:, -1])[rep].float()

    out = _Output(engine, B, max_new, stop_strings, ignore_eos, return_logits)
    tok, lp = sample(logits, params, generator)
    out.emit(tok, lp, torch.ones(B, dtype=torch.bool, device=dev), logits)
    state = _State(n=torch.full((B,), P, device=dev), last=tok, prev=ids[rep, P - 1], h2=hidden[rep, P - 2:],
                   pad=pad[rep])
    while not bool(out.done.all()):
        if deadline is not None and time.perf_counter() > deadline:
            break
        draft_logits, draft = _draft(engine, state, cache, rot, params, generator)
        target, hv = _verify(engine, state, draft, cache, rot)
        x1, accepted, lp1 = accept_draft(target[:, 0], draft_logits, draft, params, generator)
        x2, lp2 = sample(target[:, 1], params, generator)
        active = out.active()
        engine.stats["drafted"] += int(active.sum())
        engine.stats["accepted"] += int((accepted & active).sum())
        engine.stats["decode_steps"] += 1
        out.emit(x1, lp1, active, target[:, 0])
        out.emit(x2, lp2, active & accepted, target[:, 1])
        state.advance(active, accepted, x1, x2, hv)
        _maybe_compact(engine, state, out, cache)
    return out.completions(engine.tokenizer, prompts, rep, G, first_index)


def _maybe_compact(engine, state, out, cache):
    """Once half the rows (of at least 8) are done, move the live ones to the front and decode only those."""
    active = out.active()
    nb, n_active = len(active), int(active.sum())
    if not engine.compact or nb < 8 or n_active > nb // 2 or n_active == 0:
        return
    keep = active.nonzero().squeeze(-1)
    top = int(state.n.max()) + 2
    cache[:, :n_active, :top] = cache[:, keep, :top]  # main layers and the MTP block's
    state.select(keep)
    out.rows = out.rows[keep]
    engine.stats["compactions"] += 1


class _State:
    """Per row: n (cache slot of `last`), last, prev (the token at n-1), h2 (main hidden at n-2, n-1), pad."""

    def __init__(self, n, last, prev, h2, pad):
        self.n, self.last, self.prev, self.h2, self.pad = n, last, prev, h2, pad

    def advance(self, active, accepted, x1, x2, hv):
        """Accepted rows move by 2 (prev=x1, last=x2), rejected ones by 1 (prev=last, last=x1); done rows stay."""
        acc = accepted & active
        rej = ~accepted & active
        h2_rej = torch.stack((self.h2[:, 1], hv[:, 0]), dim=1)
        self.h2 = torch.where(acc[:, None, None], hv, torch.where(rej[:, None, None], h2_rej, self.h2))
        self.prev = torch.where(acc, x1, torch.where(rej, self.last, self.prev))
        self.last = torch.where(acc, x2, torch.where(rej, x1, self.last))
        self.n = self.n + active.long() + acc.long()

    def select(self, keep):
        self.n, self.last, self.prev, self.h2, self.pad = (
            t[keep] for t in (self.n, self.last, self.prev, self.h2, self.pad))


def _step_inputs(engine, state, slots, cache, rot, li_of_write=None):
    """(rope freqs, additive mask, cache writer) for queries at per-row `slots` [B, S]."""
    B = slots.shape[0]
    keys = int(slots.max()) + 1
    k = torch.arange(keys, device=slots.device)
    allowed = ((k >= state.pad[:, None, None]) & (k <= slots[:, :, None])) | (k == slots[:, :, None])
    mask = torch.zeros(B, slots.shape[1], 1, keys, dtype=torch.float32, device=slots.device)
    mask.masked_fill_(~allowed[:, :, None, :], float("-inf"))
    rows = torch.arange(B, device=slots.device)[:, None]

    def write(li, latent, k_rope):
        cache[li, rows, slots] = torch.cat((latent, k_rope), dim=-1)
        return cache[li, :B, :keys]

    return rot[(slots - state.pad[:, None]).clamp(min=0)], mask, write


def _draft(engine, state, cache, rot, params, generator):
    """MTP at slots n-2, n-1 -> (draft logits [B, vocab], draft tokens [B]) for slot n+1."""
    slots = torch.stack((state.n - 2, state.n - 1), dim=1)
    freqs, mask, write = _step_inputs(engine, state, slots, cache, rot)
    x = engine._mtp_forward(torch.stack((state.prev, state.last), dim=1), state.h2, freqs, mask, write)
    logits = engine._mtp_logits(x[:, 1]).float()
    return logits, sample(logits, params, generator)[0]


def _verify(engine, state, draft, cache, rot):
    """Main model on [last, draft] at slots n, n+1 -> (logits [B, 2, vocab], normed hidden [B, 2, H])."""
    slots = torch.stack((state.n, state.n + 1), dim=1)
    freqs, mask, write = _step_inputs(engine, state, slots, cache, rot)
    hidden = engine._final_norm(engine._trunk(torch.stack((state.last, draft), dim=1), freqs, mask, write))
    return engine._lm_head(hidden).float(), hidden


def _mtp_prefill(engine, ids, hidden, pad, G, cache, rot):
    """The MTP block's cache for slots 0..P-3 (token i+1, main hidden i), once per prompt, copied to its G rows."""
    Np, P = ids.shape
    S = P - 2
    if S <= 0:
        return
    li = len(engine.layers)
    ar = torch.arange(S, device=ids.device)
    step = max(1, engine.prefill_budget // (S * S * engine.num_heads))  # as in engine._prefill
    for a in range(0, Np, step):
        b = min(Np, a + step)
        mask = engine._prefill_mask(pad[a:b], P)[:, :S, :, :S]
        pos = (ar[None] - pad[a:b, None]).clamp(min=0)
        rep = torch.arange(b - a, device=ids.device).repeat_interleave(G)

        def write(_li, latent, k_rope, _a=a, _b=b, _rep=rep):
            rows = torch.cat((latent, k_rope), dim=-1)
            cache[li, _a * G:_b * G, :S] = rows[_rep]
            return rows

        engine._mtp_forward(ids[a:b, 1:S + 1], hidden[a:b, :S], rot[pos], mask, write)


class _Output:
    """Tokens, log-probabilities and finish reasons per output row, filled one emitted token at a time.

    The decoding batch holds `rows` (batch row -> output row; fewer after compaction)."""

    def __init__(self, engine, B, max_new, stop_strings, ignore_eos, return_logits):
        from reasoner.rollout.engine import _StopChecker

        dev = engine.device
        self.max_new, self.ignore_eos = max_new, ignore_eos
        self.tok = torch.full((B, max_new), engine.pad_token_id, dtype=torch.long, device=dev)
        self.lp = torch.zeros(B, max_new, dtype=torch.float32, device=dev)
        self.count = torch.zeros(B, dtype=torch.long, device=dev)
        self.done = torch.zeros(B, dtype=torch.bool, device=dev)
        self.reason = ["length"] * B
        self.eos = torch.tensor(engine.eos_token_ids or [-1], device=dev)
        self.stop = _StopChecker(engine.tokenizer, stop_strings, B) if stop_strings else None
        self.logits = [[] for _ in range(B)] if return_logits else None
        self.rows = torch.arange(B, device=dev)

    def active(self) -> torch.Tensor:
        """Per batch row: still decoding."""
        return ~self.done[self.rows]

    def emit(self, tok, lp, valid, logits):
        """Append tok[i] (batch row i) to its output row where `valid` and the row is not done."""
        local = (valid & self.active()).nonzero().squeeze(-1)
        if local.numel() == 0:
            return
        rows, tok = self.rows[local], tok[local]
        at = self.count[rows]
        self.tok[rows, at], self.lp[rows, at] = tok, lp[local]
        self.count[rows] += 1
        if self.logits is not None:
            for i, r in zip(local.tolist(), rows.tolist()):
                self.logits[r].append(logits[i])
        if not self.ignore_eos:
            hit = rows[torch.isin(tok, self.eos)]
            for r in hit.tolist():
                self.reason[r] = "eos"
            self.done[hit] = True
        if self.stop is not None:
            for _, r in self.stop.step(rows.tolist(), tok.tolist(), self.done[rows].tolist()):
                self.reason[r] = "stop"
                self.done[r] = True
        self.done |= self.count >= self.max_new

    def completions(self, tokenizer, prompts, rep, G, first_index):
        from reasoner.rollout.engine import Completion

        toks, lps, counts = self.tok.tolist(), self.lp.tolist(), self.count.tolist()
        results = []
        for r, p in enumerate(rep.tolist()):
            ids_r = toks[r][: counts[r]]
            text = tokenizer.decode(ids_r, skip_special_tokens=True) if tokenizer is not None else ""
            if self.reason[r] == "stop":
                text = self.stop.truncate(text)
            c = Completion(first_index + p, r % G, prompts[p], ids_r, text, self.reason[r], lps[r][: counts[r]])
            if self.logits is not None:
                c.logits = torch.stack(self.logits[r])
            results.append(c)
        return results
