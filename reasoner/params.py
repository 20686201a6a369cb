"""Parameter counts of a model shape, total and activated per token, without allocating weights."""
from __future__ import annotations

from collections import OrderedDict

import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

from reasoner.mtp import attach_mtp

PARTS = ("embeddings", "attention", "dense_mlp", "shared_experts", "routed_experts", "router", "norms", "mtp")


def part_of(name: str, num_hidden_layers: int | None = None) -> str:
    if num_hidden_layers is not None and name.startswith("model.layers."):
        if int(name.split(".")[2]) >= num_hidden_layers:
            return "mtp"
    if "embed_tokens" in name or name.startswith("lm_head"):
        return "embeddings"
    if ".self_attn." in name:
        return "norms" if "layernorm" in name else "attention"
    if ".mlp.shared_experts." in name:
        return "shared_experts"
    if ".mlp.experts." in name:
        return "routed_experts"
    if ".mlp.gate." in name:
        return "router"
    if ".mlp." in name:
        return "dense_mlp"
    return "norms"


def count_parameters(config: DeepseekV3Config) -> dict[str, dict[str, int]]:
    """{part: {"total": n, "active": n}} plus "all"; the model is built on the meta device.

    Activated per token: every weight a token is multiplied with, i.e. all but the routed experts
    (a token uses num_experts_per_tok of n_routed_experts) and the input embedding (a row lookup).
    The output head counts. This reproduces the reports: V3 36.6B ("37B"), V2-Lite 2.45B ("2.4B").

    The MTP module (reasoner/mtp.py, `num_mtp_layers` deep) is its own part, counted as published: its block,
    enorm/hnorm/eh_proj and shared_head.norm plus the copies of the embedding and output head that the
    published checkpoint stores under `model.layers.{N}` (V3: 671B + 14B = 685B). It is not activated per token
    (it runs only in training and when drafting), so the activated figure stays the main model's.
    """
    with torch.device("meta"):
        model = DeepseekV3ForCausalLM(config)
        attach_mtp(model, getattr(config, "num_mtp_layers", 0) or 0)
    counts = OrderedDict((part, {"total": 0, "active": 0}) for part in PARTS)
    routed_fraction = config.num_experts_per_tok / config.n_routed_experts
    for name, param in model.named_parameters():
        part = part_of(name, config.num_hidden_layers)
        counts[part]["total"] += param.numel()
        counts[part]["active"] += round(param.numel() * _active_fraction(name, part, routed_fraction))
    depth = len(model.model.layers) - config.num_hidden_layers
    counts["mtp"]["total"] += depth * (model.model.embed_tokens.weight.numel() + model.lm_head.weight.numel())
    counts["all"] = {key: sum(c[key] for c in counts.values()) for key in ("total", "active")}
    return counts


def _active_fraction(name: str, part: str, routed_fraction: float) -> float:
    if part == "mtp":
        return 0.0
    if part == "routed_experts":
        return routed_fraction
    return 0.0 if "embed_tokens" in name else 1.0


def human(n: int) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)
