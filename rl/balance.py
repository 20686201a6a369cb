"""Auxiliary-loss-free load balancing (DeepSeek-V3 report, section 2.1.2), which transformers leaves to us.

The router picks experts by `sigmoid score + e_score_correction_bias`; after each training step we
move each layer's bias by gamma * sign(mean load - expert load), so overloaded experts become less
likely to be chosen without any loss term. MaxVio = max load / mean load - 1 measures the imbalance.

Loads are the experts actually chosen for the tokens the step trains on: forward passes with grad
enabled (rollout generation, reference and old-policy log-probs run without grad and are left out),
padding excluded (the model's 2-D `attention_mask`), summed over gradient-accumulation micro-batches
and, under torch.distributed, over all ranks, so every rank applies the same update to its copy of
the bias (a buffer, which DDP/FSDP/ZeRO do not average).

The MTP module's block (reasoner/mtp.py) is an MoE layer like the others: its router is found, counted and
updated the same way. A router that saw no training tokens in a step (an MTP layer trained with weight 0)
is left out of that step's MaxVio mean instead of counting as perfectly balanced.
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
        self._logged = 0               # history entries already folded into a log line
        self._token_mask: torch.Tensor | None = None
        if self.routers:
            model.register_forward_pre_hook(self._remember_mask, with_kwargs=True)
        for i, router in enumerate(self.routers):
            router.register_forward_hook(self._counter(i))

    def _remember_mask(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        self._token_mask = mask.reshape(-1).bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def _counter(self, i: int):
        def hook(module, inputs, outputs):
            # Count only the forward passes that train (grad enabled): the tokens this step learns from.
            if not torch.is_grad_enabled():
                return
            chosen = outputs[2]  # (tokens, top_k) expert indices
            mask = self._token_mask
            if mask is not None and mask.numel() == chosen.shape[0]:
                chosen = chosen[mask.to(chosen.device)]
            counts = torch.bincount(chosen.flatten(), minlength=self.loads[i].numel())
            if self.loads[i].device != counts.device:  # keep counting on the router's device: no sync per forward
                self.loads[i] = self.loads[i].to(counts.device)
            self.loads[i].add_(counts)
        return hook

    def maxvio(self) -> list[float]:
        return [float(load.max() / load.mean() - 1) if load.sum() > 0 else 0.0 for load in self.loads]

    @torch.no_grad()
    def update(self) -> list[float]:
        """Apply one bias update from the loads counted since the last one; return per-layer MaxVio."""
        if self.routers and torch.distributed.is_available() and torch.distributed.is_initialized():
            # One collective for all layers; every rank then applies the same update.
            device = self.routers[0].e_score_correction_bias.device  # NCCL reduces device tensors only
            total = torch.stack([load.to(device) for load in self.loads])
            torch.distributed.all_reduce(total)
            self.loads = [row.clone() for row in total]
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
        counted = [bool(load.sum() > 0) for load in self.loads]
        violation = self.update()
        self.history.append({"step": state.global_step, "maxvio": violation, "counted": counted})

    def on_log(self, args, state, control, logs=None, **kwargs):
        """MaxVio averaged over the steps since the last log line: `maxvio` (mean of layers) and per layer.

        Trainer.log appends a copy of `logs` to state.log_history before callbacks run, so the entry
        there (what trainer_state.json and the training plots read) gets the values too."""
        recent = self.history[self._logged:]
        if logs is None or not recent:
            return
        self._logged = len(self.history)
        layers = {}
        for i in range(len(self.routers)):
            seen = [entry["maxvio"][i] for entry in recent if entry.get("counted", [True] * (i + 1))[i]]
            if seen:
                layers[i] = sum(seen) / len(seen)
        if not layers:
            return
        values = {"maxvio": sum(layers.values()) / len(layers), **{f"maxvio/layer{i}": v for i, v in layers.items()}}
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)
