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

Derived weights: the absorbed matrices (`W_q_abs` = [scale W_uk^T W_qn ; scale W_qr], `W_o_abs` = W_o W_uv),
with kv_a's rows stacked under W_q_abs (one matmul gives the queries and the new cache row, and one in-place
rotation covers the rope part of both), and the packed experts of small FFNs (reasoner/rollout/ffn.py).
Everything else (embeddings, norms, routers, lm_head) is read straight from the model. The derived weights
are recomputed when any of their source parameters changes: a cheap check of the parameters' version
counters, storage pointers and checksums runs at every `generate` call, and `refresh()` forces it.

Routing is transformers' router arithmetic on the router's own parameters (sigmoid scores,
e_score_correction_bias, group-limited top-k, norm_topk_prob, routed_scaling_factor); MLP / MoE blocks too
large to pack run as the model's own modules. RoPE cos/sin tables come from the model's own rotary embedding
(so rope scaling such as YaRN's attention factor is the same), the softmax scale is the attention module's
own `scaling` (YaRN mscale included), and `rope_interleave` is handled by permuting the rope rows of the
absorbed query matrix and of kv_a into adjacent pairs; this is the same arithmetic as transformers'
`apply_rotary_pos_emb_interleave`.

The code follows gpt-fast's shape: `prefill` (the prompts once each, cache rows copied to their samples),
`decode_step` (one token per row), `sample` (reasoner/rollout/sampling.py) and the loop `_decode`; the
self-speculative loop with the MTP module is reasoner/rollout/speculative.py.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reasoner.rollout.ffn import FFN, as_float32
from reasoner.rollout.output import Completion, OnTokens, Output
from reasoner.rollout.sampling import sample
from reasoner.sampling import Sampling
from reasoner.rollout.speculative import generate_chunk_speculative

__all__ = ["Completion", "RolloutEngine"]


class _Layer:
    """References into one decoder layer (no copies) plus its derived matrices (set by `RolloutEngine.refresh`):
    w_in (applied to the normed input: the absorbed query heads and kv_a, or q_a and kv_a with q_lora_rank),
    wq_abs (q_lora_rank only: the absorbed query, applied to the normed q_a output) and wo_abs."""

    __slots__ = ("attn", "ffn", "ln1_w", "ln1_eps", "ln2_w", "ln2_eps", "w_in", "wq_abs", "wo_abs")

    def __init__(self, layer, config):
        self.attn = layer.self_attn
        self.ffn = FFN(layer.mlp, config)
        self.ln1_w, self.ln1_eps = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
        post = layer.post_attention_layernorm
        self.ln2_w, self.ln2_eps = post.weight, post.variance_epsilon
        self.w_in = self.wq_abs = self.wo_abs = None


class _MTPRefs:
    """References into the MTP depth-1 layer: its block plus enorm, hnorm, eh_proj and shared_head.norm."""

    def __init__(self, layer, config):
        self.layer = _Layer(layer, config)
        self.enorm = (layer.enorm.weight, layer.enorm.variance_epsilon)
        self.hnorm = (layer.hnorm.weight, layer.hnorm.variance_epsilon)
        self.eh_proj = layer.eh_proj.weight
        self.head_norm = (layer.shared_head.norm.weight, layer.shared_head.norm.variance_epsilon)


@dataclass
class _Request:
    """What one `generate` call asks for, shared by its chunks of prompts."""

    num_samples: int
    max_new: int
    params: Sampling
    generator: torch.Generator | None
    stop_strings: tuple[str, ...]
    ignore_eos: bool
    return_logits: bool
    deadline: float | None  # time.perf_counter() value
    on_tokens: OnTokens | None = None

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # DeepseekV3RMSNorm: normalize in float32, cast back, then scale by the weight.
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return weight * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


def _rope_(x: torch.Tensor, freqs: torch.Tensor) -> None:
    """RoPE in place on adjacent pairs (x0, x1), (x2, x3), ... as a complex product; freqs: complex, broadcast."""
    if x.dtype == torch.float32:
        torch.view_as_complex(x.unflatten(-1, (-1, 2))).mul_(freqs)
    else:  # no complex type for half precision: rotate in float32
        x.copy_(torch.view_as_real(torch.view_as_complex(x.float().unflatten(-1, (-1, 2))) * freqs).flatten(-2))


class RolloutEngine:
    """Batched sampling from a DeepseekV3ForCausalLM with absorbed MLA and a static compressed-latent cache.

    engine = RolloutEngine(model, tokenizer)
    completions = engine.generate([[1, 2, 3], [4, 5]], Sampling(temperature=1.0, max_tokens=64), num_samples=8)
    """

    def __init__(self, model, tokenizer=None, *, max_batch_size: int = 64, eos_token_ids=None,
                 pad_token_id: int | None = None, compact: bool = True,
                 prefill_budget: int = 1 << 24):
        c = model.config
        if getattr(c, "attention_bias", False):
            raise ValueError("the rollout engine absorbs bias-free attention projections (attention_bias=False)")
        self.model, self.tokenizer, self.config = model, tokenizer, c
        self.num_heads, self.kv_rank, self.rope_dim = c.num_attention_heads, c.kv_lora_rank, c.qk_rope_head_dim
        self.nope_dim, self.v_dim = c.qk_nope_head_dim, c.v_head_dim
        self.max_batch_size, self.compact, self.prefill_budget = max_batch_size, compact, prefill_budget
        self.eos_token_ids = self._resolve_eos(eos_token_ids, tokenizer)
        self.pad_token_id = self._resolve_pad(pad_token_id, tokenizer)
        inner = model.model
        self.layers = [_Layer(layer, c) for layer in inner.layers[: c.num_hidden_layers]]
        # The first MTP depth (reasoner/mtp.py), if the model has one: the draft model of speculative decoding.
        # Its attention is absorbed like the others' and caches at index len(self.layers).
        extra = inner.layers[c.num_hidden_layers:]
        self.mtp = _MTPRefs(extra[0], c) if len(extra) else None
        self._absorbed = self.layers + ([self.mtp.layer] if self.mtp else [])
        self._embed, self._norm, self._rotary = inner.embed_tokens, inner.norm, inner.rotary_emb
        self._lm_head = model.lm_head
        # The rope part of queries and cached keys is kept in adjacent-pair layout, rotated as complex numbers
        # (DeepSeek's own layout). With rope_interleave the weights already emit pairs; otherwise transformers
        # rotates (i, i + R/2) together, so those rows are permuted into pairs (dot products are unchanged).
        half = self.rope_dim // 2
        self._rope_perm = None if getattr(c, "rope_interleave", False) else torch.stack(
            (torch.arange(half), torch.arange(half) + half), dim=-1).flatten()
        self._signature = None
        self._cache: torch.Tensor | None = None  # [layers (+ MTP), batch, max_len, kv_rank + rope_dim]
        self._rope_tables: torch.Tensor | None = None  # complex [max_len, rope_dim / 2]
        self.stats = {"prefill_rows": 0, "decode_steps": 0, "compactions": 0, "refreshes": 0,
                      "drafted": 0, "accepted": 0}

    # ----------------------------------------------------------------------------------------- settings
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

    def _resolve_pad(self, pad_token_id, tokenizer) -> int:
        if pad_token_id is None:
            pad_token_id = getattr(self.model.generation_config, "pad_token_id", None)
        if pad_token_id is None and tokenizer is not None:
            pad_token_id = tokenizer.pad_token_id
        return int(pad_token_id if pad_token_id is not None else (self.eos_token_ids or [0])[0])

    @property
    def acceptance_rate(self) -> float | None:
        """Share of MTP drafts the main model accepted, over this engine's speculative decoding so far."""
        return self.stats["accepted"] / self.stats["drafted"] if self.stats["drafted"] else None

    @property
    def device(self) -> torch.device:
        return self._lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._lm_head.weight.dtype

    # ----------------------------------------------------------------------------------------- weights
    def _derived_sources(self):
        """The parameters the derived matrices are computed from."""
        for layer in self._absorbed:
            a = layer.attn
            yield (a.q_proj if a.q_proj is not None else a.q_b_proj).weight
            if a.q_proj is None:
                yield a.q_a_proj.weight
            yield from (a.kv_a_proj_with_mqa.weight, a.kv_b_proj.weight, a.o_proj.weight)
            yield from layer.ffn.sources()

    def _current_signature(self):
        # Version counters catch ordinary in-place updates, but fused optimizers (AdamW(fused=True), the
        # Trainer's default on some setups) and `.data` writes do not bump them, so a float64 checksum of each
        # source matrix (one cheap read of a few small matrices) is part of the signature as well.
        with torch.no_grad():
            return tuple((p.data_ptr(), p._version, p.dtype, p.device, float(p.detach().sum(dtype=torch.float64)))
                         for p in self._derived_sources())

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the derived matrices from the model's current weights.

        `generate` calls this by itself whenever the source weights changed (version counter, storage or
        checksum differs); call it directly after an optimizer step to make the refresh explicit."""
        for layer in self._absorbed:
            self._absorb(layer)
            layer.ffn.pack()
        self._signature = self._current_signature()
        self._rope_tables = None
        self.stats["refreshes"] += 1

    def _absorb(self, layer: _Layer) -> None:
        H, C, nope, v, R = self.num_heads, self.kv_rank, self.nope_dim, self.v_dim, self.rope_dim
        a = layer.attn
        wq = (a.q_proj if a.q_proj is not None else a.q_b_proj).weight
        dtype = wq.dtype
        wq = wq.detach().float().view(H, nope + R, -1)  # [H, nope + R, in]
        w_uk, w_uv = a.kv_b_proj.weight.detach().float().view(H, nope + v, C).split((nope, v), dim=1)
        q_abs = torch.einsum("hdc,hdi->hci", w_uk, wq[:, :nope])  # [H, C, in]
        q_rope = wq[:, nope:]  # [H, R, in]
        kv_a = a.kv_a_proj_with_mqa.weight.detach().float()  # [C + R, hidden]
        if self._rope_perm is not None:  # rotate_half layout (i, i + R/2) -> adjacent pairs
            q_rope, kv_a = q_rope[:, self._rope_perm], torch.cat((kv_a[:C], kv_a[C:][self._rope_perm]))
        wq_abs = (torch.cat((q_abs, q_rope), dim=1) * a.scaling).reshape(H * (C + R), -1)  # scale folded in
        if a.q_proj is not None:  # one matmul gives H query heads and, as head H, the new cache row
            layer.w_in, layer.wq_abs = torch.cat((wq_abs, kv_a)).to(dtype), None
        else:
            layer.w_in, layer.wq_abs = torch.cat((a.q_a_proj.weight.detach().float(), kv_a)).to(dtype), wq_abs.to(dtype)
        wo = a.o_proj.weight.detach().float()
        wo = wo.view(wo.shape[0], H, v)
        layer.wo_abs = torch.einsum("ohv,hvc->ohc", wo, w_uv).reshape(wo.shape[0], H * C).to(dtype)

    def _maybe_refresh(self) -> None:
        if self._signature != self._current_signature():
            self.refresh()

    # ----------------------------------------------------------------------------------------- buffers
    def _reserve(self, batch: int, length: int) -> None:
        """The latent cache [layers (+ MTP), >= batch, >= length, C + R] and the rope table for length slots."""
        cache = self._cache
        if (cache is None or cache.shape[1] < batch or cache.shape[2] < length or cache.dtype != self.dtype
                or cache.device != self.device):
            if cache is not None:
                batch, length = max(batch, cache.shape[1]), max(length, cache.shape[2])
            self._cache = None
            self._cache = torch.zeros(len(self._absorbed), batch, -(-length // 64) * 64, self.kv_rank + self.rope_dim,
                                      dtype=self.dtype, device=self.device)
        if self._rope_tables is None or self._rope_tables.shape[0] < length:
            length = max(-(-length // 256) * 256, 256)
            probe = torch.zeros(1, dtype=self.dtype, device=self.device)
            cos, sin = self._rotary(probe, torch.arange(length, device=self.device)[None])  # the model's own rope
            half = self.rope_dim // 2  # cos/sin are cat(freqs, freqs) (x attention factor): one half is enough
            self._rope_tables = torch.complex(cos[0, :, :half].float(), sin[0, :, :half].float())

    def cache_bytes_per_token(self) -> int:
        """Bytes of KV cache per token (all layers) held by this engine."""
        return len(self.layers) * (self.kv_rank + self.rope_dim) * torch.finfo(self.dtype).bits // 8

    # ----------------------------------------------------------------------------------------- forward
    def _attention(self, layer: _Layer, li: int, h, freqs, mask, write) -> torch.Tensor:
        """Absorbed MLA. h: [B, S, hidden]; freqs: complex [B, S, 1, R/2]; mask: additive, broadcast to [B, S, H, T].

        write(li, latent [B, S, C], k_rope [B, S, R]) stores the new cache rows and returns the keys [B, T, C+R]."""
        a = layer.attn
        B, S, _ = h.shape
        H, C, R = self.num_heads, self.kv_rank, self.rope_dim
        y = F.linear(h, layer.w_in)  # [B, S, H*(C+R) + C+R], or [B, S, q_lora_rank + C+R]
        if layer.wq_abs is None:
            y = y.view(B, S, H + 1, C + R)  # heads [absorbed nope | rope], then the new row [latent | k_rope]
            _rope_(y[..., C:], freqs)  # the queries' rope parts and the key's, in one go
            q, kv = y[:, :, :H], y[:, :, H]  # q: [B, S, H, C+R], kv: [B, S, C+R]
        else:
            q_in, kv = y.split((y.shape[-1] - C - R, C + R), dim=-1)
            q_in = _rms_norm(q_in, a.q_a_layernorm.weight, a.q_a_layernorm.variance_epsilon)
            q = F.linear(q_in, layer.wq_abs).view(B, S, H, C + R)
            _rope_(q[..., C:], freqs)
            _rope_(kv[..., C:], freqs[:, :, 0])
        latent = _rms_norm(kv[..., :C], a.kv_a_layernorm.weight, a.kv_a_layernorm.variance_epsilon)  # [B, S, C]
        keys = write(li, latent, kv[..., C:])  # [B, T, C+R]
        scores = torch.bmm(q.reshape(B, S * H, C + R), keys.transpose(1, 2))  # [B, S*H, T], softmax scale folded in
        probs = torch.softmax(scores.view(B, S, H, -1).add_(mask), dim=-1, dtype=torch.float32)
        probs = probs if probs.dtype == keys.dtype else probs.to(keys.dtype)
        out = torch.bmm(probs.view(B, S * H, -1), keys[..., :C])  # [B, S*H, C]
        return F.linear(out.view(B, S, H * C), layer.wo_abs)

    def _block(self, layer: _Layer, li: int, x, freqs, mask, write) -> torch.Tensor:
        """One decoder layer. x: [B, S, hidden] -> [B, S, hidden]."""
        x = x + self._attention(layer, li, _rms_norm(x, layer.ln1_w, layer.ln1_eps), freqs, mask, write)
        return x + layer.ffn(_rms_norm(x, layer.ln2_w, layer.ln2_eps))

    def _trunk(self, ids, freqs, mask, write) -> torch.Tensor:
        """ids: [B, S] -> the residual stream after the last decoder layer (before the final norm): [B, S, hidden]."""
        x = self._embed(ids)
        for li, layer in enumerate(self.layers):
            x = self._block(layer, li, x, freqs, mask, write)
        return x

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return _rms_norm(x, self._norm.weight, self._norm.variance_epsilon)

    def _head(self, normed: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states [..., hidden] -> float32 logits [..., vocab]."""
        return as_float32(self._lm_head(normed))

    def _mtp_forward(self, ids, hidden, freqs, mask, write) -> torch.Tensor:
        """The MTP depth-1 block: token ids [B, S] (token i+1 at slot i) and the main model's normed hidden
        state [B, S, H] at those slots -> its hidden state [B, S, H] (before shared_head.norm)."""
        m = self.mtp
        x = F.linear(torch.cat((_rms_norm(self._embed(ids), *m.enorm), _rms_norm(hidden, *m.hnorm)), dim=-1),
                     m.eh_proj)
        return self._block(m.layer, len(self.layers), x, freqs, mask, write)

    def _mtp_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._head(_rms_norm(x, *self.mtp.head_norm))

    # ----------------------------------------------------------------------------------------- prefill
    def _prompt_batch(self, prompts, min_len: int = 1):
        """Left-padded ids [Np, P] on the device and the padding per prompt [Np]."""
        lens = torch.tensor([len(p) for p in prompts], device=self.device)
        P = max(int(lens.max()), min_len)
        ids = torch.full((len(prompts), P), self.pad_token_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, P - len(p):] = torch.tensor(p)
        return ids.to(self.device), P - lens

    def prefill(self, ids, pad, G: int) -> torch.Tensor:
        """ids: [Np, P] left-padded (pad: [Np]) -> final-normed hidden states [Np, P, hidden]. Each prompt runs
        once; its cache rows are copied to the rows of its G samples (cache rows a*G .. b*G - 1 for prompts a..b-1)."""
        hidden = [self._final_norm(self._trunk(ids[a:b], freqs, mask, write))
                  for a, b, freqs, mask, write in self.prefill_groups(pad, ids.shape[1], G)]
        self.stats["prefill_rows"] += len(ids)
        return torch.cat(hidden)

    def prefill_groups(self, pad, S: int, G: int):
        """Prompts in groups [a, b) whose [prompts, S, heads, S] scores stay within prefill_budget elements, each
        with its rope freqs [b-a, S, 1, R/2], causal mask [b-a, S, 1, S] and a cache writer for slots 0..S-1."""
        step = max(1, self.prefill_budget // (S * S * self.num_heads))
        slots = torch.arange(S, device=pad.device)
        for a in range(0, len(pad), step):
            b = min(len(pad), a + step)

            def write(li, latent, k_rope, rows=slice(a * G, b * G)):
                kv = torch.cat((latent, k_rope), dim=-1)  # [b-a, S, C+R]
                self._cache[li, rows, :S] = kv.repeat_interleave(G, dim=0)
                return kv

            freqs = self._rope_tables[(slots - pad[a:b, None]).clamp(min=0)][:, :, None]
            yield a, b, freqs, self._prefill_mask(pad[a:b], S), write

    @staticmethod
    def _prefill_mask(pad: torch.Tensor, S: int) -> torch.Tensor:
        """Additive causal mask over the prompts' own slots, left padding hidden: [prompts, S, 1, S]."""
        ar = torch.arange(S, device=pad.device)
        causal = ar[None, :] <= ar[:, None]
        eye = torch.eye(S, dtype=torch.bool, device=pad.device)  # pad queries see themselves: no all-masked rows
        allowed = (causal[None] & (ar[None, None, :] >= pad[:, None, None])) | eye[None]
        mask = torch.zeros(len(pad), S, 1, S, dtype=torch.float32, device=pad.device)
        return mask.masked_fill_(~allowed[:, :, None, :], float("-inf"))

    # ----------------------------------------------------------------------------------------- decode
    def decode_step(self, tok, position, slot: int, mask) -> torch.Tensor:
        """Feed one token per row at cache `slot`. tok, position (rope): [B]; mask: additive [B, 1, 1, slot + 1].
        Returns the next token's logits [B, vocab] (float32)."""
        B, C, cache = tok.shape[0], self.kv_rank, self._cache

        def write(li, latent, k_rope):  # latent: [B, 1, C], k_rope: [B, 1, R]
            cache[li, :B, slot, :C] = latent[:, 0]
            cache[li, :B, slot, C:] = k_rope[:, 0]
            return cache[li, :B, : slot + 1]  # keys: [B, slot + 1, C+R]

        x = self._trunk(tok[:, None], self._rope_tables[position][:, None, None], mask, write)  # x: [B, 1, hidden]
        self.stats["decode_steps"] += 1
        return self._head(self._final_norm(x[:, -1]))

    def compact_rows(self, out: Output, slots: int, *per_row: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Once at most half the batch rows (of at least 8) still decode, move the live ones to the front of the
        batch and of the cache (slots 0..slots-1, every layer) so the rest of the run decodes only those.
        Returns per_row ([batch rows, ...] tensors) for the rows kept."""
        active = out.active()
        nb, n = len(active), int(active.sum())
        if not self.compact or nb < 8 or n > nb // 2 or n == 0:
            return per_row
        keep = active.nonzero().squeeze(-1)
        self._cache[:, :n, :slots] = self._cache[:, keep, :slots]
        out.rows = out.rows[keep]
        self.stats["compactions"] += 1
        return tuple(t[keep] for t in per_row)

    # ----------------------------------------------------------------------------------------- generate
    @torch.inference_mode()
    def generate(self, prompt_ids: list[list[int]], sampling: Sampling, num_samples: int = 1,
                 ignore_eos: bool = False, return_logits: bool = False, max_time: float | None = None,
                 speculative: bool | None = None,
                 on_tokens: OnTokens | None = None) -> list[Completion]:
        """num_samples completions per prompt, prompt-major (p0s0, p0s1, ..., p1s0, ...), each of at most
        sampling.max_tokens tokens, ending at EOS or at one of sampling.stop; seeded by sampling.seed.

        The num_samples completions of one prompt share one prefill (its latent cache rows are copied).
        temperature=0 is greedy. With return_logits, each Completion gets `.logits` ([steps, vocab] raw
        float32 logits of every step, as `model.generate(output_logits=True)` returns them).
        max_time (seconds, like generate's) ends decoding early; unfinished rows then report "length".
        speculative (default: whenever the model has an MTP module) drafts with MTP and verifies in the same
        forward (reasoner/rollout/speculative.py): greedy output is token for token the same, sampled output
        follows the same distribution; `acceptance_rate` reports the share of drafts accepted.
        on_tokens(rows, tokens), if given, hears each step's new tokens as they are sampled (rows are indices
        into the returned list; a speculative step may give a row two): what a server streams.
        """
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("empty prompt")
        if sampling.stop and self.tokenizer is None:
            raise ValueError("stop_strings need a tokenizer")
        speculative = self.mtp is not None if speculative is None else speculative
        if speculative and self.mtp is None:
            raise ValueError("speculative decoding needs a model with an MTP module (num_nextn_predict_layers)")
        self._maybe_refresh()
        request = _Request(
            num_samples, sampling.max_tokens, sampling,
            None if sampling.seed is None else torch.Generator(device=self.device).manual_seed(sampling.seed),
            sampling.stop, ignore_eos, return_logits, None if max_time is None else time.perf_counter() + max_time,
            on_tokens)
        run = functools.partial(generate_chunk_speculative, self) if speculative else self._generate_chunk
        per_chunk = max(1, self.max_batch_size // num_samples)
        return [c for start in range(0, len(prompt_ids), per_chunk)
                for c in run([list(map(int, p)) for p in prompt_ids[start:start + per_chunk]], start, request)]

    def _generate_chunk(self, prompts: list[list[int]], first_index: int, request: _Request) -> list[Completion]:
        """Prefill the prompts, then decode their num_samples rows each, one token per step."""
        G = request.num_samples
        ids, pad = self._prompt_batch(prompts)  # ids: [Np, P], pad: [Np]
        P = ids.shape[1]
        self._reserve(len(prompts) * G, P + request.max_new)
        hidden = self.prefill(ids, pad, G)  # [Np, P, hidden]
        logits = self._head(hidden[:, -1]).repeat_interleave(G, dim=0)  # [B, vocab]
        out = Output(self, len(logits), request, first_row=first_index * G)
        self._decode(logits, pad.repeat_interleave(G), P, out, request)
        return out.completions(prompts, G, first_index)

    def _decode(self, logits, pad, P: int, out: Output, request: _Request) -> None:
        """The loop: sample one token per row, record it, feed it back at the next cache slot, until every row is
        done. logits: [B, vocab] after the prompt; pad: [B] left padding; the prompts fill slots 0..P-1."""
        slots = torch.arange(self._cache.shape[2], device=self.device)
        mask = torch.zeros(len(pad), len(slots), device=self.device)  # [B, slots]: -inf on left padding
        mask.masked_fill_(slots[None] < pad[:, None], float("-inf"))
        position = P - pad  # [B]: rope position of the next token fed
        for slot in range(P, P + request.max_new):
            tok, lp = sample(logits, request.params, request.generator)  # tok, lp: [B]
            out.emit(tok, lp, logits)
            if out.all_done() or request.out_of_time():
                return
            tok, position, mask = self.compact_rows(out, slot, tok, position, mask)
            logits = self.decode_step(tok, position, slot, mask[:, None, None, : slot + 1])
            position = position + 1
