"""Auxiliary-loss-free load balancing (DeepSeek-V3 report, section 2.1.2), which transformers leaves to us.

The router picks experts by `sigmoid score + e_score_correction_bias`; after each training step we
move each layer's bias by gamma * sign(mean load - expert load), so overloaded experts become less
likely to be chosen without any loss term. MaxVio = max load / mean load - 1 measures the imbalance.
"""
from __future__ import annotations

import torch
from transformers import TrainerCallback
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter


class ExpertLoadBalancer(TrainerCallback):
    def __init__(self, model: torch.nn.Module, gamma: float):
        self.gamma = gamma
        self.routers = [m for m in model.modules() if isinstance(m, DeepseekV3TopkRouter)]
        self.loads = [torch.zeros(r.num_experts, dtype=torch.float64) for r in self.routers]
        self.history: list[dict] = []  # one entry per step: {"step", "maxvio": [per layer]}
        for router, load in zip(self.routers, self.loads):
            router.register_forward_hook(self._counter(load))

    @staticmethod
    def _counter(load: torch.Tensor):
        def hook(module, inputs, outputs):
            # Count only the forward passes that train (grad enabled): the tokens this step learns from.
            if torch.is_grad_enabled():
                top_k_indices = outputs[2]
                load.add_(torch.bincount(top_k_indices.flatten().cpu(), minlength=load.numel()).double())
        return hook

    def maxvio(self) -> list[float]:
        return [float(load.max() / load.mean() - 1) if load.sum() > 0 else 0.0 for load in self.loads]

    @torch.no_grad()
    def update(self) -> list[float]:
        """Apply one bias update from the loads counted since the last one; return per-layer MaxVio."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for router, load in zip(self.routers, self.loads):  # every rank applies the same update
                total = load.to(router.weight.device)  # NCCL reduces device tensors only
                torch.distributed.all_reduce(total)
                load.copy_(total.cpu())
        violation = self.maxvio()
        for router, load in zip(self.routers, self.loads):
            if load.sum() > 0 and self.gamma > 0:
                bias = router.e_score_correction_bias
                step = self.gamma * torch.sign(load.mean() - load)
                bias.add_(step.to(bias.device, bias.dtype))
            load.zero_()
        return violation

    def on_step_end(self, args, state, control, **kwargs):
        if not self.routers:
            return
        violation = self.update()
        self.history.append({"step": state.global_step, "maxvio": violation})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self.history:
            layers = self.history[-1]["maxvio"]
            logs["maxvio"] = sum(layers) / len(layers)
            logs.update({f"maxvio/layer{i}": v for i, v in enumerate(layers)})
