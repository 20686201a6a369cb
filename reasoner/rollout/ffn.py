"""A decoder layer's MLP or MoE for the rollout engine: small ones packed into two matmuls.

transformers' DeepseekV3MoE runs the router, then dispatches tokens expert by expert (`grouped_mm` on CPU
loops over the experts), then the shared expert: about 15 kernel launches and per-expert bookkeeping for
what, on the tiny CPU models, is a few microseconds of arithmetic each. Packed, every routed expert and the
shared expert(s) run as one [tokens, hidden] x [hidden, 2 * units] matmul, SiLU-gate, a per-token weight per
expert (the router's weight for its top-k experts, 0 for the others, 1 for the shared ones) and one
[tokens, units] x [units, hidden] matmul. That computes (E + s) / (k + s) times the needed multiply-adds, so it
is used only where it is faster (measured on CPU, tiny config: 16 tokens 400 us against 585 us for the module;
64 tokens about equal): small layers at a few dozen tokens. Everything else runs the model's own module.

The router is transformers' DeepseekV3TopkRouter arithmetic (sigmoid scores, e_score_correction_bias for the
choice, group-limited top-k, norm_topk_prob, routed_scaling_factor) on the router's own parameters, read live.
The packed matrices are copies, rebuilt by `pack()` when the engine refreshes (`sources()` are checked).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.deepseek_v3.modeling_deepseek_v3 import (DeepseekV3Experts, DeepseekV3MLP, DeepseekV3MoE,
                                                                  DeepseekV3TopkRouter)

MAX_PACKED_WEIGHTS = 1 << 20  # a layer's expert weights, all together: beyond this a step reads too much memory
MAX_PACKED_MACS = 1 << 24  # tokens x packed weights: beyond this the wasted multiply-adds cost more than dispatch


def as_float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()  # skips a no-op dispatch: decode steps are op-bound


def route(gate: DeepseekV3TopkRouter, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' router arithmetic. x: [N, hidden] -> (weights [N, k] float32, expert ids [N, k])."""
    scores = F.linear(as_float32(x), as_float32(gate.weight)).sigmoid()  # [N, E]
    choice = scores + gate.e_score_correction_bias
    if gate.num_group > 1:  # keep the topk_group groups with the best sum of their top-2 scores
        groups = choice.view(len(x), gate.num_group, -1)  # [N, groups, E / groups]
        best = groups.topk(2, dim=-1)[0].sum(dim=-1).topk(gate.topk_group, dim=-1, sorted=False)[1]
        keep = torch.zeros(groups.shape[:2], dtype=torch.bool, device=x.device).scatter_(1, best, True)
        choice = groups.masked_fill(~keep[..., None], float("-inf")).view(len(x), -1)
    experts = choice.topk(gate.top_k, dim=-1, sorted=False)[1]  # [N, k]
    weights = scores.gather(1, experts)
    if gate.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * gate.routed_scaling_factor, experts


def _plain_linear(*modules) -> bool:
    return all(type(m) is nn.Linear and m.bias is None for m in modules)


def _packable(module, config) -> bool:
    """transformers' own modules, unwrapped (a LoRA or other wrapper runs as the module), SiLU, small."""
    if config.hidden_act != "silu":
        return False
    if type(module) is DeepseekV3MLP:
        size = module.gate_proj.weight.numel() * 3
        return _plain_linear(module.gate_proj, module.up_proj, module.down_proj) and size <= MAX_PACKED_WEIGHTS
    if type(module) is not DeepseekV3MoE or type(module.experts) is not DeepseekV3Experts \
            or type(module.gate) is not DeepseekV3TopkRouter or type(module.shared_experts) is not DeepseekV3MLP:
        return False
    shared = module.shared_experts
    size = module.experts.gate_up_proj.numel() + module.experts.down_proj.numel() + 3 * shared.gate_proj.weight.numel()
    return (_plain_linear(shared.gate_proj, shared.up_proj, shared.down_proj) and size <= MAX_PACKED_WEIGHTS
            and shared.gate_proj.weight.shape[0] % module.experts.down_proj.shape[-1] == 0)


class FFN:
    """One layer's feed-forward block: `ffn(h)` with h: [B, S, hidden] -> [B, S, hidden]."""

    def __init__(self, module, config):
        self.module = module
        self.packed = _packable(module, config)
        self.router = module.gate if self.packed and type(module) is DeepseekV3MoE else None
        self.w_in = self.w_out = self.base_weights = None  # base: [1, blocks], 0 per routed expert, 1 per shared
        self.block = 0  # units per expert

    def sources(self) -> list[torch.Tensor]:
        """The parameters the packed matrices are copies of (none when the module runs itself)."""
        if not self.packed:
            return []
        m = self.module
        if self.router is None:
            return [m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight]
        s = m.shared_experts
        return [m.experts.gate_up_proj, m.experts.down_proj, s.gate_proj.weight, s.up_proj.weight, s.down_proj.weight]

    @torch.no_grad()
    def pack(self) -> None:
        """w_in [2 * units, hidden]: every block's gate rows, then every block's up rows; w_out [hidden, units]."""
        if not self.packed:
            return
        m = self.module
        if self.router is None:
            self.w_in = torch.cat((m.gate_proj.weight, m.up_proj.weight))
            self.w_out = m.down_proj.weight.detach().clone()
            self.block = m.gate_proj.weight.shape[0]
            return
        s, gate_up, down = m.shared_experts, m.experts.gate_up_proj.detach(), m.experts.down_proj.detach()
        E, hidden, I = down.shape  # gate_up: [E, 2I, hidden] (gate rows first), down: [E, hidden, I]
        self.w_in = torch.cat((gate_up[:, :I].reshape(E * I, hidden), s.gate_proj.weight,
                               gate_up[:, I:].reshape(E * I, hidden), s.up_proj.weight))
        self.w_out = torch.cat((down.permute(1, 0, 2).reshape(hidden, E * I), s.down_proj.weight), dim=1)
        shared_blocks = s.gate_proj.weight.shape[0] // I  # a shared MLP of n_shared * I units is n_shared blocks
        self.base_weights = torch.cat((torch.zeros(1, E), torch.ones(1, shared_blocks)), dim=1).to(down)
        self.block = I

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        tokens = h.shape[0] * h.shape[1]
        if not self.packed or (self.router is not None and tokens * self.w_in.numel() * 3 // 2 > MAX_PACKED_MACS):
            return self.module(h)  # the model's own MLP / MoE (router, experts, shared)
        x = h.reshape(tokens, -1)  # [N, hidden]
        gate, up = F.linear(x, self.w_in).chunk(2, dim=-1)  # [N, units] each
        act = F.silu(gate).mul_(up)  # [N, units]
        if self.router is not None:
            weights, experts = route(self.router, x)  # [N, k]
            weights = weights if weights.dtype == act.dtype else weights.to(act.dtype)
            per_block = self.base_weights.expand(tokens, -1).scatter(1, experts, weights)
            act = act.view(tokens, -1, self.block).mul_(per_block[:, :, None])  # [N, blocks, I]
        return F.linear(act.view(tokens, -1), self.w_out).view(h.shape)
