"""Speed of the fused Triton kernels against what transformers runs by default, in bfloat16 on a GPU.

    .venv/bin/python benchmarks/kernels.py            # all shapes, a table to stdout
    .venv/bin/python benchmarks/kernels.py --markdown # the same as a markdown table for benchmarks/RESULTS.md

Attention: `reasoner.kernels.flash_attention` vs torch's `scaled_dot_product_attention` (causal, MLA head dims
192/128). Experts: `reasoner_fused` vs transformers' `grouped_mm` on a real `DeepseekV3Experts` module, uniform
random top-k routing. TFLOP/s count the algorithmic matmul FLOPs (the same for both sides, so the ratio is a
time ratio); forward+backward counts the backward as 3*Dqk + 2*Dv (attention) and twice the forward (experts).
Each row first checks that both sides agree, so a fast but wrong kernel cannot post a figure.
Without a CUDA device it says so and exits: the interpreter measures nothing about speed.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

# `python benchmarks/kernels.py` puts this folder first on sys.path, where this very file would pass for the
# `kernels` package that transformers probes for and imports; drop the folder before transformers loads.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import torch  # noqa: E402

# name: (batch, heads, seq, d_qk, d_v)
ATTENTION = {
    "V2-Lite attn": (4, 16, 4096, 192, 128),
    "V3 attn": (1, 128, 4096, 192, 128),
}
# name: (tokens, experts, top_k, hidden, moe_intermediate). V3 keeps its per-expert dims but 64 local experts
# (one expert-parallel shard of 256 at EP=4), so weights + grads fit one 80 GB GPU next to the activations.
EXPERTS = {
    "V2-Lite experts": (8192, 64, 6, 2048, 1408),
    "V3 experts (EP=4 shard)": (8192, 64, 8, 7168, 2048),
}


def bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100)  # milliseconds


def rel_err(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def attention_rows(name, batch, heads, seq, d_qk, d_v):
    from reasoner.kernels.flash_attention import flash_attention

    q = torch.randn(batch, heads, seq, d_qk, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(batch, heads, seq, d_qk, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(batch, heads, seq, d_v, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dout = torch.randn(batch, heads, seq, d_v, device="cuda", dtype=torch.bfloat16)
    ours = lambda: flash_attention(q, k, v, causal=True)  # noqa: E731
    sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    err = rel_err(ours(), sdpa())
    assert err < 2e-2, f"{name}: flash_attention disagrees with sdpa (relative error {err:.2e})"
    pairs = batch * heads * seq * seq / 2  # causal
    flops = {"fwd": 2 * pairs * (d_qk + d_v), "fwd+bwd": 2 * pairs * (4 * d_qk + 3 * d_v)}
    for mode in flops:
        step = (lambda f: f()) if mode == "fwd" else (lambda f: torch.autograd.grad(f(), (q, k, v), dout))
        times = {who: bench(lambda: step(fn)) for who, fn in (("ours", ours), ("baseline", sdpa))}
        yield name, mode, "sdpa", flops[mode], times, err


def experts_rows(name, tokens, experts, top_k, hidden, inter):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Experts

    import reasoner  # noqa: F401  (registers reasoner_fused)

    config = DeepseekV3Config(hidden_size=hidden, moe_intermediate_size=inter, n_routed_experts=experts,
                              num_experts_per_tok=top_k)
    module = DeepseekV3Experts(config).to("cuda", torch.bfloat16)
    torch.nn.init.normal_(module.gate_up_proj, std=hidden**-0.5)
    torch.nn.init.normal_(module.down_proj, std=inter**-0.5)
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    index = torch.rand(tokens, experts, device="cuda").argsort(-1)[:, :top_k]
    weights = torch.rand(tokens, top_k, device="cuda").softmax(-1).requires_grad_()
    dout = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
    params = (x, weights, module.gate_up_proj, module.down_proj)

    def run(impl):
        config._experts_implementation = impl
        return module(x, index, weights)

    reference = run("grouped_mm")
    err = rel_err(run("reasoner_fused"), reference)
    assert err < 2e-2, f"{name}: reasoner_fused disagrees with grouped_mm (relative error {err:.2e})"
    fwd = 6 * tokens * top_k * hidden * inter
    for mode, flops in (("fwd", fwd), ("fwd+bwd", 3 * fwd)):
        step = (lambda i: run(i)) if mode == "fwd" else (lambda i: torch.autograd.grad(run(i), params, dout))
        times = {who: bench(lambda: step(impl)) for who, impl in (("ours", "reasoner_fused"), ("baseline", "grouped_mm"))}
        yield name, mode, "grouped_mm", flops, times, err
    del module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", action="store_true", help="print a markdown table for RESULTS.md")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/kernels.py: no CUDA device here, so no speed figures: these kernels are timed on a GPU "
              "only (CPU runs check correctness under TRITON_INTERPRET=1, see tests/test_kernels_triton.py).",
              file=sys.stderr)
        return 0

    device = torch.cuda.get_device_name()
    stamp = datetime.datetime.now().strftime("%Y-%m-%d")
    header = ("shape", "pass", "baseline", "ours TFLOP/s", "baseline TFLOP/s", "speedup", "rel err")
    if args.markdown:
        print(f"Device: {device}, torch {torch.__version__}, bfloat16, {stamp}\n")
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    else:
        print(f"{device}  torch {torch.__version__}  bfloat16  {stamp}")
        print("{:<26}{:<9}{:<12}{:>14}{:>18}{:>9}{:>10}".format(*header))
    rows = [attention_rows(n, *s) for n, s in ATTENTION.items()] + [experts_rows(n, *s) for n, s in EXPERTS.items()]
    for generator in rows:
        for name, mode, baseline, flops, times, err in generator:
            ours, theirs = flops / times["ours"] / 1e9, flops / times["baseline"] / 1e9  # ms -> TFLOP/s
            cells = (name, mode, baseline, f"{ours:.1f}", f"{theirs:.1f}", f"{ours / theirs:.2f}x", f"{err:.1e}")
            if args.markdown:
                print("| " + " | ".join(cells) + " |")
            else:
                print("{:<26}{:<9}{:<12}{:>14}{:>18}{:>9}{:>10}".format(*cells))
            sys.stdout.flush()
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
