"""Training recipes: YAML in configs/recipes/, validated against a schema derived from these dataclasses.

One dataclass per concern (task, SFT, GRPO, balancing, evaluation), as TRL's configs are; the JSON
Schema comes from the field types and `metadata`, so the two can never drift apart.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reasoner.config import load_config, resolve_config_path


def _f(default, **constraints):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=constraints)
    return field(default=default, metadata=constraints)


@dataclass
class TaskConfig:
    name: str = _f("arithmetic", enum=["arithmetic", "countdown", "code", "gsm8k", "math500", "humaneval"])
    train_levels: list[int] = _f([1, 2, 3])
    per_level: int = _f(4000, minimum=1)          # generated training problems per level
    eval_level: int | None = _f(3)                # the held-out "hard" split
    n_eval: int = _f(500, minimum=1)
    prompt_style: str = _f("plain", enum=["plain", "r1"])


@dataclass
class SFTStage:
    enabled: bool = _f(True)
    max_steps: int = _f(500, minimum=0)
    batch_size: int = _f(64, minimum=1)
    learning_rate: float = _f(3e-3, exclusiveMinimum=0)
    warmup_steps: int = _f(20, minimum=0)
    max_length: int = _f(128, minimum=8)
    direct_fraction: float = _f(0.0, minimum=0, maximum=1)  # answers with an empty <think> (see rl/data.py)
    plan_levels: list[int] = _f([])                # also teach the pipeline's planner on these levels
    plan_per_level: int = _f(2000, minimum=1)
    code_levels: list[int] = _f([])                # also cold-start the built-in code task on these levels
    code_per_level: int = _f(500, minimum=1)


@dataclass
class GRPOStage:
    enabled: bool = _f(True)
    max_steps: int = _f(150, minimum=0)
    levels: list[int] = _f([3])
    n_prompts: int = _f(2000, minimum=1)           # training prompts drawn from the task
    prompts_per_step: int = _f(16, minimum=1)
    num_generations: int = _f(8, minimum=2)        # group size G
    learning_rate: float = _f(5e-4, exclusiveMinimum=0)
    loss_type: str = _f("dapo", enum=["grpo", "dr_grpo", "dapo", "bnpo"])
    beta: float = _f(0.0, minimum=0)               # KL coefficient; 0 skips the reference model
    epsilon: float = _f(0.2, exclusiveMinimum=0)
    epsilon_high: float | None = _f(0.28)
    temperature: float = _f(1.0, exclusiveMinimum=0)
    top_p: float = _f(1.0, exclusiveMinimum=0, maximum=1)
    max_completion_length: int = _f(64, minimum=1)
    overlong_buffer: int = _f(16, minimum=1)
    rewards: list[str] = _f(["accuracy", "format", "overlong"])
    reward_weights: list[float] | None = _f([1.0, 0.2, 0.5])
    scale_rewards: str = _f("group", enum=["group", "batch", "none"])
    warmup_steps: int = _f(5, minimum=0)           # learning rate rises from 0 over these steps
    save_steps: int = _f(50, minimum=1)
    use_vllm: bool = _f(False)                     # GPU users: TRL's vLLM rollouts (see README)
    fast_rollout: bool = _f(True)                  # our absorbed-MLA engine, when available


@dataclass
class BalanceConfig:
    gamma: float = _f(1e-3, minimum=0)             # bias update speed; 0 turns balancing off


@dataclass
class EvalConfig:
    samples: int = _f(1, minimum=1)
    temperature: float = _f(0.0, minimum=0)
    max_new_tokens: int = _f(96, minimum=1)


@dataclass
class LoraConfig:
    """peft LoRA on both stages (rl/lora.py); adapters are merged into each stage's saved checkpoint."""
    enabled: bool = _f(False)
    r: int = _f(16, minimum=1)
    alpha: int = _f(32, minimum=1)
    target_modules: list[str] = _f(["q_proj", "kv_b_proj", "o_proj"])


@dataclass
class MTPConfig:
    """Multi-token prediction (reasoner/mtp.py): loss weight lambda (V3: 0.3, then 0.1); 0 trains no MTP."""
    weight: float = _f(0.0, minimum=0)            # MTP loss weight in SFT (and in GRPO with grpo: true)
    depth: int = _f(1, minimum=1)                 # MTP layers added when the model has none and weight > 0
    grpo: bool = _f(False)                        # keep the MTP loss on in GRPO (on the sampled completions)


@dataclass
class Recipe:
    name: str = _f("recipe")
    description: str = _f("")
    model: str = _f("tiny")                         # model YAML / packaged name / checkpoint dir
    output_dir: str = _f("runs/recipe")
    seed: int = _f(0)
    threads: int | None = _f(None)
    task: TaskConfig = field(default_factory=TaskConfig)
    sft: SFTStage = field(default_factory=SFTStage)
    grpo: GRPOStage = field(default_factory=GRPOStage)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    mtp: MTPConfig = field(default_factory=MTPConfig)

    @classmethod
    def load(cls, name_or_path: str | Path, overrides: list[str] = ()) -> "Recipe":
        path = resolve_config_path("recipes", name_or_path)
        return from_dict(cls, load_config(path, schema_for(cls), overrides))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string", type(None): "null"}


def _type_schema(tp) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return schema_for(tp)
    if origin is list:
        return {"type": "array", "items": _type_schema(typing.get_args(tp)[0])}
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        types = [_type_schema(a)["type"] for a in typing.get_args(tp)]
        return {"type": types}
    return {"type": _JSON_TYPES[tp] if tp is not float else ["number", "integer"]}


def schema_for(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties = {}
    for f in dataclasses.fields(cls):
        schema = _type_schema(hints[f.name])
        if schema.get("type") and isinstance(schema["type"], list) and "number" in schema["type"]:
            schema["type"] = sorted(set(schema["type"]) | {"integer"})
        properties[f.name] = {**schema, **f.metadata}
    return {"type": "object", "additionalProperties": False, "properties": properties}


def from_dict(cls, data: dict[str, Any]):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = from_dict(hints[name], value) if dataclasses.is_dataclass(hints[name]) else value
    return cls(**kwargs)
