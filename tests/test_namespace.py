"""`rl` and `kernels` exist only as reasoner.rl / reasoner.kernels; from the repo root the bare names
resolve to empty namespace packages, so transformers' probe of a top-level `kernels` runs none of our code."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import sys, importlib, importlib.util
sys.path.insert(0, "")            # what `python -c` and `python -m` do from the repo root
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
from transformers.utils.import_utils import is_kernels_available
config = DeepseekV3Config(vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
    num_hidden_layers=2, num_attention_heads=2, n_routed_experts=4, num_experts_per_tok=2, n_group=1,
    topk_group=1, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8)
import torch
DeepseekV3ForCausalLM(config)(torch.tensor([[1, 2, 3]]))
assert not is_kernels_available(), "transformers believes our kernels/ folder is the kernels package"
ours = [name for name, module in sys.modules.items()
        if name.split(".")[0] in ("kernels", "rl") and getattr(module, "__file__", None)]
assert not ours, f"code of ours ran under a top-level name: {ours}"
for bare in ("kernels", "rl"):
    spec = importlib.util.find_spec(bare)
    if spec is not None and spec.origin not in (None, "namespace"):
        assert not spec.origin.startswith(sys.argv[1]), f"{bare} resolves to a module of ours: {spec.origin}"
import reasoner.rl.recipe, reasoner.kernels
print("ok")
"""


def test_transformers_probe_from_repo_root_runs_none_of_our_code():
    result = subprocess.run([sys.executable, "-c", PROBE, str(REPO)], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_folders_stay_namespace_packages():
    assert not (REPO / "kernels" / "__init__.py").exists()
    assert not (REPO / "rl" / "__init__.py").exists()
