"""transformers-facing adapters for the kernels, with the PyTorch fallback.

The Triton path runs on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1 (the CI tests). Elsewhere,
and for the few inputs the kernels do not cover, the call goes to transformers' own sdpa / grouped_mm code,
which is correct, only not fused; the first fallback for lack of a GPU logs one line.
"""
from __future__ import annotations

import logging
import os

import torch
from transformers.integrations.moe import grouped_mm_experts_forward
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from reasoner.kernels.flash_attention import flash_attention
from reasoner.kernels.moe_experts import fused_experts

log = logging.getLogger("reasoner.kernels")
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def triton_available(tensor: torch.Tensor) -> bool:
    if tensor.is_cuda:
        return True
    interpreting = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
    if tensor.device.type == "cpu" and interpreting:
        return True
    _warn_once("device", f"reasoner kernels: no CUDA device and TRITON_INTERPRET unset ({tensor.device}): "
                         "reasoner_flash and reasoner_fused run transformers' PyTorch sdpa/grouped_mm code instead")
    return False


def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                      **kwargs):
    """AttentionInterface entry: (B, H, S, D) in, (B, S, H, Dv) out, like sdpa_attention_forward."""
    if kwargs.get("cache") is not None:
        # continuous batching sees "flash" in the name and packs sequences without a mask (varlen style);
        # sdpa would then attend across sequences, so refuse rather than be silently wrong
        raise NotImplementedError("reasoner_flash does not support continuous batching (paged cache); use sdpa")
    unsupported = dropout > 0 or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None \
        or (attention_mask is not None and attention_mask.dtype != torch.bool)
    if unsupported and triton_available(query):
        _warn_once("features", "reasoner_flash: dropout, position bias, softcap or a float mask requested; "
                               "those calls use sdpa")
    if unsupported or not triton_available(query):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    # Same reading of a missing mask as sdpa: causal when it has several queries, upper-left aligned, which
    # transformers only relies on when Sk == Sq or for an empty static cache (keys past Sq unused)
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    q_len = query.shape[2]
    causal = attention_mask is None and bool(is_causal) and q_len > 1
    if causal and key.shape[2] > q_len:
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    out = flash_attention(query, key, value, attention_mask, causal=causal, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def _fusable(experts) -> bool:
    return (experts.has_gate and experts.is_concatenated and not experts.has_bias and not experts.is_transposed
            and not experts.has_post_expert_norm and not experts._is_expert_parallel
            and getattr(experts.config, "hidden_act", None) in ("silu", "swish"))


def experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """ExpertsInterface entry for DeepseekV3-style experts (3-D gate_up_proj / down_proj, SwiGLU)."""
    if not _fusable(self):
        _warn_once("layout", f"reasoner_fused: {type(self).__name__} is not a plain SwiGLU [gate; up] layout; "
                             "using grouped_mm")
        return grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)
    if not triton_available(hidden_states):
        return grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)
    x = hidden_states.to(self.gate_up_proj.dtype)  # autocast may hand float32 activations to bf16 weights
    out = fused_experts(x, top_k_index, top_k_weights, self.gate_up_proj, self.down_proj)
    return out.to(hidden_states.dtype)
