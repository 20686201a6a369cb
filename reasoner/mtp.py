"""Multi-token prediction (DeepSeek-V3 report, section 2.2), on transformers' own DeepseekV3ForCausalLM.

transformers' model has no MTP module. We attach V3's: for depth k = 1..D, one `MTPLayer` at
`model.model.layers[num_hidden_layers + k - 1]`, so its weights save and load under the published names
`model.layers.{num_hidden_layers + k - 1}.*`:

    enorm, hnorm          RMSNorm of the next token's embedding and of the previous depth's hidden state
    eh_proj               Linear 2H -> H over concat([enorm(emb), hnorm(h)]), normed embedding first
                          (as vLLM's and SGLang's DeepSeek MTP loaders order it)
    self_attn, mlp, input_layernorm, post_attention_layernorm
                          one transformer block (MoE or dense by the config's first_k_dense_replace rule)
    shared_head.norm      the output norm; shared_head.head is the main model's lm_head (shared, saved as a copy)

The embedding and output head are the main model's. The model object stays a plain
DeepseekV3ForCausalLM (`save_pretrained` writes the extra layer like any other; transformers' forward runs
only the first `num_hidden_layers` layers, so depth 0 and depth D models compute the same main logits).
`reasoner.model.load_model` re-attaches the module when a checkpoint carries its weights.

Depth k at sequence slot i reads the embedding of token i+k and depth k-1's hidden state at slot i (depth 0:
the main model's final, normed hidden state, as vLLM feeds it) and predicts token i+k+1. Slot i keeps the
main model's rope position i at every depth, as vLLM's MTP proposer does.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers.masking_utils import create_causal_mask
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3DecoderLayer, DeepseekV3RMSNorm


class SharedHead(nn.Module):
    """V3's `shared_head`: its own norm, then the main model's lm_head (held by reference, not registered)."""

    def __init__(self, config, lm_head: nn.Module):
        super().__init__()
        self.norm = DeepseekV3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        # Shared: not a submodule, so not a second parameter. Named `head` so that the saved copy's name,
        # shared_head.head.weight, resolves to a module (torch.distributed.checkpoint walks the names under FSDP).
        object.__setattr__(self, "head", lm_head)
        self._register_state_dict_hook(_save_head_copy)
        self.register_load_state_dict_pre_hook(_drop_head_copy)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(hidden))


def _save_head_copy(module, state_dict, prefix, local_metadata):
    # The published layout stores the shared head again under the MTP layer; safetensors refuses shared storage.
    state_dict[prefix + "head.weight"] = module.head.weight.detach().clone()


def _drop_head_copy(module, state_dict, prefix, *args):
    state_dict.pop(prefix + "head.weight", None)


class MTPLayer(DeepseekV3DecoderLayer):
    """One MTP depth: enorm, hnorm, eh_proj, the decoder block and shared_head, all run by `forward`.

    One call does the whole depth because FSDP shards each decoder layer as a unit (configs/accelerate/fsdp.yaml)
    and gathers its weights only around `forward`: `combine` or `shared_head` called on their own would meet
    sharded weights."""

    def __init__(self, config, layer_idx: int, lm_head: nn.Module):
        super().__init__(config, layer_idx)
        self.enorm = DeepseekV3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.hnorm = DeepseekV3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=False)
        self.shared_head = SharedHead(config, lm_head)

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor, **block_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """(next token's embedding, previous depth's hidden state) -> (this depth's hidden state, its logits)."""
        hidden = super().forward(self.combine(embeds, hidden), **block_kwargs)
        return hidden, self.shared_head(hidden)

    def combine(self, embeds: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return self.eh_proj(torch.cat((self.enorm(embeds), self.hnorm(hidden)), dim=-1))


def _base(model):
    """The DeepseekV3ForCausalLM under a peft / DDP wrapper."""
    while "lm_head" not in model._modules:  # peft forwards attribute reads, so ask the module registry
        model = model._modules["module"] if "module" in model._modules else model.get_base_model()
    return model


def mtp_layers(model) -> list[MTPLayer]:
    model = _base(model)
    return list(model.model.layers[model.config.num_hidden_layers:])


def mtp_depth(model) -> int:
    return len(mtp_layers(model))


def attach_mtp(model, depth: int):
    """Append `depth` MTP layers (fresh weights, initialised as transformers initialises the model's own)."""
    model = _base(model)
    config = model.config
    have = mtp_depth(model)
    p = model.lm_head.weight
    for k in range(have, depth):
        layer = MTPLayer(config, config.num_hidden_layers + k, model.lm_head)
        for module in layer.modules():
            model._init_weights(module)
        model.model.layers.append(layer.to(device=p.device, dtype=p.dtype))
    config.num_mtp_layers = max(depth, have)
    if depth and not getattr(model, "_mtp_hooked", False):
        model.model.register_forward_hook(_keep_hidden)
        model._mtp_hooked = True
    return model


def _keep_hidden(module, args, output):
    """Keep the main model's last (normed) hidden state of the latest forward, for the MTP loss."""
    module._mtp_hidden = output.last_hidden_state


def mtp_outputs(model, input_ids, hidden=None, attention_mask=None,
                position_ids=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each depth's (hidden state [B, T, H], logits [B, T, V]): depth k at slot i predicts token i+k+1
    (zero-padded past the end). `hidden` defaults to the main model's last hidden state from its latest forward
    on these inputs."""
    model = _base(model)
    inner = model.model
    if hidden is None:
        hidden = inner._mtp_hidden
    T = input_ids.shape[1]
    if position_ids is None:
        position_ids = torch.arange(T, device=input_ids.device)[None].expand(input_ids.shape[0], -1)
    embeds = inner.embed_tokens(input_ids)
    mask = create_causal_mask(config=model.config, inputs_embeds=embeds, attention_mask=attention_mask,
                              past_key_values=None, position_ids=position_ids)
    rope = inner.rotary_emb(hidden, position_ids)
    out = []
    for k, layer in enumerate(mtp_layers(model), 1):
        shifted = F.pad(embeds[:, k:], (0, 0, 0, k))  # slot i <- embedding of token i+k
        hidden, logits = layer(shifted, hidden, attention_mask=mask, position_ids=position_ids,
                               position_embeddings=rope)
        out.append((hidden, logits))
    return out


def mtp_loss(model, input_ids, labels=None, attention_mask=None, hidden=None) -> torch.Tensor:
    """V3's L_MTP / lambda: the mean over depths of the cross-entropy of depth k on token i+k+1.

    `hidden` defaults to the main model's last hidden state from its latest forward on these inputs.
    `labels` (-100 = ignore) default to `input_ids` where `attention_mask` is set."""
    if labels is None:
        labels = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, -100)
    losses = []
    for k, (_, logits) in enumerate(mtp_outputs(model, input_ids, hidden, attention_mask), 1):
        target = F.pad(labels[:, k + 1:], (0, k + 1), value=-100)
        total = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=-100, reduction="sum")
        losses.append(total / (target != -100).sum().clamp(min=1))
    return torch.stack(losses).mean()


# ------------------------------------------------------------------------------------------------ checkpoints
def _checkpoint_keys(path: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, for a single-file or sharded checkpoint."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.exists():
        return {k: path / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    file = path / "model.safetensors"
    if not file.exists():
        return {}
    with safe_open(file, "pt") as handle:
        return {k: file for k in handle.keys()}


def checkpoint_mtp_depth(path: str | Path, num_hidden_layers: int) -> int:
    """How many MTP layers a checkpoint carries weights for (its config's num_nextn_predict_layers aside:
    transformers writes 1 there by default)."""
    keys = _checkpoint_keys(Path(path))
    depth = 0
    while f"model.layers.{num_hidden_layers + depth}.eh_proj.weight" in keys:
        depth += 1
    return depth


def load_mtp_weights(model, path: str | Path) -> None:
    """Load the MTP layers' weights from `model.layers.{N+k}.*` (per-expert or fused expert layout)."""
    from safetensors import safe_open

    model = _base(model)
    keys = _checkpoint_keys(Path(path))
    for layer in mtp_layers(model):
        prefix = f"model.layers.{layer.self_attn.layer_idx}."
        state = {}
        for name, file in keys.items():
            if name.startswith(prefix):
                with safe_open(file, "pt") as handle:
                    state[name[len(prefix):]] = handle.get_tensor(name)
        state.pop("embed_tokens.weight", None)  # the published layout's copy of the shared embedding
        layer.load_state_dict(_fuse_experts(state), strict=True)


def _fuse_experts(state: dict) -> dict:
    """Per-expert `mlp.experts.{e}.{gate,up,down}_proj.weight` -> transformers' fused gate_up_proj / down_proj."""
    if "mlp.experts.0.gate_proj.weight" not in state:
        return state
    n = 0
    while f"mlp.experts.{n}.gate_proj.weight" in state:
        n += 1
    gate_up = [torch.cat((state.pop(f"mlp.experts.{e}.gate_proj.weight"), state.pop(f"mlp.experts.{e}.up_proj.weight")))
               for e in range(n)]
    down = [state.pop(f"mlp.experts.{e}.down_proj.weight") for e in range(n)]
    return {**state, "mlp.experts.gate_up_proj": torch.stack(gate_up), "mlp.experts.down_proj": torch.stack(down)}


def mtp_loss_on_completions(model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
    """The MTP loss on sampled completions (GRPO with mtp.grpo): the main model's hidden states are computed
    without grad, so only the MTP layers learn to follow the policy and the policy gradient is left alone."""
    ids = torch.cat((prompt_ids, completion_ids), dim=1)
    mask = torch.cat((prompt_mask, completion_mask), dim=1)
    labels = torch.cat((torch.full_like(prompt_ids, -100), completion_ids.masked_fill(completion_mask == 0, -100)), 1)
    with torch.no_grad():
        hidden = _base(model).model(input_ids=ids, attention_mask=mask).last_hidden_state
    return mtp_loss(model, ids, labels, mask, hidden=hidden)
