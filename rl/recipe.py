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

from reasoner.config import load_config, packaged_config, resolve_config_path
from reasoner.errors import ConfigError
from reasoner.rl.rewards import REWARD_NAMES
from reasoner.sampling import Sampling
from reasoner.tasks.registry import TASKS


def _f(default, **constraints):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=constraints)
    return field(default=default, metadata=constraints)


@dataclass
class TrainData:
    """GSM8K's and MATH's train splits for GRPO prompts: a JSON-lines path you give, or "hub" to load them with
    `datasets.load_dataset` (online only). When any is set, training draws from these instead of the task."""
    gsm8k: str | None = _f(None)                   # openai/grade-school-math train.jsonl, or "hub"
    math: str | None = _f(None)                    # MATH train (jsonl, or hendrycks' folder of .json), or "hub"


@dataclass
class ParallelConfig:
    """The GPU layout a real run is planned for (`reasoner train RECIPE --dry-run`, rl/dryrun.py); the run itself
    takes the same accelerate config through `accelerate launch --config_file`."""
    accelerate_config: str | None = _f(None)       # packaged name (ddp, fsdp, zero3) or a path; None: one process
    gpus: int = _f(1, minimum=1)
    gpu: str = _f("h100", enum=["h100", "h200", "h800", "a100"])
    mfu: float = _f(0.3, exclusiveMinimum=0, maximum=1)  # assumed model FLOPs utilisation for the step time
    prompt_length: int = _f(256, minimum=1)        # planned prompt tokens (TRL does not truncate prompts)


@dataclass
class TaskConfig:
    name: str = _f("arithmetic", enum=["arithmetic", "countdown", "code", "word", "gsm8k", "math500", "humaneval"])
    train_levels: list[int] = _f([1, 2, 3])
    per_level: int = _f(4000, minimum=1)          # generated training problems per level
    eval_level: int | None = _f(3)                # the held-out "hard" split
    n_eval: int = _f(500, minimum=1)
    prompt_style: str = _f("plain", enum=["plain", "r1"])
    train_data: TrainData = field(default_factory=TrainData)  # real train splits (rl/traindata.py)


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
    word_levels: list[int] = _f([])                # also cold-start word problems: worked answers and plans
    word_per_level: int = _f(500, minimum=1)
    report_to: str = _f("none")                    # TRL/transformers loggers: none, tensorboard, wandb, ... (comma-separated)
    logging_dir: str | None = _f(None)             # TensorBoard event files; None: <output_dir>/sft/logs
    logging_steps: int = _f(10, minimum=1)         # log (and report) every N optimizer steps


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
    vllm_mode: str = _f("colocate", enum=["colocate", "server"])  # TRL's GRPOConfig.vllm_mode
    vllm_server_base_url: str | None = _f(None)    # server mode: e.g. http://10.0.0.1:8000
    vllm_gpu_memory_utilization: float = _f(0.3, exclusiveMinimum=0, maximum=1)  # colocate: vLLM's share of a GPU
    vllm_tensor_parallel_size: int = _f(1, minimum=1)  # colocate: GPUs one vLLM engine spans
    micro_batch_size: int | None = _f(None, minimum=1)  # sequences per forward/backward (gradient accumulation)
    gradient_checkpointing: bool = _f(False)       # recompute each decoder layer in backward
    report_to: str = _f("none")                    # TRL/transformers loggers: none, tensorboard, wandb, ... (comma-separated)
    logging_dir: str | None = _f(None)             # TensorBoard event files; None: <output_dir>/grpo/logs
    logging_steps: int = _f(1, minimum=1)          # log (and report) every N optimizer steps


@dataclass
class RejectionStage:
    """R1's stage 3 (rl/rejection.py): k samples per train problem from the previous checkpoint, kept when the
    grader passes them (gold answers are allowed on the train split), deduplicated, filtered by length and
    format; the next `sft` stage trains on what is kept, for `sft_max_steps` steps (None: sft.max_steps)."""
    levels: list[int] = _f([1])
    n_problems: int = _f(1000, minimum=1)          # train problems sampled
    samples: int = _f(8, minimum=1)                # k completions per problem
    temperature: float = _f(1.0, minimum=0)
    top_p: float = _f(1.0, exclusiveMinimum=0, maximum=1)
    max_new_tokens: int = _f(96, minimum=1)
    max_chars: int = _f(512, minimum=1)            # longer completions are dropped
    require_format: bool = _f(True)                # the answer must parse
    per_problem: int = _f(4, minimum=1)            # distinct kept completions per problem, at most
    chunk_size: int = _f(64, minimum=1)            # problems per journaled chunk (the resume unit)
    sft_max_steps: int | None = _f(None, minimum=1)
    sft_learning_rate: float | None = _f(None, exclusiveMinimum=0)


STAGE_KINDS = ("sft", "grpo", "rejection")


@dataclass
class BalanceConfig:
    gamma: float = _f(1e-3, minimum=0)             # bias update speed; 0 turns balancing off


@dataclass
class EvalConfig:
    samples: int = _f(1, minimum=1)
    temperature: float = _f(0.0, minimum=0)
    max_new_tokens: int = _f(96, minimum=1)

    @property
    def sampling(self) -> Sampling:
        """The one sampling type the engine, generation and evaluation take (seeded: evaluation repeats)."""
        return Sampling(temperature=self.temperature, max_tokens=self.max_new_tokens, seed=0)


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
    traces: str | None = _f(None)                   # trace store for GRPO rollouts; None: <output_dir>/traces.db
    seed: int = _f(0)
    threads: int | None = _f(None, minimum=1)       # torch CPU threads; None: torch's default
    task: TaskConfig = field(default_factory=TaskConfig)
    sft: SFTStage = field(default_factory=SFTStage)
    grpo: GRPOStage = field(default_factory=GRPOStage)
    stages: list[str] = _f([])                      # e.g. [sft, grpo, rejection, sft, grpo]; []: sft then grpo
    rejection: RejectionStage = field(default_factory=RejectionStage)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    mtp: MTPConfig = field(default_factory=MTPConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    @classmethod
    def load(cls, name_or_path: str | Path, overrides: list[str] = ()) -> "Recipe":
        path = resolve_config_path("recipes", name_or_path)
        recipe = from_dict(cls, load_config(path, schema_for(cls), overrides))
        check_recipe(recipe, path)  # what a schema cannot say: names, levels and lengths that must agree
        return recipe

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
        # float is ["number", "integer"]: flatten, or `float | None` becomes a nested list jsonschema cannot read
        return {"type": [t for ty in types for t in (ty if isinstance(ty, list) else [ty])]}
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


def check_recipe(recipe: "Recipe", source: str | Path = "recipe") -> None:
    """Fail at load, before any training, on values the schema cannot judge alone: reward names, levels that
    the task has, weights that match the rewards, a starting model that exists. One ConfigError naming the key."""
    def fail(key: str, message: str):
        raise ConfigError(f"{source}: {key}: {message}")

    def check_levels(key: str, levels, task_name: str) -> None:
        task = TASKS.get(task_name)
        known = tuple(getattr(task, "levels", ()) or ())
        if not known:
            return
        for level in levels if isinstance(levels, list) else [levels]:
            if level is not None and level not in known:
                fail(key, f"got {level!r}, but task '{task_name}' has levels {', '.join(map(str, known))}")

    # Levels are checked where they are used: a disabled stage's default levels need not fit the task, and
    # GRPO prompts from real train splits (task.train_data) do not use grpo.levels. Extra levels (plan, code,
    # word) are empty by default, so any given are checked.
    task = recipe.task.name
    train_data = getattr(recipe.task, "train_data", None)
    real_prompts = train_data is not None and any(
        value is not None for value in (dataclasses.asdict(train_data).values()
                                        if dataclasses.is_dataclass(train_data) else [train_data]))
    if recipe.sft.enabled:
        check_levels("task.train_levels", recipe.task.train_levels, task)
    check_levels("task.eval_level", recipe.task.eval_level, task)
    if recipe.grpo.enabled and not real_prompts:
        check_levels("grpo.levels", recipe.grpo.levels, task)
    check_levels("sft.plan_levels", recipe.sft.plan_levels, task)
    check_levels("sft.code_levels", recipe.sft.code_levels, "code")
    if getattr(recipe.sft, "word_levels", None):
        check_levels("sft.word_levels", recipe.sft.word_levels, "word")
    if recipe.sft.enabled and not recipe.task.train_levels:
        fail("task.train_levels", "empty, but the SFT stage is enabled and trains on these levels")
    if recipe.grpo.enabled and not real_prompts and not recipe.grpo.levels:
        fail("grpo.levels", "empty, but the GRPO stage is enabled and draws its prompts from these levels")

    _check_stages(recipe, fail, check_levels)
    rewards = recipe.grpo.rewards
    for i, name in enumerate(rewards):
        if name not in REWARD_NAMES:
            fail(f"grpo.rewards.{i}", f"unknown reward {name!r}; known rewards: {', '.join(REWARD_NAMES)}")
    if recipe.grpo.enabled and not rewards:
        fail("grpo.rewards", "empty: GRPO needs at least one reward")
    if len(set(rewards)) != len(rewards):
        fail("grpo.rewards", f"{rewards}: each reward at most once")
    weights = recipe.grpo.reward_weights
    if weights is not None and len(weights) != len(rewards):
        fail("grpo.reward_weights", f"{len(weights)} weights for {len(rewards)} rewards ({', '.join(rewards)}); "
                                    "give one weight per reward, or null for all 1.0")
    if recipe.grpo.overlong_buffer > recipe.grpo.max_completion_length:
        fail("grpo.overlong_buffer", f"{recipe.grpo.overlong_buffer} is longer than grpo.max_completion_length "
                                     f"({recipe.grpo.max_completion_length})")
    epsilon_high = recipe.grpo.epsilon_high
    if epsilon_high is not None and epsilon_high < recipe.grpo.epsilon:
        fail("grpo.epsilon_high", f"{epsilon_high} is below grpo.epsilon ({recipe.grpo.epsilon}); or null")
    if recipe.lora.enabled and not recipe.lora.target_modules:
        fail("lora.target_modules", "empty, but LoRA is enabled")
    if not str(recipe.output_dir).strip():
        fail("output_dir", "empty")
    _check_model(recipe.model, source, fail)


def _check_stages(recipe: "Recipe", fail, check_levels) -> None:
    """A stage list names known stages; a rejection stage samples a checkpoint an earlier stage made and
    hands its dataset to the sft stage right after it."""
    stages = list(getattr(recipe, "stages", None) or [])
    for i, stage in enumerate(stages):
        if stage not in STAGE_KINDS:
            fail(f"stages.{i}", f"unknown stage {stage!r}; known stages: {', '.join(STAGE_KINDS)}")
        if stage == "rejection" and i == 0:
            fail(f"stages.{i}", "rejection samples the previous stage's checkpoint: it cannot come first")
        if stage == "rejection" and (i + 1 == len(stages) or stages[i + 1] != "sft"):
            fail(f"stages.{i}", "rejection makes a dataset for the sft stage right after it: follow it with sft")
    if "rejection" in stages:
        check_levels("rejection.levels", recipe.rejection.levels, recipe.task.name)
        if not recipe.rejection.levels:
            fail("rejection.levels", "empty, but a rejection stage draws its problems from these levels")


def _check_model(model: str, source, fail) -> None:
    """A checkpoint directory, a model YAML path or a packaged model name (checked without importing torch)."""
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").exists():
            fail("model", f"{model}: a directory without config.json is not a checkpoint")
        return
    if path.exists() and path.is_file():
        return
    if path.suffix in (".yaml", ".yml") or "/" in model:
        fail("model", f"{model}: no such checkpoint directory or model YAML")
    if not packaged_config("models", model).exists():
        available = sorted(p.stem for p in packaged_config("models", "x").parent.glob("*.yaml"))
        fail("model", f"no packaged model named {model!r}; available: {', '.join(available)}, "
                      "or a model YAML or checkpoint directory")
