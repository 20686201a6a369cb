"""reasoner_flash / reasoner_fused as transformers sees them: registration, the PyTorch fallback, and the
Triton kernel tests run under the interpreter.

Why a subprocess for the kernels: TRITON_INTERPRET is read when triton decorates a kernel, i.e. on first
import, and this pytest process imports triton and transformers through other test files in any order.
Setting the variable here would be too late (or would leak into them), so tests/test_kernels_triton.py runs in
its own `TRITON_INTERPRET=1 python -m pytest` process.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@pytest.mark.skipif(INTERPRET, reason="this process already interprets: test_kernels_triton.py runs in it")
def test_triton_kernels_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(REPO / "tests" / "test_kernels_triton.py")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 20 and "skipped" not in result.stdout, result.stdout[-3000:]


REGISTRATION_PROBE = r"""
import sys, time
start = time.perf_counter()
import reasoner
took = time.perf_counter() - start
assert "torch" not in sys.modules and "transformers" not in sys.modules, "import reasoner loaded torch/transformers"
from transformers import AttentionInterface
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
assert "reasoner_flash" in AttentionInterface._global_mapping
assert ALL_MASK_ATTENTION_FUNCTIONS["reasoner_flash"] is sdpa_mask
assert "reasoner_fused" in ALL_EXPERTS_FUNCTIONS
assert not {"reasoner.kernels.flash_attention", "reasoner.kernels.moe_experts"} & set(sys.modules), "kernels loaded"
print(f"ok {took:.3f}")
"""


def test_import_reasoner_registers_when_transformers_loads_and_stays_cheap():
    result = subprocess.run([sys.executable, "-c", REGISTRATION_PROBE], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split()[-1]) < 1.0


def test_register_is_idempotent_once_transformers_is_loaded():
    from transformers import AttentionInterface
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    from reasoner.kernels.register import register

    register()
    register()
    assert "reasoner_flash" in AttentionInterface._global_mapping and "reasoner_fused" in ALL_EXPERTS_FUNCTIONS


def padded_batch():
    from reasoner.model import load_model

    model, _ = load_model("tiny")
    model.float()
    torch.manual_seed(0)
    ids = torch.randint(3, 60, (2, 10))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[1, -2:] = 0
    return model, ids, mask


def logits_and_grads(model, ids, mask, attn, experts):
    model.set_attn_implementation(attn)
    model.set_experts_implementation(experts)
    model.zero_grad()
    out = model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.skipif(INTERPRET or torch.cuda.is_available(), reason="the fallback is for CPU without the interpreter")
def test_without_gpu_the_names_fall_back_to_pytorch_and_say_so_once(caplog):
    from reasoner.kernels import integration

    integration._warned.clear()
    model, ids, mask = padded_batch()
    ref_logits, ref_grads = logits_and_grads(model, ids, mask, "sdpa", "eager")
    with caplog.at_level(logging.WARNING, logger="reasoner.kernels"):
        logits, grads = logits_and_grads(model, ids, mask, "reasoner_flash", "reasoner_fused")
        logits_and_grads(model, ids, mask, "reasoner_flash", "reasoner_fused")
    lines = [r for r in caplog.records if r.name == "reasoner.kernels"]
    assert len(lines) == 1 and "TRITON_INTERPRET" in lines[0].getMessage()
    real = mask.bool()
    torch.testing.assert_close(logits[real], ref_logits[real], rtol=1e-5, atol=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
