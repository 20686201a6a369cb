"""Fused MoE experts (forward and backward) in Triton, for transformers' DeepseekV3 expert weights.

`fused_experts(x, top_k_index, top_k_weights, gate_up_proj, down_proj)` computes
    sum_k w[t, k] * down[e] @ (silu(gate[e] @ x[t]) * (up[e] @ x[t])),  e = top_k_index[t, k]
with gate_up_proj (E, 2I, D) = [gate; up] and down_proj (E, D, I), as `DeepseekV3Experts` stores them.

The (token, k) pairs are sorted by expert and each expert's run is padded to a multiple of BLOCK_M (as in
vLLM's moe_align_block_size), so every row block of the sorted layout belongs to one expert. Then
  forward:  one grouped GEMM gathers x rows and applies SwiGLU in its epilogue -> h (sorted rows, I);
            one grouped GEMM h @ down^T scales by the routing weight and scatters to (pair, D);
  backward: one grouped GEMM dy @ down gives dh and, in its epilogue, the SwiGLU backward and the routing
            weight gradient; the down kernel again gives dx; one per-expert kernel each gives dW1 and dW2.
The K pairs of a token are summed with a reshape, not atomics, so results are deterministic.
Everything is computed without a host sync: the padded layout is sized for the worst case.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _configs(sizes):
    if _INTERPRET:
        return [triton.Config({"BLOCK_N": DOWN_BWD_N, "BLOCK_K": 32})]
    return [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s) for n, k, w, s in sizes]


# The down backward writes one routing-grad partial per BLOCK_N tile, summed afterwards: its BLOCK_N is fixed
# so that every autotuning trial writes the same tiles (a smaller trial's extra tiles would be summed too).
DOWN_BWD_N = 32 if _INTERPRET else 64
_GEMM = [(128, 64, 4, 4), (128, 64, 8, 3), (64, 64, 4, 4), (128, 128, 8, 3)]
_DOWN_BWD = [(DOWN_BWD_N, k, w, s) for k, w, s in ((64, 4, 4), (128, 4, 3), (64, 8, 3))]
_KEY = ["N", "K", "BLOCK_M"]


@triton.autotune(configs=_configs(_GEMM), key=_KEY)
@triton.jit
def _gate_up_kernel(X, W, PAIR, BLOCK_EXPERT, H, GU, sxm, swe, swn, swk, S, TOPK, N, K,
                    SAVE_GU: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """h[row] = silu(x[tok] @ gate[e]^T) * (x[tok] @ up[e]^T) for one row block of expert e; N = I, K = D."""
    e = tl.load(BLOCK_EXPERT + tl.program_id(0)).to(tl.int64)  # e * (2I * D) passes 2**31 for V3
    if e < 0:  # a block past the last expert's padded run
        return
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # R * 2I may pass 2**31
    pair = tl.load(PAIR + rows)
    valid = pair < S
    tok = pair // TOPK
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    w_base = W + e * swe
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        a = tl.load(X + tok[:, None] * sxm + offs_k[None, :], mask=valid[:, None] & k_ok[None, :], other=0.0)
        w_ptrs = w_base + offs_n[None, :] * swn + offs_k[:, None] * swk
        w_ok = n_ok[None, :] & k_ok[:, None]
        acc_g = tl.dot(a, tl.load(w_ptrs, mask=w_ok, other=0.0), acc_g, input_precision=PRECISION)
        acc_u = tl.dot(a, tl.load(w_ptrs + N * swn, mask=w_ok, other=0.0), acc_u, input_precision=PRECISION)
    h = acc_g * tl.sigmoid(acc_g) * acc_u
    out = rows[:, None] * N + offs_n[None, :]
    tl.store(H + out, h.to(H.dtype.element_ty), mask=n_ok[None, :])
    if SAVE_GU:  # pre-activations for the SwiGLU backward
        gu = rows[:, None] * (2 * N) + offs_n[None, :]
        tl.store(GU + gu, acc_g.to(GU.dtype.element_ty), mask=n_ok[None, :])
        tl.store(GU + gu + N, acc_u.to(GU.dtype.element_ty), mask=n_ok[None, :])


@triton.autotune(configs=_configs(_GEMM), key=_KEY)
@triton.jit
def _scatter_gemm_kernel(A, W, PAIR, BLOCK_EXPERT, SCALE, OUT, swe, swk, swn, S, N, K,
                         HAS_SCALE: tl.constexpr, PRECISION: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[pair] = scale[pair] * a[row] @ W[e] for sorted rows a (R, K); W[e] is read as (K, N) through strides.

    Forward down projection (a = h, W = down^T, scale = routing weight) and backward dx (a = d(gate,up), W = gate_up).
    """
    e = tl.load(BLOCK_EXPERT + tl.program_id(0)).to(tl.int64)  # e * (2I * D) passes 2**31 for V3
    if e < 0:
        return
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # R * 2I may pass 2**31
    pair = tl.load(PAIR + rows)
    valid = pair < S
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        a = tl.load(A + rows[:, None] * K + offs_k[None, :], mask=k_ok[None, :], other=0.0)
        w = tl.load(W + e * swe + offs_k[:, None] * swk + offs_n[None, :] * swn,
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
    if HAS_SCALE:
        acc *= tl.load(SCALE + pair, mask=valid, other=0.0).to(tl.float32)[:, None]
    tl.store(OUT + pair[:, None] * N + offs_n[None, :], acc.to(OUT.dtype.element_ty),
             mask=valid[:, None] & n_ok[None, :])


@triton.autotune(configs=_configs(_DOWN_BWD), key=_KEY)
@triton.jit
def _down_bwd_kernel(DY, W, PAIR, BLOCK_EXPERT, SCALE, GU, DGU, DW_PART, swe, swk, swn, R, S, TOPK, N, K,
                     PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """g = dy[tok] @ down[e] (N = I, K = D); epilogue: routing-weight grad partial <h, g> and SwiGLU backward."""
    e = tl.load(BLOCK_EXPERT + tl.program_id(0)).to(tl.int64)  # e * (2I * D) passes 2**31 for V3
    if e < 0:
        return
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # R * 2I may pass 2**31
    pair = tl.load(PAIR + rows)
    valid = pair < S
    tok = pair // TOPK
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        dy = tl.load(DY + tok[:, None] * K + offs_k[None, :], mask=valid[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(W + e * swe + offs_k[:, None] * swk + offs_n[None, :] * swn,
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(dy, w, acc, input_precision=PRECISION)
    gu = rows[:, None] * (2 * N) + offs_n[None, :]
    gate = tl.load(GU + gu, mask=n_ok[None, :], other=0.0).to(tl.float32)
    up = tl.load(GU + gu + N, mask=n_ok[None, :], other=0.0).to(tl.float32)
    sig = tl.sigmoid(gate)
    act = gate * sig
    # d out / d w[pair] = <down[e] @ h, dy[tok]> = <h, g>; partial over this N tile, summed on the host side
    tl.store(DW_PART + tl.program_id(1) * R + rows, tl.sum(act * up * acc, 1))
    dh = acc * tl.load(SCALE + pair, mask=valid, other=0.0).to(tl.float32)[:, None]
    d_gate = dh * up * sig * (1.0 + gate * (1.0 - sig))
    tl.store(DGU + gu, d_gate.to(DGU.dtype.element_ty), mask=n_ok[None, :])
    tl.store(DGU + gu + N, (dh * act).to(DGU.dtype.element_ty), mask=n_ok[None, :])


@triton.autotune(configs=_configs([(128, 128, 8, 3), (64, 128, 4, 3), (128, 64, 4, 3)]), key=_KEY)
@triton.jit
def _wgrad_kernel(A, B, PAIR, EXPERT_START, SCALE, DW, sam, sbm, sde, sdn, sdk, S, TOPK, N, K,
                  A_GATHER: tl.constexpr, B_GATHER: tl.constexpr, HAS_SCALE: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dW[e] (N, K) = sum over expert e's rows of (scale * a[row])^T b[row]; a row is a token row when gathered."""
    e = tl.program_id(0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    n_ok, k_ok = offs_n < N, offs_k < K
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for blk in range(tl.load(EXPERT_START + e), tl.load(EXPERT_START + e + 1)):
        rows = (blk * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        pair = tl.load(PAIR + rows)
        valid = pair < S
        a_rows = rows
        if A_GATHER:
            a_rows = pair // TOPK
        b_rows = rows
        if B_GATHER:
            b_rows = pair // TOPK
        a = tl.load(A + a_rows[:, None] * sam + offs_n[None, :], mask=valid[:, None] & n_ok[None, :], other=0.0)
        if HAS_SCALE:
            a = (a.to(tl.float32) * tl.load(SCALE + pair, mask=valid, other=0.0).to(tl.float32)[:, None]).to(B.dtype.element_ty)
        b = tl.load(B + b_rows[:, None] * sbm + offs_k[None, :], mask=valid[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(tl.trans(a), b, acc, input_precision=PRECISION)
    tl.store(DW + e * sde + offs_n[:, None] * sdn + offs_k[None, :] * sdk, acc.to(DW.dtype.element_ty),
             mask=n_ok[:, None] & k_ok[None, :])


def _align(top_k_index: torch.Tensor, num_experts: int, block_m: int):
    """Sort (token, k) pairs by expert, padding each expert's run to a multiple of block_m.

    Returns pair_of_row (R,) with S for padding rows, block_expert (R / block_m,) with -1 past the last expert,
    and expert_start (E + 1,) in blocks. R is the worst case S + E * (block_m - 1), rounded up: no host sync.
    """
    ids = top_k_index.reshape(-1)
    pairs = ids.numel()
    counts = torch.bincount(ids, minlength=num_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, 0)
    order = torch.argsort(ids, stable=True)
    sorted_ids = ids[order]
    rank = torch.arange(pairs, device=ids.device) - (torch.cumsum(counts, 0) - counts)[sorted_ids]
    num_blocks = triton.cdiv(pairs + num_experts * (block_m - 1), block_m)
    pair_of_row = torch.full((num_blocks * block_m,), pairs, dtype=torch.int64, device=ids.device)
    pair_of_row[(padded_end - padded)[sorted_ids] + rank] = order
    block_end = padded_end // block_m
    block_expert = torch.searchsorted(block_end, torch.arange(num_blocks, device=ids.device), right=True)
    block_expert = torch.where(block_expert < num_experts, block_expert, -1).to(torch.int32)
    expert_start = torch.cat([block_end.new_zeros(1), block_end]).to(torch.int32)
    return pair_of_row, block_expert, expert_start


def _block_m(pairs: int, num_experts: int) -> int:
    if _INTERPRET:
        return 16
    return min(64, max(16, triton.next_power_of_2(max(1, pairs // num_experts))))


class _FusedExperts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, top_k_index, top_k_weights, gate_up_proj, down_proj, save):
        tokens, hidden = x.shape
        num_experts, inter = down_proj.shape[0], down_proj.shape[2]
        topk = top_k_index.shape[1]
        pairs = tokens * topk
        bm = _block_m(pairs, num_experts)
        pair_of_row, block_expert, expert_start = _align(top_k_index, num_experts, bm)
        rows, blocks = pair_of_row.numel(), block_expert.numel()
        prec = "ieee" if x.dtype == torch.float32 else "tf32"
        weights = top_k_weights.reshape(-1).contiguous()

        h = x.new_empty(rows, inter)
        gu = x.new_empty(rows, 2 * inter) if save else h
        w1 = gate_up_proj
        _gate_up_kernel[lambda m: (blocks, triton.cdiv(inter, m["BLOCK_N"]))](
            x, w1, pair_of_row, block_expert, h, gu, x.stride(0), w1.stride(0), w1.stride(1), w1.stride(2),
            pairs, topk, inter, hidden, SAVE_GU=save, PRECISION=prec, BLOCK_M=bm)
        # per-pair outputs in float32, summed over k in float32 like transformers' grouped_mm path
        y = x.new_empty(pairs, hidden, dtype=torch.float32)
        w2 = down_proj
        _scatter_gemm_kernel[lambda m: (blocks, triton.cdiv(hidden, m["BLOCK_N"]))](
            h, w2, pair_of_row, block_expert, weights, y, w2.stride(0), w2.stride(2), w2.stride(1),
            pairs, hidden, inter, HAS_SCALE=True, PRECISION=prec, BLOCK_M=bm)
        if save:
            ctx.save_for_backward(x, weights, gate_up_proj, down_proj, pair_of_row, block_expert, expert_start, h, gu)
            ctx.dims = (tokens, hidden, num_experts, inter, topk, bm, prec)
        return y.view(tokens, topk, hidden).sum(1).to(x.dtype)

    @staticmethod
    def backward(ctx, dout):
        x, weights, w1, w2, pair_of_row, block_expert, expert_start, h, gu = ctx.saved_tensors
        tokens, hidden, num_experts, inter, topk, bm, prec = ctx.dims
        need_x, _, need_w, need_w1, need_w2, _ = ctx.needs_input_grad
        dy = dout.contiguous().to(x.dtype)
        pairs, rows, blocks = tokens * topk, pair_of_row.numel(), block_expert.numel()
        common = dict(PRECISION=prec, BLOCK_M=bm)

        dgu = torch.empty_like(gu)
        dw_part = x.new_empty(triton.cdiv(inter, DOWN_BWD_N), rows, dtype=torch.float32)
        _down_bwd_kernel[(blocks, triton.cdiv(inter, DOWN_BWD_N))](
            dy, w2, pair_of_row, block_expert, weights, gu, dgu, dw_part, w2.stride(0), w2.stride(1), w2.stride(2),
            rows, pairs, topk, inter, hidden, **common)

        dx = dweights = dw1 = dw2 = None
        if need_w:  # padding rows point at the extra slot `pairs`, dropped after the scatter
            dweights = dw_part.new_zeros(pairs + 1).scatter_(0, pair_of_row.long(), dw_part.sum(0))[:pairs]
            dweights = dweights.view(tokens, topk).to(weights.dtype)
        if need_x:
            dx_pairs = x.new_empty(pairs, hidden, dtype=torch.float32)
            _scatter_gemm_kernel[lambda m: (blocks, triton.cdiv(hidden, m["BLOCK_N"]))](
                dgu, w1, pair_of_row, block_expert, weights, dx_pairs, w1.stride(0), w1.stride(1), w1.stride(2),
                pairs, hidden, 2 * inter, HAS_SCALE=False, **common)
            dx = dx_pairs.view(tokens, topk, hidden).sum(1).to(x.dtype)
        if need_w1:  # dW1[e] (2I, D) = dgu^T x
            dw1 = torch.empty_like(w1)
            _wgrad_kernel[lambda m: (num_experts, triton.cdiv(2 * inter, m["BLOCK_N"]), triton.cdiv(hidden, m["BLOCK_K"]))](
                dgu, x, pair_of_row, expert_start, weights, dw1, 2 * inter, x.stride(0), *dw1.stride(),
                pairs, topk, 2 * inter, hidden, A_GATHER=False, B_GATHER=True, HAS_SCALE=False, **common)
        if need_w2:  # dW2[e] (D, I) = (w * dy)^T h
            dw2 = torch.empty_like(w2)
            _wgrad_kernel[lambda m: (num_experts, triton.cdiv(hidden, m["BLOCK_N"]), triton.cdiv(inter, m["BLOCK_K"]))](
                dy, h, pair_of_row, expert_start, weights, dw2, hidden, inter, *dw2.stride(),
                pairs, topk, hidden, inter, A_GATHER=True, B_GATHER=False, HAS_SCALE=True, **common)
        return dx, None, dweights, dw1, dw2, None


def fused_experts(x: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                  gate_up_proj: torch.Tensor, down_proj: torch.Tensor) -> torch.Tensor:
    """SwiGLU experts over tokens x (T, D) routed by top_k_index/top_k_weights (T, K); returns (T, D)."""
    tensors = (x, top_k_weights, gate_up_proj, down_proj)
    save = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)  # keep activations only for training
    return _FusedExperts.apply(x.contiguous(), top_k_index, top_k_weights, gate_up_proj, down_proj, save)


def reference_experts(x, top_k_index, top_k_weights, gate_up_proj, down_proj):
    """Plain PyTorch loop over experts with the same semantics, for tests."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in range(gate_up_proj.shape[0]):
        tok, slot = torch.where(top_k_index == e)
        gate, up = (x[tok] @ gate_up_proj[e].T).chunk(2, dim=-1)
        y = (torch.nn.functional.silu(gate) * up) @ down_proj[e].T
        out = out.index_add(0, tok, y.float() * top_k_weights[tok, slot, None].float())
    return out.to(x.dtype)
