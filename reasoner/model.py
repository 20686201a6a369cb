"""The model: transformers' DeepseekV3ForCausalLM, configured from our YAML or loaded from a checkpoint.

One function, `load_model`, takes either a model YAML (fresh weights) or a checkpoint directory in
`save_pretrained` layout (ours or a hub download), so real checkpoints use the same code path.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
from transformers.utils import logging as hf_logging

import reasoner
from reasoner.config import load_config, resolve_config_path
from reasoner.errors import ReasonerError
from reasoner.mtp import attach_mtp, checkpoint_mtp_depth, load_mtp_weights
from reasoner.rl.checkpoints import verify_manifest, write_manifest
from reasoner.tokenizer import load_tokenizer

RUN_METADATA = "reasoner.json"

_POSITIVE = {"type": "integer", "minimum": 1}
_ARCHITECTURE_FIELDS: dict[str, dict[str, Any]] = {
    "vocab_size": _POSITIVE,
    "hidden_size": _POSITIVE,
    "intermediate_size": _POSITIVE,
    "moe_intermediate_size": _POSITIVE,
    "num_hidden_layers": _POSITIVE,
    "num_attention_heads": _POSITIVE,
    "num_key_value_heads": _POSITIVE,
    "n_shared_experts": {"type": "integer", "minimum": 0},
    "n_routed_experts": _POSITIVE,
    "num_experts_per_tok": _POSITIVE,
    "n_group": _POSITIVE,
    "topk_group": _POSITIVE,
    "first_k_dense_replace": {"type": "integer", "minimum": 0},
    "routed_scaling_factor": {"type": "number", "exclusiveMinimum": 0},
    "norm_topk_prob": {"type": "boolean"},
    "kv_lora_rank": _POSITIVE,
    "q_lora_rank": {"type": ["integer", "null"], "minimum": 1},
    "qk_rope_head_dim": {"type": "integer", "minimum": 2, "multipleOf": 2},
    "qk_nope_head_dim": _POSITIVE,
    "v_head_dim": _POSITIVE,
    "hidden_act": {"enum": ["silu", "gelu", "relu"]},
    "max_position_embeddings": _POSITIVE,
    "initializer_range": {"type": "number", "exclusiveMinimum": 0},
    "rms_norm_eps": {"type": "number", "exclusiveMinimum": 0},
    "rope_theta": {"type": "number", "exclusiveMinimum": 0},
    "rope_interleave": {"type": "boolean"},
    "tie_word_embeddings": {"type": "boolean"},
    "attention_bias": {"type": "boolean"},
    "attention_dropout": {"type": "number", "minimum": 0, "maximum": 1},
    "num_nextn_predict_layers": {"type": "integer", "minimum": 0},  # MTP depth (reasoner/mtp.py); 0: none
}
MODEL_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "architecture"],
    "properties": {
        "name": {"type": "string"},
        "description": {"type": "string"},
        "tokenizer": {"type": "string", "description": "'builtin' or a tokenizer directory"},
        "seed": {"type": "integer"},
        "dtype": {"enum": ["float32", "bfloat16", "float16"]},
        "architecture": {
            "type": "object",
            "additionalProperties": False,
            "required": ["hidden_size", "num_hidden_layers", "num_attention_heads", "n_routed_experts"],
            "properties": _ARCHITECTURE_FIELDS,
        },
    },
}


@dataclass
class ModelSpec:
    """A validated model YAML."""

    name: str
    architecture: dict[str, Any]
    tokenizer: str = "builtin"
    seed: int = 0
    dtype: str = "float32"
    source: str = ""

    @classmethod
    def load(cls, name_or_path: str | Path) -> "ModelSpec":
        path = resolve_config_path("models", name_or_path)
        data = load_config(path, MODEL_SCHEMA)
        spec = cls(**{k: v for k, v in data.items() if k != "description"}, source=str(path))
        spec.check_consistency()
        return spec

    def check_consistency(self) -> None:
        a = self.architecture
        problems = []
        if a["n_routed_experts"] % a.get("n_group", 1):
            problems.append("n_routed_experts must be divisible by n_group")
        if a.get("topk_group", 1) > a.get("n_group", 1):
            problems.append("topk_group must be <= n_group")
        if a.get("num_experts_per_tok", 1) > a["n_routed_experts"]:
            problems.append("num_experts_per_tok must be <= n_routed_experts")
        if a["num_attention_heads"] % a.get("num_key_value_heads", a["num_attention_heads"]):
            problems.append("num_attention_heads must be divisible by num_key_value_heads")
        if problems:
            raise ReasonerError(f"{self.source}: architecture: " + "; ".join(problems))

    def to_config(self, vocab_size: int | None = None, **special_ids: int) -> DeepseekV3Config:
        fields = dict(self.architecture)
        if "vocab_size" not in fields:
            if vocab_size is None:
                raise ReasonerError(f"{self.source}: architecture.vocab_size is unset and no tokenizer gives one")
            fields["vocab_size"] = vocab_size
        fields.setdefault("n_group", 1)
        fields.setdefault("topk_group", 1)
        fields["num_mtp_layers"] = fields.pop("num_nextn_predict_layers", 0)  # transformers' default is 1
        rope_theta = fields.pop("rope_theta", 10000.0)
        fields["rope_parameters"] = {"rope_type": "default", "rope_theta": rope_theta}
        return DeepseekV3Config(**fields, **special_ids)


def is_checkpoint(source: str | Path) -> bool:
    return Path(source).is_dir() and (Path(source) / "config.json").exists()


def load_model(source: str | Path, dtype: torch.dtype | None = None, device: str | None = None,
               verify: bool | None = None):
    """(model, tokenizer) from a model YAML or name (fresh, seeded weights) or a checkpoint directory.

    A checkpoint with a manifest (save_checkpoint and trainer checkpoints write one) is checked first: every
    file's size and SHA-256 (about 1-2 s per GB). REASONER_SKIP_CHECKSUMS=1 checks sizes only (huge checkpoints);
    verify=False loads the files as they are; verify=True hashes even when the variable is set."""
    if is_checkpoint(source):
        return _load_checkpoint(Path(source), dtype, device, verify)
    if Path(source).is_dir():
        raise ReasonerError(f"{source}: a directory without config.json is not a checkpoint")
    spec = ModelSpec.load(source)
    tokenizer = load_tokenizer(spec.tokenizer)
    config = spec.to_config(len(tokenizer), **_special_ids(tokenizer))
    torch.manual_seed(spec.seed)
    model = DeepseekV3ForCausalLM(config)
    attach_mtp(model, config.num_mtp_layers)  # after the main weights: depth 0 and depth D share them
    model = model.to(dtype or getattr(torch, spec.dtype))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return (model.to(device) if device else model), tokenizer


def _special_ids(tokenizer) -> dict[str, int]:
    return {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id}


def _load_checkpoint(path: Path, dtype, device, verify: bool | None = None):
    if verify is not False:
        verify_manifest(path, checksums=verify)  # None: as REASONER_SKIP_CHECKSUMS says; no manifest: unchecked
    try:
        config = DeepseekV3Config.from_pretrained(path, local_files_only=True)
        depth = checkpoint_mtp_depth(path, config.num_hidden_layers)  # from the weights present
        config.num_mtp_layers = depth
        with _quiet_unexpected_keys(depth):
            model = DeepseekV3ForCausalLM.from_pretrained(path, config=config, dtype=dtype or "auto",
                                                          local_files_only=True)
        if depth:
            load_mtp_weights(attach_mtp(model, depth), path)
    except ReasonerError:
        raise
    except Exception as err:  # safetensors, JSON, unicode, missing keys: one message naming what failed to load
        raise ReasonerError(f"{path}: could not load the model ({_weights_files(path)} or config.json is damaged "
                            f"or incompatible): {_first_line(err)}") from None
    if (path / "tokenizer_config.json").exists():
        try:
            tokenizer = load_tokenizer(path)
        except ReasonerError:
            raise
        except Exception as err:
            names = ", ".join(p.name for p in sorted(path.glob("tokenizer*"))) or "tokenizer files"
            raise ReasonerError(f"{path}: could not load the tokenizer ({names} damaged or incompatible): "
                                f"{_first_line(err)}") from None
    else:
        tokenizer = load_tokenizer("builtin")
    return (model.to(device) if device else model), tokenizer


def _weights_files(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin") or p.name.endswith(".index.json"))
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "") if names else "the weights"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__


@contextlib.contextmanager
def _quiet_unexpected_keys(depth: int):
    """transformers reports the MTP layers' weights as unused (load_mtp_weights loads them next)."""
    if not depth:
        yield
        return
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def read_run_metadata(path: str | Path) -> dict[str, Any]:
    file = Path(path) / RUN_METADATA
    return json.loads(file.read_text()) if file.exists() else {}


def save_checkpoint(model, tokenizer, path: str | Path, metadata: dict[str, Any] | None = None,
                    state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write model + tokenizer + run metadata atomically: a reader sees the old or the new one, never half.

    Files go to a temporary sibling directory that is renamed into place in one step. `state_dict`: the full
    weights when the module holds only a shard of them (FSDP, ZeRO-3: reasoner.rl.checkpoints.gather_for_save).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    model.save_pretrained(staging, state_dict=state_dict)
    tokenizer.save_pretrained(staging)
    meta = {"reasoner_version": reasoner.__version__, "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(metadata or {})}
    (staging / RUN_METADATA).write_text(json.dumps(meta, indent=2, default=str))
    write_manifest(staging)  # sizes and SHA-256 of every file: load_model verifies them
    _fsync_tree(staging)
    if path.exists():
        retired = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(retired)
        staging.rename(path)
        shutil.rmtree(retired)
    else:
        staging.rename(path)
    return path


def _fsync_tree(directory: Path) -> None:
    for file in directory.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def model_config(source: str | Path) -> DeepseekV3Config:
    """The config alone (no weights), from a model YAML or name or a checkpoint directory."""
    if is_checkpoint(source):
        config = DeepseekV3Config.from_pretrained(source, local_files_only=True)
        config.num_mtp_layers = checkpoint_mtp_depth(source, config.num_hidden_layers)
        return config
    spec = ModelSpec.load(source)
    if "vocab_size" in spec.architecture:
        return spec.to_config()
    return spec.to_config(len(load_tokenizer(spec.tokenizer)))
