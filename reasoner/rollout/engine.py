"""Fast batched rollouts for transformers' DeepseekV3ForCausalLM: absorbed MLA over a compressed latent cache.

transformers' DeepseekV3Attention caches the compressed latent but re-expands the whole cache through
`kv_b_proj` into full per-head keys and values at every decode step (O(T * H * (nope + v) * C) work and
memory traffic per token). DeepSeek's own inference (`inference/model.py`, attn_impl="absorb") instead folds
`kv_b_proj` into the query and output sides, so attention runs directly against the cached latent:

    score_h(t) = scale * (q_nope_h . W_uk_h c_t + q_rope_h . k_rope_t)
               = (scale * W_uk_h^T W_qn_h x) . c_t + (scale * W_qr_h x) . k_rope_t
    out        = W_o [ W_uv_h sum_t p_h(t) c_t ]_h = (W_o W_uv) [ sum_t p_h(t) c_t ]_h

Per layer and token, the cache holds only `kv_lora_rank` latent + `qk_rope_head_dim` rope-key values (one
row shared by all heads), in one preallocated static buffer [layers, batch, max_len, C + R].

Only the absorbed matrices (`W_q_abs` = [scale W_uk^T W_qn ; scale W_qr], `W_o_abs` = W_o W_uv) are
derived weights; everything else (embeddings, norms, kv_a, MLP/MoE, lm_head) is read straight from the
model, so optimizer steps are seen automatically. The absorbed matrices are recomputed when any of their
source parameters changes: a cheap check of the parameters' version counters and storage pointers runs
at every `generate` call (in-place optimizer updates bump the version counter), and `refresh()` forces it.

The MLP / MoE blocks are the model's own modules (router with sigmoid scores, e_score_correction_bias,
group-limited top-k, norm_topk_prob, routed_scaling_factor; experts; shared experts), so routing is exactly
transformers'. RoPE cos/sin tables come from the model's own rotary embedding (so rope scaling such as YaRN's
attention factor is the same), the softmax scale is the attention module's own `scaling` (YaRN mscale
included), and `rope_interleave` is handled by permuting the rope rows of the absorbed query matrix and
de-interleaving the rope key once, before it is cached; this is the same arithmetic as transformers'
`apply_rotary_pos_emb_interleave`.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from reasoner.rollout.sampling import Sampling, sample


@dataclass
class Completion:
    """One sampled continuation of one prompt."""

    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    token_ids: list[int]  # includes the EOS token / the tokens that completed a stop string
    text: str  # decoded completion (special tokens skipped); ends with the stop string when one fired
    finish_reason: str  # "eos" | "stop" | "length"
    logprobs: list[float] = field(default_factory=list)  # of each token under the sampling distribution
    logits: torch.Tensor | None = None  # [len(token_ids), vocab] raw logits, only with return_logits=True


class _Layer:
    """References into one decoder layer (no copies) plus its absorbed attention matrices."""

    __slots__ = ("attn", "mlp", "ln1_w", "ln1_eps", "ln2_w", "ln2_eps", "wq_abs", "wo_abs")

    def __init__(self, layer):
        self.attn = layer.self_attn
        self.mlp = layer.mlp
        self.ln1_w, self.ln1_eps = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
        self.ln2_w, self.ln2_eps = layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon
        self.wq_abs = self.wo_abs = None


class _MTPRefs:
    """References into the MTP depth-1 layer: its block plus enorm, hnorm, eh_proj and shared_head.norm."""

    def __init__(self, layer):
        self.layer = _Layer(layer)
        self.enorm = (layer.enorm.weight, layer.enorm.variance_epsilon)
        self.hnorm = (layer.hnorm.weight, layer.hnorm.variance_epsilon)
        self.eh_proj = layer.eh_proj.weight
        self.head_norm = (layer.shared_head.norm.weight, layer.shared_head.norm.variance_epsilon)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # DeepseekV3RMSNorm: normalize in float32, cast back, then scale by the weight.
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return weight * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


def _rope_pairs(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """RoPE on adjacent pairs (x0, x1), (x2, x3), ... as a complex product; freqs: complex, broadcast to x."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * freqs).flatten(-2).to(x.dtype)


class RolloutEngine:
    """Batched sampling from a DeepseekV3ForCausalLM with absorbed MLA and a static compressed-latent cache.

    engine = RolloutEngine(model, tokenizer)
    completions = engine.generate([[1, 2, 3], [4, 5]], max_new_tokens=64, temperature=1.0, num_samples=8)
    """

    def __init__(self, model, tokenizer=None, *, max_batch_size: int = 64, eos_token_ids=None,
                 pad_token_id: int | None = None, compact: bool = True,
                 prefill_budget: int = 1 << 24):
        self.model = model
        self.tokenizer = tokenizer
        c = model.config
        self.config = c
        self.num_heads = c.num_attention_heads
        self.kv_rank = c.kv_lora_rank
        self.rope_dim = c.qk_rope_head_dim
        self.nope_dim = c.qk_nope_head_dim
        self.v_dim = c.v_head_dim
        self.interleave = bool(getattr(c, "rope_interleave", False))
        self.max_batch_size = max_batch_size
        self.compact = compact
        self.prefill_budget = prefill_budget
        self.eos_token_ids = self._resolve_eos(eos_token_ids, tokenizer)
        if pad_token_id is None:
            pad_token_id = getattr(model.generation_config, "pad_token_id", None)
        if pad_token_id is None and tokenizer is not None:
            pad_token_id = tokenizer.pad_token_id
        self.pad_token_id = int(pad_token_id if pad_token_id is not None else (self.eos_token_ids or [0])[0])
        inner = model.model
        self.layers = [_Layer(layer) for layer in inner.layers[: c.num_hidden_layers]]
        # The first MTP depth (reasoner/mtp.py), if the model has one: the draft model of speculative decoding.
        # Its attention is absorbed like the others' and caches at index len(self.layers).
        extra = inner.layers[c.num_hidden_layers:]
        self.mtp = _MTPRefs(extra[0]) if len(extra) else None
        self._absorbed = self.layers + ([self.mtp.layer] if self.mtp else [])
        self._embed = inner.embed_tokens
        self._norm = inner.norm
        self._lm_head = model.lm_head
        self._rotary = inner.rotary_emb
        # The rope part of queries and cached keys is kept in adjacent-pair layout, rotated as complex numbers
        # (DeepSeek's own layout). With rope_interleave the weights already emit pairs; otherwise transformers
        # rotates (i, i + R/2) together, so those rows are permuted into pairs (dot products are unchanged).
        half = self.rope_dim // 2
        self._rope_perm = None if self.interleave else torch.stack(
            (torch.arange(half), torch.arange(half) + half), dim=-1).flatten()
        self._signature = None
        self._cache: torch.Tensor | None = None  # [layers, batch, max_len, kv_rank + rope_dim]
        self._rope_tables: torch.Tensor | None = None
        self.stats = {"prefill_rows": 0, "decode_steps": 0, "compactions": 0, "refreshes": 0,
                      "drafted": 0, "accepted": 0}

    # ----------------------------------------------------------------------------------------- weights
    def _resolve_eos(self, eos_token_ids, tokenizer) -> list[int]:
        if eos_token_ids is None:
            eos_token_ids = getattr(self.model.generation_config, "eos_token_id", None)
        if eos_token_ids is None and tokenizer is not None:
            eos_token_ids = tokenizer.eos_token_id
        if eos_token_ids is None:
            eos_token_ids = self.config.eos_token_id
        if eos_token_ids is None:
            return []
        return [int(eos_token_ids)] if isinstance(eos_token_ids, int) else [int(e) for e in eos_token_ids]

    @property
    def acceptance_rate(self) -> float | None:
        """Share of MTP drafts the main model accepted, over this engine's speculative decoding so far."""
        return self.stats["accepted"] / self.stats["drafted"] if self.stats["drafted"] else None

    def _absorb_sources(self):
        for layer in self._absorbed:
            a = layer.attn
            yield (a.q_proj if a.q_proj is not None else a.q_b_proj).weight
            yield a.kv_b_proj.weight
            yield a.o_proj.weight

    def _current_signature(self):
        # Version counters catch ordinary in-place updates, but fused optimizers (AdamW(fused=True), the
        # Trainer's default on some setups) and `.data` writes do not bump them, so a float64 checksum of each
        # source matrix (one cheap read of a few attention matrices) is part of the signature as well.
        with torch.no_grad():
            return tuple((p.data_ptr(), p._version, p.dtype, p.device, float(p.detach().sum(dtype=torch.float64)))
                         for p in self._absorb_sources())

    @property
    def device(self) -> torch.device:
        return self._lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._lm_head.weight.dtype

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the absorbed matrices from the model's current weights.

        `generate` calls this by itself whenever the source weights changed (version counter, storage or
        checksum differs); call it directly after an optimizer step to make the refresh explicit."""
        H, C, nope, v, R = self.num_heads, self.kv_rank, self.nope_dim, self.v_dim, self.rope_dim
        for layer in self._absorbed:
            a = layer.attn
            wq = (a.q_proj if a.q_proj is not None else a.q_b_proj).weight
            dtype = wq.dtype
            wq = wq.detach().float().view(H, nope + R, -1)
            wkv_b = a.kv_b_proj.weight.detach().float().view(H, nope + v, C)
            w_uk, w_uv = wkv_b[:, :nope], wkv_b[:, nope:]
            q_abs = torch.einsum("hdc,hdi->hci", w_uk, wq[:, :nope])  # [H, C, in]
            q_rope = wq[:, nope:]  # [H, R, in]
            if self._rope_perm is not None:  # rotate_half layout (i, i + R/2) -> adjacent pairs
                q_rope = q_rope[:, self._rope_perm]
            layer.wq_abs = (torch.cat((q_abs, q_rope), dim=1) * a.scaling).reshape(H * (C + R), -1).to(dtype)
            wo = a.o_proj.weight.detach().float()
            wo = wo.view(wo.shape[0], H, v)
            layer.wo_abs = torch.einsum("ohv,hvc->ohc", wo, w_uv).reshape(wo.shape[0], H * C).to(dtype)
        self._signature = self._current_signature()
        self._rope_tables = None
        self.stats["refreshes"] += 1

    def _maybe_refresh(self) -> None:
        if self._signature != self._current_signature():
            self.refresh()

    # ----------------------------------------------------------------------------------------- buffers
    def _ensure_cache(self, batch: int, length: int) -> torch.Tensor:
        cache = self._cache
        if (cache is None or cache.shape[1] < batch or cache.shape[2] < length or cache.dtype != self.dtype
                or cache.device != self.device):
            if cache is not None:
                batch, length = max(batch, cache.shape[1]), max(length, cache.shape[2])
            length = -(-length // 64) * 64
            self._cache = None
            self._cache = torch.zeros(len(self._absorbed), batch, length, self.kv_rank + self.rope_dim,
                                      dtype=self.dtype, device=self.device)
        return self._cache

    def _rope_table(self, length: int) -> torch.Tensor:
        """Complex rotations [length, R/2] from the model's own rotary embedding."""
        if self._rope_tables is None or self._rope_tables.shape[0] < length:
            length = max(-(-length // 256) * 256, 256)
            probe = torch.zeros(1, dtype=self.dtype, device=self.device)
            positions = torch.arange(length, device=self.device)[None]
            cos, sin = self._rotary(probe, positions)  # the model's own rope: scaling types, attention factor
            half = self.rope_dim // 2  # cos/sin are cat(freqs, freqs) (x attention factor): one half is enough
            self._rope_tables = torch.complex(cos[0, :, :half].float(), sin[0, :, :half].float())
        return self._rope_tables

    def cache_bytes_per_token(self) -> int:
        """Bytes of KV cache per token (all layers) held by this engine."""
        return len(self.layers) * (self.kv_rank + self.rope_dim) * torch.finfo(self.dtype).bits // 8

    # ----------------------------------------------------------------------------------------- forward
    def _attention(self, layer: _Layer, li: int, h, freqs, mask, write) -> torch.Tensor:
        """Absorbed MLA. h: [B, S, hidden]; freqs: complex [B, S, R/2]; mask: additive, broadcast to [B, S, 1, T].

        write(li, latent [B, S, C], k_rope [B, S, R]) stores the new cache rows and returns the keys [B, T, C+R].
        """
        a = layer.attn
        B, S, _ = h.shape
        H, C, R = self.num_heads, self.kv_rank, self.rope_dim
        if a.q_proj is not None:
            q_in = h
        else:
            q_in = _rms_norm(a.q_a_proj(h), a.q_a_layernorm.weight, a.q_a_layernorm.variance_epsilon)
        q = F.linear(q_in, layer.wq_abs).view(B, S, H, C + R)  # [absorbed nope | rope], softmax scale folded in
        q[..., C:] = _rope_pairs(q[..., C:], freqs[:, :, None])

        kv = a.kv_a_proj_with_mqa(h)
        latent = _rms_norm(kv[..., :C], a.kv_a_layernorm.weight, a.kv_a_layernorm.variance_epsilon)
        k_rope = kv[..., C:] if self._rope_perm is None else kv[..., C:][..., self._rope_perm]
        keys = write(li, latent, _rope_pairs(k_rope, freqs))  # [B, T, C+R]

        scores = torch.bmm(q.view(B, S * H, C + R), keys.transpose(1, 2))  # [B, S*H, T]
        scores = scores.view(B, S, H, -1) + mask
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(keys.dtype)
        out = torch.bmm(probs.view(B, S * H, -1), keys[..., :C])  # [B, S*H, C]
        return F.linear(out.view(B, S, H * C), layer.wo_abs, a.o_proj.bias)

    def _block(self, layer: _Layer, li: int, x, freqs, mask, write) -> torch.Tensor:
        h = _rms_norm(x, layer.ln1_w, layer.ln1_eps)
        x = x + self._attention(layer, li, h, freqs, mask, write)
        h = _rms_norm(x, layer.ln2_w, layer.ln2_eps)
        return x + layer.mlp(h)  # the model's own MLP / MoE (router, experts, shared)

    def _trunk(self, ids, freqs, mask, write) -> torch.Tensor:
        """The residual stream after the last decoder layer (before the final norm): [B, S, hidden]."""
        x = self._embed(ids)
        for li, layer in enumerate(self.layers):
            x = self._block(layer, li, x, freqs, mask, write)
        return x

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return _rms_norm(x, self._norm.weight, self._norm.variance_epsilon)

    def _forward(self, ids, freqs, mask, write) -> torch.Tensor:
        """Logits for the last position: [B, vocab]."""
        return self._lm_head(self._final_norm(self._trunk(ids, freqs, mask, write)[:, -1]))

    def _mtp_forward(self, ids, hidden, freqs, mask, write) -> torch.Tensor:
        """The MTP depth-1 block: token ids [B, S] (token i+1 at slot i) and the main model's normed hidden
        state [B, S, H] at those slots -> its hidden state [B, S, H] (before shared_head.norm)."""
        m = self.mtp
        x = F.linear(torch.cat((_rms_norm(self._embed(ids), *m.enorm), _rms_norm(hidden, *m.hnorm)), dim=-1),
                     m.eh_proj)
        return self._block(m.layer, len(self.layers), x, freqs, mask, write)

    def _mtp_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._lm_head(_rms_norm(x, *self.mtp.head_norm))

    # ----------------------------------------------------------------------------------------- generate
    @torch.inference_mode()
    def generate(self, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int | None = None, stop_strings=(),
                 num_samples: int = 1, ignore_eos: bool = False, return_logits: bool = False,
                 max_time: float | None = None, speculative: bool | None = None) -> list[Completion]:
        """num_samples completions per prompt, prompt-major (p0s0, p0s1, ..., p1s0, ...).

        The num_samples completions of one prompt share one prefill (its latent cache rows are copied).
        temperature=0 is greedy. With return_logits, each Completion gets `.logits` ([steps, vocab] raw
        float32 logits of every step, as `model.generate(output_logits=True)` returns them).
        max_time (seconds, like generate's) ends decoding early; unfinished rows then report "length".
        speculative (default: whenever the model has an MTP module) drafts with MTP and verifies in the same
        forward (reasoner/rollout/speculative.py): greedy output is token for token the same, sampled output
        follows the same distribution; `acceptance_rate` reports the share of drafts accepted.
        """
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("empty prompt")
        if stop_strings and self.tokenizer is None:
            raise ValueError("stop_strings need a tokenizer")
        if isinstance(stop_strings, str):
            stop_strings = (stop_strings,)
        params = Sampling(temperature, top_p, top_k)
        self._maybe_refresh()
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        per_chunk = max(1, self.max_batch_size // num_samples)
        deadline = None if max_time is None else time.perf_counter() + max_time
        if speculative is None:
            speculative = self.mtp is not None
        if speculative and self.mtp is None:
            raise ValueError("speculative decoding needs a model with an MTP module (num_nextn_predict_layers)")
        run = self._generate_chunk
        if speculative:
            from reasoner.rollout.speculative import generate_chunk_speculative

            run = functools.partial(generate_chunk_speculative, self)
        results: list[Completion] = []
        for start in range(0, len(prompt_ids), per_chunk):
            chunk = [list(map(int, p)) for p in prompt_ids[start:start + per_chunk]]
            results += run(chunk, start, num_samples, max_new_tokens, params, generator,
                                            tuple(stop_strings), ignore_eos, return_logits, deadline)
        return results

    def _prompt_batch(self, prompts, min_len: int = 1):
        """Left-padded ids [Np, P] on the device and the padding per prompt."""
        lens = torch.tensor([len(p) for p in prompts], device=self.device)
        P = max(int(lens.max()), min_len)
        ids = torch.full((len(prompts), P), self.pad_token_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, P - len(p):] = torch.tensor(p)
        return ids.to(self.device), P - lens

    def _prefill_mask(self, pad: torch.Tensor, P: int) -> torch.Tensor:
        """Additive causal mask over the prompts' own slots, left padding hidden: [prompts, P, 1, P]."""
        ar = torch.arange(P, device=pad.device)
        causal = ar[None, :] <= ar[:, None]
        eye = torch.eye(P, dtype=torch.bool, device=pad.device)  # pad queries see themselves: no all-masked rows
        allowed = (causal[None] & (ar[None, None, :] >= pad[:, None, None])) | eye[None]
        mask = torch.zeros(len(pad), P, 1, P, dtype=torch.float32, device=pad.device)
        return mask.masked_fill_(~allowed[:, :, None, :], float("-inf"))

    def _prefill(self, ids, pad, G, cache, rot, keep_hidden: bool = False):
        """Prefill once per prompt, latent rows copied to each of its G samples. Returns the last position's
        logits [Np, vocab], or with keep_hidden the final-normed hidden states of every position [Np, P, H].

        Prompts go through in groups small enough that the [prompts, P, heads, P] score tensor stays within
        prefill_budget elements."""
        Np, P = ids.shape
        ar = torch.arange(P, device=ids.device)
        step = max(1, self.prefill_budget // (P * P * self.num_heads))
        out = []
        for a in range(0, Np, step):
            b = min(Np, a + step)
            pos = (ar[None] - pad[a:b, None]).clamp(min=0)
            sub_rep = torch.arange(b - a, device=ids.device).repeat_interleave(G)

            def write_prefill(li, latent, k_rope, _a=a, _b=b, _rep=sub_rep):
                rows = torch.cat((latent, k_rope), dim=-1)
                cache[li, _a * G:_b * G, :P] = rows[_rep]
                return rows

            args = (ids[a:b], rot[pos], self._prefill_mask(pad[a:b], P), write_prefill)
            out.append(self._final_norm(self._trunk(*args)) if keep_hidden else self._forward(*args))
        self.stats["prefill_rows"] += Np
        return torch.cat(out)

    def _generate_chunk(self, prompts, first_index, G, max_new, params, generator, stop_strings, ignore_eos,
                        return_logits, deadline=None) -> list[Completion]:
        dev = self.device
        Np = len(prompts)
        B = Np * G
        ids, pad = self._prompt_batch(prompts)  # pad: left padding per prompt
        P = ids.shape[1]
        T = P + max_new
        cache = self._ensure_cache(B, T)
        rot = self._rope_table(T)
        rep = torch.arange(Np, device=dev).repeat_interleave(G)  # cache row -> prompt
        logits = self._prefill(ids, pad, G, cache, rot)[rep].float()

        # ---- decode
        slots = torch.arange(cache.shape[2], device=dev)
        dmask = torch.zeros(B, cache.shape[2], dtype=torch.float32, device=dev)
        dmask.masked_fill_(slots[None] < pad[rep][:, None], float("-inf"))
        position = (P - pad[rep]).clone()  # rope position of the next token per row
        rows = torch.arange(B, device=dev)  # active row -> output row (changes on compaction)
        out_tok = torch.full((B, max_new), self.pad_token_id, dtype=torch.long, device=dev)
        out_lp = torch.zeros(B, max_new, dtype=torch.float32, device=dev)
        all_logits = [] if return_logits else None
        eos = torch.tensor(self.eos_token_ids or [-1], device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        reason = ["length"] * B
        n_tokens = [max_new] * B
        stop_state = _StopChecker(self.tokenizer, stop_strings, B) if stop_strings else None
        nb = B  # rows still in the batch

        for t in range(max_new):
            if all_logits is not None:
                full = torch.zeros(B, logits.shape[-1], dtype=torch.float32, device=dev)
                full[rows] = logits
                all_logits.append(full)
            tok, lp = sample(logits, params, generator)
            tok = tok.masked_fill(done, self.pad_token_id)
            if nb == B:
                out_tok[:, t], out_lp[:, t] = tok, lp
            else:
                out_tok[rows, t], out_lp[rows, t] = tok, lp
            newly = []
            if not ignore_eos:
                hit = torch.isin(tok, eos) & ~done
                if bool(hit.any()):
                    for r in rows[hit].tolist():
                        reason[r], n_tokens[r] = "eos", t + 1
                    done |= hit
            if stop_state is not None:
                for local, r in stop_state.step(rows.tolist(), tok.tolist(), done.tolist()):
                    reason[r], n_tokens[r] = "stop", t + 1
                    newly.append(local)
                if newly:
                    done[torch.tensor(newly, device=dev)] = True
            if t == max_new - 1:
                break
            n_active = nb - int(done.sum())
            if n_active == 0:
                break
            if deadline is not None and time.perf_counter() > deadline:
                for r in rows[~done].tolist():
                    n_tokens[r] = t + 1
                break
            s = P + t  # cache slot of the token being fed
            if self.compact and n_active <= nb // 2 and nb >= 8:
                keep = (~done).nonzero().squeeze(-1)
                cache[:, :n_active, :s] = cache[:, keep, :s]
                dmask[:n_active] = dmask[keep]
                position, rows, tok, done = position[keep], rows[keep], tok[keep], done[keep]
                nb = n_active
                self.stats["compactions"] += 1
            step_mask = dmask[:nb, None, None, : s + 1]

            def write_decode(li, latent, k_rope, _s=s, _nb=nb, C=self.kv_rank):
                cache[li, :_nb, _s, :C] = latent[:, 0]
                cache[li, :_nb, _s, C:] = k_rope[:, 0]
                return cache[li, :_nb, : _s + 1]

            logits = self._forward(tok[:, None], rot[position][:, None], step_mask, write_decode).float()
            position = position + 1
            self.stats["decode_steps"] += 1

        out_tok, out_lp = out_tok.tolist(), out_lp.tolist()
        results = []
        for r in range(B):
            p = int(rep[r])
            ids_r = out_tok[r][: n_tokens[r]]
            text = self.tokenizer.decode(ids_r, skip_special_tokens=True) if self.tokenizer is not None else ""
            if reason[r] == "stop" and stop_state is not None:
                text = stop_state.truncate(text)
            c = Completion(first_index + p, r % G, prompts[p], ids_r, text, reason[r], out_lp[r][: n_tokens[r]])
            if all_logits is not None:
                c.logits = torch.stack([lg[r] for lg in all_logits[: n_tokens[r]]])
            results.append(c)
        return results


class _StopChecker:
    """Per-row stop-string detection on the decoded tail of each completion."""

    def __init__(self, tokenizer, stop_strings, batch):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.window = max(len(s) for s in self.stop_strings) + 1  # tokens decode to >= 1 character
        self.tokens: list[list[int]] = [[] for _ in range(batch)]

    def step(self, rows, toks, done):
        """Yield (local index, row) of active rows whose text now contains a stop string."""
        for local, (r, tok, d) in enumerate(zip(rows, toks, done)):
            if d:
                continue
            seq = self.tokens[r]
            seq.append(tok)
            tail = self.tokenizer.decode(seq[-self.window:], skip_special_tokens=False)
            if any(s in tail for s in self.stop_strings):
                yield local, r

    def truncate(self, text: str) -> str:
        ends = [text.find(s) + len(s) for s in self.stop_strings if s in text]
        return text[: min(ends)] if ends else text
