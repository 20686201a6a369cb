"""The Triton kernels themselves, against plain PyTorch: outputs and gradients.

Runs where Triton can: on CUDA, or on CPU under TRITON_INTERPRET=1. The interpreter must be chosen before
triton is first imported, and the main pytest process imports triton and transformers through other test
files, so on CPU tests/test_kernels.py runs this file in its own `TRITON_INTERPRET=1 pytest` subprocess;
collected in the main process without the interpreter (and without CUDA) it skips. Shapes are small because
the interpreter executes every program in numpy. bfloat16 is GPU-only (the interpreter computes it wrongly).
"""
from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"
pytestmark = pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(),
                                reason="needs CUDA or TRITON_INTERPRET=1 (tests/test_kernels.py runs it so)")
TOL = {torch.float32: 1e-4, torch.float16: 5e-3}


def rel_err(ours, ref):
    """Largest absolute difference relative to the largest reference magnitude."""
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12)).item()


def grads(out, inputs, dout):
    return torch.autograd.grad(out, inputs, dout)


def leaf(t, dtype):
    return t.to(DEVICE, dtype).requires_grad_()


# ------------------------------------------------------------------------------------------------ attention

def padding_mask(batch, seq_q, seq_k, left, right):
    """sdpa-style boolean mask (B, 1, Sq, Sk): bottom-right causal, `left` pads sample 0, `right` pads the last."""
    keys = torch.ones(batch, seq_k, dtype=torch.bool)
    keys[0, :left] = False
    if right:
        keys[-1, seq_k - right:] = False
    causal = torch.arange(seq_k) <= torch.arange(seq_q)[:, None] + seq_k - seq_q
    return (causal & keys[:, None, :])[:, None].to(DEVICE)


ATTENTION_CASES = {
    # name: batch, heads, kv_heads, seq_q, seq_k, d_qk, d_v, causal, padded
    "causal_odd_len": (2, 4, 4, 37, 37, 48, 32, True, False),
    "gqa_padded": (2, 4, 2, 33, 33, 48, 32, False, True),
    "decode": (2, 4, 4, 1, 41, 48, 32, False, True),
    "prefill_over_cache": (2, 4, 2, 7, 29, 48, 32, True, False),
    "prefill_over_cache_padded": (2, 4, 4, 7, 29, 48, 32, False, True),
    "mla_192_128": (1, 2, 2, 40, 40, 192, 128, True, False),
    "full_odd_dims": (1, 2, 1, 19, 23, 40, 24, False, False),
}


def cases(names, fp16_names):
    """Every case in float32, a representative few in float16 (keeps the interpreter run short)."""
    return [pytest.param(n, torch.float32, id=f"{n}-fp32") for n in names] + \
        [pytest.param(n, torch.float16, id=f"{n}-fp16") for n in fp16_names]


@pytest.mark.parametrize("case,dtype", cases(ATTENTION_CASES, ["gqa_padded", "decode", "mla_192_128"]))
def test_flash_attention_matches_reference(case, dtype):
    from reasoner.kernels.flash_attention import flash_attention, reference_attention

    batch, heads, kv_heads, seq_q, seq_k, d_qk, d_v, causal, padded = ATTENTION_CASES[case]
    torch.manual_seed(0)
    q = leaf(torch.randn(batch, heads, seq_q, d_qk), dtype)
    k = leaf(torch.randn(batch, kv_heads, seq_k, d_qk), dtype)
    v = leaf(torch.randn(batch, kv_heads, seq_k, d_v), dtype)
    mask = padding_mask(batch, seq_q, seq_k, left=5, right=3) if padded else None

    out = flash_attention(q, k, v, mask, causal=causal)
    dout = torch.randn_like(out)
    ours = grads(out, (q, k, v), dout)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = reference_attention(q32, k32, v32, mask, causal=causal)
    theirs = grads(ref, (q32, k32, v32), dout.float())

    assert out.shape == (batch, heads, seq_q, d_v) and out.dtype == dtype
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in ours)
    assert rel_err(out, ref) < TOL[dtype]
    for name, a, b in zip("qkv", ours, theirs):
        assert rel_err(a, b) < 10 * TOL[dtype], f"d{name}"


def test_reference_attention_agrees_with_sdpa():
    """The reference itself, against torch's sdpa (GQA, padding, rows that see no key at all -> zeros)."""
    from reasoner.kernels.flash_attention import reference_attention

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 9, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 8)
    mask = padding_mask(2, 9, 9, left=3, right=2).cpu()
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    ours = reference_attention(q, k, v, mask)
    seen = mask.any(-1, keepdim=True).expand_as(ours)
    assert torch.allclose(ours[seen], sdpa[seen], atol=1e-6)
    assert (ours[~seen] == 0).all()


def test_flash_attention_rows_without_keys_are_zero_with_zero_grads():
    """Left padding: the padded queries see nothing. Output and gradients there are 0, never NaN."""
    from reasoner.kernels.flash_attention import flash_attention

    q, k, v = (leaf(torch.randn(1, 2, 12, 16), torch.float32) for _ in range(3))
    mask = padding_mask(1, 12, 12, left=4, right=0)
    out = flash_attention(q, k, v, mask)
    (dq,) = grads(out, (q,), torch.ones_like(out))
    assert (out[:, :, :4] == 0).all() and (dq[:, :, :4] == 0).all()
    assert torch.isfinite(out).all() and torch.isfinite(dq).all()


# ------------------------------------------------------------------------------------------------ experts

EXPERT_CASES = {
    # name: tokens, hidden, intermediate, experts, top_k
    "odd_sizes": (13, 40, 24, 8, 2),
    "tiny_model_shapes": (37, 128, 96, 8, 2),
    "decode_most_experts_empty": (1, 64, 32, 8, 2),
    "top3_of_5": (29, 64, 48, 5, 3),
}


def expert_inputs(tokens, hidden, inter, experts, top_k, dtype):
    torch.manual_seed(0)
    x = leaf(torch.randn(tokens, hidden), dtype)
    index = torch.stack([torch.randperm(experts)[:top_k] for _ in range(tokens)]).to(DEVICE)
    weights = leaf(torch.rand(tokens, top_k), torch.float32)  # the router's weights are float32
    gate_up = leaf(torch.randn(experts, 2 * inter, hidden) / hidden**0.5, dtype)
    down = leaf(torch.randn(experts, hidden, inter) / inter**0.5, dtype)
    return x, index, weights, gate_up, down


@pytest.mark.parametrize("case,dtype", cases(EXPERT_CASES, ["odd_sizes", "top3_of_5"]))
def test_fused_experts_match_reference(case, dtype):
    from reasoner.kernels.moe_experts import fused_experts, reference_experts

    x, index, weights, gate_up, down = expert_inputs(*EXPERT_CASES[case], dtype)
    out = fused_experts(x, index, weights, gate_up, down)
    dout = torch.randn_like(out)
    ours = grads(out, (x, weights, gate_up, down), dout)
    ref_inputs = [t.detach().float().requires_grad_() for t in (x, weights, gate_up, down)]
    ref = reference_experts(ref_inputs[0], index, *ref_inputs[1:])
    theirs = grads(ref, ref_inputs, dout.float())

    assert out.shape == x.shape and out.dtype == dtype
    assert rel_err(out, ref) < TOL[dtype]
    for name, a, b in zip(("x", "weights", "gate_up_proj", "down_proj"), ours, theirs):
        assert a.shape == b.shape and a.dtype == (torch.float32 if name == "weights" else dtype)
        assert rel_err(a, b) < 10 * TOL[dtype], f"d {name}"
    unused = sorted(set(range(gate_up.shape[0])) - set(index.flatten().tolist()))
    assert (ours[2][unused] == 0).all() and (ours[3][unused] == 0).all()  # experts with no token: zero grads


def test_fused_experts_match_transformers_eager_module():
    """Against transformers' own DeepseekV3Experts loop, through the experts interface."""
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Experts

    import reasoner  # noqa: F401  (registers reasoner_fused)

    config = DeepseekV3Config(hidden_size=40, moe_intermediate_size=24, n_routed_experts=6, num_experts_per_tok=2)
    experts = DeepseekV3Experts(config).to(DEVICE)
    torch.nn.init.normal_(experts.gate_up_proj, std=0.2)
    torch.nn.init.normal_(experts.down_proj, std=0.2)
    x, index, weights, _, _ = expert_inputs(11, 40, 24, 6, 2, torch.float32)
    results = {}
    for name in ("eager", "reasoner_fused"):
        config._experts_implementation = name
        experts.zero_grad()
        out = experts(x, index, weights)
        out.pow(2).sum().backward()
        results[name] = (out.detach(), experts.gate_up_proj.grad.clone(), experts.down_proj.grad.clone())
    for ours, ref in zip(results["reasoner_fused"], results["eager"]):
        assert rel_err(ours, ref) < 1e-4


# ------------------------------------------------------------------------------------------------ tiny model

def norm_rel(ours, ref):
    return ((ours - ref).norm() / ref.norm()).item()


@pytest.fixture(scope="module")
def tiny_batch():
    from reasoner.model import load_model

    model, _ = load_model("tiny")
    model.float().to(DEVICE)
    torch.manual_seed(0)
    ids = torch.randint(3, 60, (2, 14), device=DEVICE)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[1, -3:] = 0  # right padding
    return model, ids, mask


def run_model(model, ids, mask, attn, experts):
    model.set_attn_implementation(attn)
    model.set_experts_implementation(experts)
    model.zero_grad()
    out = model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


def test_tiny_model_logits_and_grads_match_sdpa_eager(tiny_batch):
    model, ids, mask = tiny_batch
    ref_logits, ref_grads = run_model(model, ids, mask, "sdpa", "eager")
    logits, grads = run_model(model, ids, mask, "reasoner_flash", "reasoner_fused")
    assert model.config._attn_implementation == "reasoner_flash"
    real = mask.bool()  # padded positions are ignored by the loss and differ by convention between backends
    assert norm_rel(logits[real], ref_logits[real]) < 1e-4
    assert grads.keys() == ref_grads.keys()
    assert any("experts" in n for n in grads) and any("kv_b_proj" in n for n in grads)
    worst = max(grads, key=lambda n: norm_rel(grads[n], ref_grads[n]))
    assert norm_rel(grads[worst], ref_grads[worst]) < 1e-3, worst


def test_tiny_model_generates_the_same_tokens(tiny_batch):
    """Prefill of a padded batch, then 1-token decode steps over the cache."""
    model, ids, mask = tiny_batch
    left = mask.clone()
    left[1] = 1  # generation pads on the left only
    outputs = {}
    for attn, experts in (("sdpa", "eager"), ("reasoner_flash", "reasoner_fused")):
        model.set_attn_implementation(attn)
        model.set_experts_implementation(experts)
        with torch.no_grad():
            outputs[attn] = model.generate(ids, attention_mask=left, max_new_tokens=4, do_sample=False)
    assert torch.equal(outputs["reasoner_flash"], outputs["sdpa"])
