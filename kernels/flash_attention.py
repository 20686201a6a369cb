"""Flash attention (forward and backward) in Triton, for MLA head dims.

`flash_attention(q, k, v, mask=None, causal=False, scale=None)` takes sdpa's layout:
q (B, H, Sq, Dqk), k (B, Hkv, Sk, Dqk), v (B, Hkv, Sk, Dv), H a multiple of Hkv (grouped-query heads).
`mask` is a boolean tensor broadcastable to (B, H, Sq, Sk), True where a query may attend a key (what
transformers' `sdpa_mask` builds: causal + left/right padding). `causal=True` is bottom-right aligned, as in
flash-attn: query i sees keys j <= i + Sk - Sq, so decode and prefill over a cache need no mask.
A query row that sees no key at all returns zeros and gets zero gradients (no NaN).

Dqk need not be a power of two: it is split into a power-of-two part and a (padded) remainder, so MLA's
192 = 128 + 64 wastes nothing. Softmax runs in base 2 with the scale folded into log2(e).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
_LOG2E = 1.4426950408889634


def _configs(fwd: bool) -> list[triton.Config]:
    if _INTERPRET:  # numpy runs every program: few, small blocks keep CPU tests fast
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32})]
    sizes = [(128, 64, 8, 3), (128, 32, 8, 2), (64, 64, 4, 2)] if fwd else [(64, 64, 8, 2), (32, 64, 4, 2), (64, 32, 4, 2)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in sizes]


_KEY = ["SEQ_Q", "SEQ_K", "DQK", "DV", "CAUSAL", "HAS_MASK"]


@triton.jit
def _scores(q0, q1, k_ptrs0, k_ptrs1, k_ok0, k_ok1, D1: tl.constexpr, PRECISION: tl.constexpr):
    """q @ k^T over the two head-dim parts (the second part only exists when D1 > 0)."""
    k0 = tl.load(k_ptrs0, mask=k_ok0, other=0.0)
    s = tl.dot(q0, tl.trans(k0), input_precision=PRECISION)
    if D1 > 0:
        k1 = tl.load(k_ptrs1, mask=k_ok1, other=0.0)
        s = tl.dot(q1, tl.trans(k1), s, input_precision=PRECISION)
    return s


@triton.jit
def _visible(offs_m, offs_n, SEQ_Q, SEQ_K, m_ptrs, smm, smn,
             CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr):
    """(BLOCK_M, BLOCK_N) booleans: which (query, key) pairs take part in attention."""
    ok = (offs_m[:, None] < SEQ_Q) & (offs_n[None, :] < SEQ_K)
    if CAUSAL:
        ok &= offs_n[None, :] <= offs_m[:, None] + (SEQ_K - SEQ_Q)
    if HAS_MASK:
        ok &= tl.load(m_ptrs + offs_m[:, None] * smm + offs_n[None, :] * smn, mask=ok, other=0) != 0
    return ok


@triton.autotune(configs=_configs(True), key=_KEY)
@triton.jit
def _fwd_kernel(Q, K, V, M, O, LSE,
                sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, smb, smh, smm, smn, sob, soh, som,
                H, GROUP, SEQ_Q, SEQ_K, qk_scale,
                DQK: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr,
                CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    b, h = (tl.program_id(1) // H).to(tl.int64), tl.program_id(1) % H  # b * stride may pass 2**31
    hk = h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    d0 = tl.arange(0, D0)
    d1 = D0 + tl.arange(0, D1 if D1 > 0 else 16)
    dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < SEQ_Q

    q_base = Q + b * sqb + h * sqh + offs_m[:, None] * sqm
    q0 = tl.load(q_base + d0[None, :], mask=row_ok[:, None], other=0.0)
    q1 = q0
    if D1 > 0:
        q1 = tl.load(q_base + d1[None, :], mask=row_ok[:, None] & (d1[None, :] < DQK), other=0.0)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    m_ptrs = M + b * smb + h * smh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    hi = SEQ_K
    if CAUSAL:  # keys past the diagonal of this query block are never visible
        hi = tl.minimum(SEQ_K, tl.maximum(0, start_m + BLOCK_M + SEQ_K - SEQ_Q))
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        key_ok = offs_n[:, None] < SEQ_K
        s = _scores(q0, q1, k_base + offs_n[:, None] * skn + d0[None, :], k_base + offs_n[:, None] * skn + d1[None, :],
                    key_ok, key_ok & (d1[None, :] < DQK), D1, PRECISION)
        ok = _visible(offs_m, offs_n, SEQ_Q, SEQ_K, m_ptrs, smm, smn, CAUSAL, HAS_MASK)
        s = tl.where(ok, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet stays at zero
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * svn + dv[None, :], mask=key_ok & (dv[None, :] < DV), other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    empty = l_i == 0.0
    acc = acc / tl.where(empty, 1.0, l_i)[:, None]
    o_ptrs = O + b * sob + h * soh + offs_m[:, None] * som + dv[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_ok[:, None] & (dv[None, :] < DV))
    # +inf makes every probability of an empty row exp2(-inf) = 0 in the backward pass
    lse = tl.where(empty, float("inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    tl.store(LSE + tl.program_id(1) * SEQ_Q + offs_m, lse, mask=row_ok)


@triton.autotune(configs=_configs(False), key=_KEY)
@triton.jit
def _bwd_dkdv_kernel(Q, K, V, M, DO, LSE, DELTA, DK, DV_,
                     sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, smb, smh, smm, smn, sob, soh, som,
                     sdkb, sdkh, sdkn, sdvb, sdvh, sdvn,
                     H, GROUP, SEQ_Q, SEQ_K, qk_scale, sm_scale,
                     DQK: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr,
                     CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key block of one key/value head; loops over the query heads of its group and their query blocks."""
    start_n = tl.program_id(0) * BLOCK_N
    hkv_count = H // GROUP
    b, hk = (tl.program_id(1) // hkv_count).to(tl.int64), tl.program_id(1) % hkv_count
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    d0 = tl.arange(0, D0)
    d1 = D0 + tl.arange(0, D1 if D1 > 0 else 16)
    dv = tl.arange(0, BLOCK_DV)
    key_ok = offs_n[:, None] < SEQ_K
    d1_ok = d1[None, :] < DQK
    dv_ok = dv[None, :] < DV

    k_base = K + b * skb + hk * skh + offs_n[:, None] * skn
    k0 = tl.load(k_base + d0[None, :], mask=key_ok, other=0.0)
    k1 = k0
    if D1 > 0:
        k1 = tl.load(k_base + d1[None, :], mask=key_ok & d1_ok, other=0.0)
    v = tl.load(V + b * svb + hk * svh + offs_n[:, None] * svn + dv[None, :], mask=key_ok & dv_ok, other=0.0)
    dk0 = tl.zeros([BLOCK_N, D0], tl.float32)
    dk1 = tl.zeros([BLOCK_N, D1 if D1 > 0 else 16], tl.float32)
    dvacc = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)

    lo = 0
    if CAUSAL:  # queries before this key block's diagonal never see it
        lo = tl.maximum(0, start_n - (SEQ_K - SEQ_Q)) // BLOCK_M * BLOCK_M
    for g in range(0, GROUP):
        h = hk * GROUP + g
        bh = b * H + h
        m_ptrs = M + b * smb + h * smh
        for start_m in range(lo, SEQ_Q, BLOCK_M):
            offs_m = start_m + offs_m0
            row_ok = offs_m[:, None] < SEQ_Q
            q_base = Q + b * sqb + h * sqh + offs_m[:, None] * sqm
            q0 = tl.load(q_base + d0[None, :], mask=row_ok, other=0.0)
            s = tl.dot(q0, tl.trans(k0), input_precision=PRECISION)
            q1 = q0
            if D1 > 0:
                q1 = tl.load(q_base + d1[None, :], mask=row_ok & d1_ok, other=0.0)
                s = tl.dot(q1, tl.trans(k1), s, input_precision=PRECISION)
            ok = _visible(offs_m, offs_n, SEQ_Q, SEQ_K, m_ptrs, smm, smn, CAUSAL, HAS_MASK)
            lse = tl.load(LSE + bh * SEQ_Q + offs_m, mask=offs_m < SEQ_Q, other=float("inf"))
            p = tl.where(ok, tl.exp2(s * qk_scale - lse[:, None]), 0.0)
            do = tl.load(DO + b * sob + h * soh + offs_m[:, None] * som + dv[None, :], mask=row_ok & dv_ok, other=0.0)
            dvacc = tl.dot(tl.trans(p.to(do.dtype)), do, dvacc, input_precision=PRECISION)
            delta = tl.load(DELTA + bh * SEQ_Q + offs_m, mask=offs_m < SEQ_Q, other=0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = (p * (dp - delta[:, None])).to(q0.dtype)
            dk0 = tl.dot(tl.trans(ds), q0, dk0, input_precision=PRECISION)
            if D1 > 0:
                dk1 = tl.dot(tl.trans(ds), q1, dk1, input_precision=PRECISION)

    dk_base = DK + b * sdkb + hk * sdkh + offs_n[:, None] * sdkn
    tl.store(dk_base + d0[None, :], (dk0 * sm_scale).to(DK.dtype.element_ty), mask=key_ok)
    if D1 > 0:
        tl.store(dk_base + d1[None, :], (dk1 * sm_scale).to(DK.dtype.element_ty), mask=key_ok & d1_ok)
    tl.store(DV_ + b * sdvb + hk * sdvh + offs_n[:, None] * sdvn + dv[None, :], dvacc.to(DV_.dtype.element_ty),
             mask=key_ok & dv_ok)


@triton.autotune(configs=_configs(False), key=_KEY)
@triton.jit
def _bwd_dq_kernel(Q, K, V, M, DO, LSE, DELTA, DQ,
                   sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, smb, smh, smm, smn, sob, soh, som,
                   sdqb, sdqh, sdqm,
                   H, GROUP, SEQ_Q, SEQ_K, qk_scale, sm_scale,
                   DQK: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr,
                   CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One query block of one head; loops over key blocks (a separate pass keeps dq free of atomics)."""
    start_m = tl.program_id(0) * BLOCK_M
    b, h = (tl.program_id(1) // H).to(tl.int64), tl.program_id(1) % H  # b * stride may pass 2**31
    hk = h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    d0 = tl.arange(0, D0)
    d1 = D0 + tl.arange(0, D1 if D1 > 0 else 16)
    dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m[:, None] < SEQ_Q
    d1_ok = d1[None, :] < DQK
    dv_ok = dv[None, :] < DV

    q_base = Q + b * sqb + h * sqh + offs_m[:, None] * sqm
    q0 = tl.load(q_base + d0[None, :], mask=row_ok, other=0.0)
    q1 = q0
    if D1 > 0:
        q1 = tl.load(q_base + d1[None, :], mask=row_ok & d1_ok, other=0.0)
    do = tl.load(DO + b * sob + h * soh + offs_m[:, None] * som + dv[None, :], mask=row_ok & dv_ok, other=0.0)
    lse = tl.load(LSE + tl.program_id(1) * SEQ_Q + offs_m, mask=offs_m < SEQ_Q, other=float("inf"))
    delta = tl.load(DELTA + tl.program_id(1) * SEQ_Q + offs_m, mask=offs_m < SEQ_Q, other=0.0)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    m_ptrs = M + b * smb + h * smh
    dq0 = tl.zeros([BLOCK_M, D0], tl.float32)
    dq1 = tl.zeros([BLOCK_M, D1 if D1 > 0 else 16], tl.float32)

    hi = SEQ_K
    if CAUSAL:
        hi = tl.minimum(SEQ_K, tl.maximum(0, start_m + BLOCK_M + SEQ_K - SEQ_Q))
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        key_ok = offs_n[:, None] < SEQ_K
        k0 = tl.load(k_base + offs_n[:, None] * skn + d0[None, :], mask=key_ok, other=0.0)
        s = tl.dot(q0, tl.trans(k0), input_precision=PRECISION)
        k1 = k0
        if D1 > 0:
            k1 = tl.load(k_base + offs_n[:, None] * skn + d1[None, :], mask=key_ok & d1_ok, other=0.0)
            s = tl.dot(q1, tl.trans(k1), s, input_precision=PRECISION)
        ok = _visible(offs_m, offs_n, SEQ_Q, SEQ_K, m_ptrs, smm, smn, CAUSAL, HAS_MASK)
        p = tl.where(ok, tl.exp2(s * qk_scale - lse[:, None]), 0.0)
        v = tl.load(v_base + offs_n[:, None] * svn + dv[None, :], mask=key_ok & dv_ok, other=0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = (p * (dp - delta[:, None])).to(k0.dtype)
        dq0 = tl.dot(ds, k0, dq0, input_precision=PRECISION)
        if D1 > 0:
            dq1 = tl.dot(ds, k1, dq1, input_precision=PRECISION)

    dq_base = DQ + b * sdqb + h * sdqh + offs_m[:, None] * sdqm
    tl.store(dq_base + d0[None, :], (dq0 * sm_scale).to(DQ.dtype.element_ty), mask=row_ok)
    if D1 > 0:
        tl.store(dq_base + d1[None, :], (dq1 * sm_scale).to(DQ.dtype.element_ty), mask=row_ok & d1_ok)


def _head_split(d: int) -> tuple[int, int]:
    """Dqk = D0 + D1: D0 the largest power of two <= d, D1 the rest padded to a power of two (>= 16 for tl.dot)."""
    d0 = 1 << (d.bit_length() - 1)
    rest = d - d0
    return (d0, 0) if rest == 0 else (d0, max(16, triton.next_power_of_2(rest)))


def _meta(q, k, v, mask, causal):
    d0, d1 = _head_split(q.shape[-1])
    if d0 < 16:
        raise ValueError(f"flash_attention needs a query/key head dim of at least 16, got {q.shape[-1]}")
    return dict(DQK=q.shape[-1], D0=d0, D1=d1, DV=v.shape[-1], BLOCK_DV=max(16, triton.next_power_of_2(v.shape[-1])),
                CAUSAL=causal, HAS_MASK=mask is not None,
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32")


def _mask_args(mask, shape, device):
    """The mask as uint8 expanded to (B, H, Sq, Sk): broadcast dims get stride 0, so nothing is copied."""
    if mask is None:  # HAS_MASK=False never reads it, but the launcher wants a tensor
        return torch.ones(1, dtype=torch.uint8, device=device), (0, 0, 0, 0)
    if mask.dtype != torch.bool:
        raise TypeError(f"flash_attention takes a boolean mask (True = attend), got {mask.dtype}")
    mask = mask.expand(shape).view(torch.uint8)
    return mask, tuple(mask.stride())


def _strides(t):
    return t.stride(0), t.stride(1), t.stride(2)


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, causal, scale):
        batch, heads, seq_q, _ = q.shape
        seq_k = k.shape[2]
        meta = _meta(q, k, v, mask, causal)
        mask_u8, mstr = _mask_args(mask, (batch, heads, seq_q, seq_k), q.device)
        out = q.new_empty(batch, heads, seq_q, v.shape[-1])
        lse = torch.empty(batch, heads, seq_q, device=q.device, dtype=torch.float32)
        grid = lambda m: (triton.cdiv(seq_q, m["BLOCK_M"]), batch * heads)  # noqa: E731
        _fwd_kernel[grid](q, k, v, mask_u8, out, lse, *_strides(q), *_strides(k), *_strides(v), *mstr, *_strides(out),
                          heads, heads // k.shape[1], seq_q, seq_k, scale * _LOG2E, **meta)
        ctx.save_for_backward(q, k, v, mask_u8, out, lse)
        ctx.meta, ctx.mstr, ctx.scale = meta, mstr, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, mask_u8, out, lse = ctx.saved_tensors
        dout = dout.contiguous()
        batch, heads, seq_q, _ = q.shape
        kv_heads, seq_k = k.shape[1], k.shape[2]
        delta = (out.float() * dout.float()).sum(-1)  # rowsum(dO * O), the softmax-backward correction term
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        common = (*_strides(q), *_strides(k), *_strides(v), *ctx.mstr, *_strides(dout))
        scales = (ctx.scale * _LOG2E, ctx.scale)
        grid = lambda m: (triton.cdiv(seq_k, m["BLOCK_N"]), batch * kv_heads)  # noqa: E731
        _bwd_dkdv_kernel[grid](q, k, v, mask_u8, dout, lse, delta, dk, dv, *common, *_strides(dk), *_strides(dv),
                               heads, heads // kv_heads, seq_q, seq_k, *scales, **ctx.meta)
        grid = lambda m: (triton.cdiv(seq_q, m["BLOCK_M"]), batch * heads)  # noqa: E731
        _bwd_dq_kernel[grid](q, k, v, mask_u8, dout, lse, delta, dq, *common, *_strides(dq),
                             heads, heads // kv_heads, seq_q, seq_k, *scales, **ctx.meta)
        return dq, dk, dv, None, None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                    causal: bool = False, scale: float | None = None) -> torch.Tensor:
    """Attention over (B, H, S, D) tensors; returns (B, H, Sq, Dv). See the module docstring for the semantics."""
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} key/value heads")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _FlashAttention.apply(q, k, v, mask, causal, float(scale))


def reference_attention(q, k, v, mask=None, causal=False, scale=None):
    """Plain PyTorch with the same semantics (float32 math), for tests and the no-GPU fallback."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    seq_q, seq_k = q.shape[2], k.shape[2]
    visible = torch.ones(seq_q, seq_k, dtype=torch.bool, device=q.device)
    if causal:
        visible = torch.arange(seq_k, device=q.device) <= torch.arange(seq_q, device=q.device)[:, None] + seq_k - seq_q
    if mask is not None:
        visible = visible & mask.bool()
    s = s.masked_fill(~visible, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)  # rows with nothing visible -> 0, as in the kernel
    return (p @ v.float()).to(q.dtype)

