"""`reasoner train RECIPE --dry-run`: check a recipe the way a real run would, then plan it per GPU.

Nothing is allocated: the model is built on the meta device (as `reasoner info` does), LoRA is applied to
that meta model with peft, TRL's GRPOConfig is built from the recipe, and the accelerate config is read.
The plan is arithmetic on the model's shape and the recipe's lengths and batch:

    weights      total parameters x dtype bytes, / GPUs under FSDP or ZeRO-3
    gathered     FSDP/ZeRO-3 all-gather one decoder layer to compute it (x2: the next one is prefetched)
    gradients    trainable parameters x dtype bytes, / GPUs under FSDP or ZeRO-3
    optimizer    AdamW's two moments in the parameter dtype (the Trainer's torch AdamW; our stages run with
                 bf16=False, so there is no fp32 master copy), except ZeRO-3 with a bf16 model, where
                 DeepSpeed keeps an fp32 master copy and fp32 moments: 12 bytes per trainable parameter
    reference    a second copy of the weights when grpo.beta > 0 (with LoRA the reference is the base
                 model with adapters off, so no copy)
    activations  tensors autograd saves per token and layer for transformers' DeepseekV3 (see
                 `activation_bytes_per_token`), x tokens in one micro-batch; with gradient checkpointing,
                 each layer's input plus one layer recomputed
    LM head      TRL's fused log-prob head: one [4096, 32768] tile, fp32 statistics and hidden-state gradient per
                 completion token, and the fp32 head-weight gradient when the head trains (no [tokens, vocab] logits)
    rollout      the latent KV cache: (kv_lora_rank + qk_rope_head_dim) values per token per layer, for every
                 sequence of a generation round (our engine, transformers' cache and vLLM's MLA cache all hold
                 that compressed form); with vLLM colocated, vLLM's reserved share of the GPU instead
    runtime      2 GiB for the CUDA context and NCCL buffers; a plan fits when the sum is <= 95% of the GPU

FLOPs: 6 x activated parameters per trained token (4 under LoRA: no weight gradients for frozen weights),
plus causal attention 3 x heads x (qk_head_dim + v_head_dim) x sequence length per token and layer; plus
forward passes for gradient checkpointing and the reference model, plus generation (2 x activated
parameters per token and attention over the latent cache). Step time = FLOPs / (GPUs x peak x MFU).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import random
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from transformers import DeepseekV3ForCausalLM

from reasoner.config import read_yaml, resolve_config_path
from reasoner.errors import ReasonerError
from reasoner.model import ModelSpec, is_checkpoint, model_config
from reasoner.params import _active_fraction, human, part_of
from reasoner.rl.data import render_prompt
from reasoner.rl.grpo import grpo_config
from reasoner.rl.lora import with_lora
from reasoner.rl.rewards import REWARD_NAMES, build_rewards
from reasoner.rl.traindata import HUB, load_source
from reasoner.tasks import get_task
from reasoner.tokenizer import load_tokenizer

GiB = 2 ** 30
RUNTIME_RESERVE = 2 * GiB        # CUDA context, NCCL buffers
HEADROOM = 0.95                  # leave 5% for allocator fragmentation


@dataclass(frozen=True)
class GPU:
    name: str
    bf16_tflops: float           # dense bf16 peak, TFLOP/s
    memory_gib: float            # what nvidia-smi reports as total


GPUS = {
    "h100": GPU("H100 SXM 80GB", 989.0, 79.6),
    "h200": GPU("H200 141GB", 989.0, 140.4),
    "h800": GPU("H800 SXM 80GB", 989.0, 79.6),
    "a100": GPU("A100 SXM 80GB", 312.0, 80.0),
}
SHARDINGS = {"single": "one process", "ddp": "DDP (a full copy per GPU)", "fsdp": "FSDP (params, grads, optimizer sharded)",
             "zero3": "DeepSpeed ZeRO-3 (params, grads, optimizer partitioned)"}


# ----------------------------------------------------------------------------------------- the model's shape

@dataclass
class Shape:
    layers: int
    dense_layers: int
    hidden: int
    vocab: int
    heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    rope_dim: int
    nope_dim: int
    v_dim: int
    intermediate: int
    moe_intermediate: int
    n_shared: int
    n_routed: int
    top_k: int
    n_group_or_1: int
    total: int                   # parameters
    active: int                  # activated per token (all but unused routed experts and the input embedding)
    max_layer: int               # parameters of the largest decoder layer
    dtype_bytes: int

    @property
    def latent_per_token(self) -> int:
        """Values the latent KV cache holds per token and layer (MLA's compressed form)."""
        return self.kv_lora_rank + self.rope_dim

    def attention_flops_forward(self, length: int) -> float:
        """Causal attention FLOPs per token over all layers, forward: QK^T and AV over length/2 on average."""
        return self.layers * self.heads * (self.nope_dim + self.rope_dim + self.v_dim) * length

    def lora_parameters(self, r: int, targets: list[str], model) -> int:
        return sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
                   if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets)


def meta_model(config):
    with torch.device("meta"):
        return DeepseekV3ForCausalLM(config)


def shape_of(config, model, dtype_bytes: int) -> Shape:
    routed_fraction = config.num_experts_per_tok / config.n_routed_experts
    total = active = 0
    per_layer: dict[int, int] = {}
    for name, param in model.named_parameters():
        part = part_of(name)
        total += param.numel()
        active += round(param.numel() * _active_fraction(name, part, routed_fraction))
        if ".layers." in name:
            index = int(name.split(".layers.")[1].split(".")[0])
            per_layer[index] = per_layer.get(index, 0) + param.numel()
    return Shape(
        layers=config.num_hidden_layers, dense_layers=min(config.first_k_dense_replace, config.num_hidden_layers),
        hidden=config.hidden_size, vocab=config.vocab_size, heads=config.num_attention_heads,
        q_lora_rank=config.q_lora_rank, kv_lora_rank=config.kv_lora_rank, rope_dim=config.qk_rope_head_dim,
        nope_dim=config.qk_nope_head_dim, v_dim=config.v_head_dim, intermediate=config.intermediate_size,
        moe_intermediate=config.moe_intermediate_size, n_shared=config.n_shared_experts or 0,
        n_routed=config.n_routed_experts, top_k=config.num_experts_per_tok, n_group_or_1=config.n_group or 1, total=total, active=active,
        max_layer=max(per_layer.values(), default=0), dtype_bytes=dtype_bytes)


def activation_bytes_per_token(s: Shape, moe: bool, scores_length: int = 0) -> float:
    """Bytes autograd keeps per token for one decoder layer of transformers' DeepseekV3, tensor by tensor (measured with
    saved_tensors_hooks in benchmarks/plan_memory.py: within 1% for tiny and small, fp32 and bf16, on the CPU).

    RMSNorm keeps its fp32 input, rsqrt and normalised value, and the next linear layer the weighted output;
    attention keeps q, k (after RoPE and concatenation), v and o_proj's input, plus with a fused kernel
    (flash / memory-efficient sdpa, GPUs) its output and fp32 log-sum-exp, or with the math kernel (CPU,
    `scores_length` = sequence length) the softmax probabilities, heads x length per token, with q, k, v and
    the probabilities upcast to fp32 when the model is bf16; a routed token
    keeps its gathered input, the expert's gate/up output, activation, product, weighted output and indices."""
    b = s.dtype_bytes
    h, H = s.hidden, s.heads
    qk = s.nope_dim + s.rope_dim
    C, R = s.kv_lora_rank, s.rope_dim

    def norm(width: int) -> float:     # fp32 input (a copy unless fp32), rsqrt, normalised, weighted output
        return (4 + 2 * b) * width + 4

    compressed = (4 * (C + R) if b == 4 else 4 * C) + 2 * b * C + 4    # kv_a output viewed, normalised, kv_b input
    queries = norm(s.q_lora_rank) if s.q_lora_rank else 0
    if scores_length:   # CPU math kernel: keeps q, k, v and the softmax, upcast to fp32 from bf16/fp16
        attention = 4 * (2 * H * qk + H * s.v_dim + H * scores_length) + b * H * s.v_dim
    else:               # fused kernel: q, k, v, its output and fp32 log-sum-exp; o_proj's input
        attention = b * (2 * H * qk + 3 * H * s.v_dim) + 4 * H
    common = 2 * norm(h) + compressed + queries + attention
    if not moe:
        return common + b * 4 * s.intermediate
    shared = s.moe_intermediate * s.n_shared
    router = (4 * h + 4 * s.n_routed if b != 4 else 0) + 5 * s.n_routed + 12 * s.top_k + 24 * s.n_group_or_1 + 4
    experts = s.top_k * (2 * h * b + 4 * s.moe_intermediate * b + 4 + 24)
    return common + router + experts + b * 4 * shared


def final_bytes(s: Shape, tokens: int, completion_tokens: int) -> float:
    """The final norm over every token, and the hidden states TRL's head gathers for the completion tokens."""
    return tokens * ((4 + s.dtype_bytes) * s.hidden + 4) + completion_tokens * (s.hidden * s.dtype_bytes + 12)


HEAD_TOKEN_TILE, HEAD_VOCAB_TILE = 4096, 32768   # TRL's fused LM head tiles (trl/kernels/chunked_logprob.py)


def head_bytes(s: Shape, tokens: int, head_trainable: bool) -> float:
    """TRL's GRPO scores completions through a fused LM head: log-probs tile by tile, the [tokens, vocab] logits
    never exist. It keeps 7 fp32 statistics per token, one tile, and in backward an fp32 gradient of the hidden
    states (and of the head's weight, when the head trains)."""
    tile = min(tokens, HEAD_TOKEN_TILE) * min(s.vocab, HEAD_VOCAB_TILE) * s.dtype_bytes
    return tile + tokens * (7 * 4 + 4 * s.hidden) + (4 * s.vocab * s.hidden if head_trainable else 0)


# ----------------------------------------------------------------------------------------- the plan

@dataclass
class Setup:
    """Everything the plan depends on; alternatives (the fixes) are copies with one thing changed."""
    sharding: str
    gpus: int
    gpu: str
    mfu: float
    trainable: int
    lora: bool
    reference: bool
    sequences: int               # per GPU per optimizer step (prompts_per_step x num_generations)
    micro: int                   # sequences per forward/backward
    prompt: int
    completion: int
    checkpointing: bool
    rollout: str                 # engine | generate | vllm-colocate | vllm-server
    vllm_share: float = 0.3
    vllm_tp: int = 1
    attention: str = "flash"     # flash: fused sdpa kernels (GPUs); math: softmax probabilities kept (CPU)
    offload_optimizer: bool = False
    offload_params: bool = False


@dataclass
class Plan:
    setup: Setup
    memory: list[tuple[str, float, str]]          # (part, bytes per GPU, how)
    per_gpu: float
    capacity: float
    fits: bool
    train_tokens: int
    generated_tokens: int
    flops: dict[str, float]
    step_seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def per_gpu_gib(self) -> float:
        return self.per_gpu / GiB


def plan_memory(s: Shape, u: Setup) -> tuple[list[tuple[str, float, str]], list[str]]:
    b = s.dtype_bytes
    sharded = u.sharding in ("fsdp", "zero3")
    shard = u.gpus if sharded else 1
    notes = []
    rows = []
    weights = 0 if (u.offload_params and u.sharding == "zero3") else s.total * b / shard
    rows.append(("weights", weights, f"{s.total / 1e9:.2f}B x {b} B" + (f" / {shard} GPUs" if sharded else "")))
    if sharded:
        rows.append(("gathered layer", 2 * s.max_layer * b,
                     f"all-gather of the largest decoder layer ({s.max_layer / 1e9:.2f}B), x2 for prefetch"))
    rows.append(("gradients", u.trainable * b / shard, f"{u.trainable / 1e9:.3f}B trainable x {b} B"
                 + (f" / {shard}" if sharded else "")))
    per_param = 12 if (u.sharding == "zero3" and b < 4) else (8 if u.sharding == "zero3" else 2 * b)
    optimizer = 0 if u.offload_optimizer else u.trainable * per_param / shard
    rows.append(("optimizer", optimizer, f"AdamW, {per_param} B per trainable parameter"
                 + (" (fp32 master + moments)" if per_param == 12 else "") + (f" / {shard}" if sharded else "")
                 + (" -> offloaded to CPU" if u.offload_optimizer else "")))
    if u.reference:
        rows.append(("reference model", s.total * b / shard, "grpo.beta > 0: a frozen copy for the KL term"))
    length = u.prompt + u.completion
    tokens = u.micro * length
    scores = length if u.attention == "math" else 0
    per_layer = [activation_bytes_per_token(s, False, scores)] * s.dense_layers + \
        [activation_bytes_per_token(s, True, scores)] * (s.layers - s.dense_layers)
    final = final_bytes(s, tokens, u.micro * u.completion)
    kernel = "math attention: softmax kept" if scores else "fused attention"
    if u.checkpointing:
        acts = tokens * (s.layers * s.hidden * b + max(per_layer)) + final
        how = f"{u.micro} seq x {length} tokens, checkpointed: layer inputs + one layer recomputed ({kernel})"
    else:
        acts = tokens * sum(per_layer) + final
        how = f"{u.micro} seq x {length} tokens x {s.layers} layers ({sum(per_layer) / s.layers / 1024:.1f} KiB/token/layer, {kernel})"
    rows.append(("activations", acts, how))
    rows.append(("backward", tokens * max(per_layer), "one layer's activation gradients while it is back-propagated"))
    rows.append(("LM head", head_bytes(s, u.micro * u.completion, not u.lora),
                 f"TRL's fused log-probs over {u.micro} x {u.completion} completion tokens: one tile, fp32 stats and "
                 "hidden-state gradient" + ("" if u.lora else ", fp32 head-weight gradient")))
    cache = s.layers * s.latent_per_token * b * u.sequences * length
    cache_how = (f"latent cache {s.latent_per_token} values x {s.layers} layers x {u.sequences} seq x {length} tokens")
    if u.rollout == "vllm-colocate":
        share = u.vllm_share * GPUS[u.gpu].memory_gib * GiB
        need = s.total * b / u.vllm_tp + cache / u.vllm_tp
        rows.append(("rollout (vLLM colocate)", share, f"vllm_gpu_memory_utilization {u.vllm_share} of the GPU; inside it "
                     f"weights {s.total * b / u.vllm_tp / GiB:.1f} GiB + {cache_how} = {need / GiB:.1f} GiB"))
        if need > share:
            notes.append(f"vLLM's share ({share / GiB:.1f} GiB) is smaller than its weights + latent cache "
                         f"({need / GiB:.1f} GiB): raise grpo.vllm_gpu_memory_utilization or vllm_tensor_parallel_size")
    elif u.rollout == "vllm-server":
        rows.append(("rollout (vLLM server)", 0, "generation runs on the server's own GPUs"))
        notes.append(f"the vLLM server needs {(s.total * b + cache * u.gpus) / GiB:.1f} GiB across its GPUs "
                     f"(weights + latent cache for all {u.sequences * u.gpus} sequences of a round)")
    else:
        rows.append((f"rollout ({'our engine' if u.rollout == 'engine' else 'transformers generate'})", cache, cache_how))
    rows.append(("runtime", RUNTIME_RESERVE, "CUDA context, NCCL buffers"))
    return rows, notes


def plan_time(s: Shape, u: Setup) -> tuple[int, int, dict[str, float], float]:
    length = u.prompt + u.completion
    sequences = u.sequences * u.gpus
    train_tokens, generated = sequences * length, sequences * u.completion
    attention = s.attention_flops_forward(length)
    flops = {"train": train_tokens * ((4 if u.lora else 6) * s.active + 3 * attention)}
    if u.lora:
        flops["train"] += train_tokens * 6 * u.trainable
    if u.checkpointing:
        flops["recompute"] = train_tokens * (2 * s.active + attention)
    if u.reference:
        flops["reference"] = train_tokens * (2 * s.active + attention)
    context = u.prompt + u.completion / 2
    latent_attention = 2 * s.layers * s.heads * (2 * s.kv_lora_rank + s.rope_dim) * context
    flops["generation"] = sequences * u.prompt * (2 * s.active + attention) + generated * (2 * s.active + latent_attention)
    total = sum(flops.values())
    seconds = total / (u.gpus * GPUS[u.gpu].bf16_tflops * 1e12 * u.mfu)
    return train_tokens, generated, flops, seconds


def make_plan(s: Shape, u: Setup) -> Plan:
    memory, notes = plan_memory(s, u)
    per_gpu = sum(size for _, size, _ in memory)
    capacity = GPUS[u.gpu].memory_gib * GiB
    train_tokens, generated, flops, seconds = plan_time(s, u)
    fits = per_gpu <= HEADROOM * capacity and not any("smaller than its weights" in n for n in notes)
    return Plan(u, memory, per_gpu, capacity, fits, train_tokens, generated, flops, seconds, notes)


def fixes(s: Shape, u: Setup, lora_trainable: int) -> list[str]:
    """One-change alternatives that fit, each named as the recipe or command change that makes it."""
    found = []

    def fit(**change) -> Plan:
        return make_plan(s, dataclasses.replace(u, **change))

    if u.sharding in ("fsdp", "zero3"):
        for gpus in (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048):
            if gpus > u.gpus and fit(gpus=gpus).fits:
                found.append(f"more GPUs: --gpus {gpus} ({fit(gpus=gpus).per_gpu_gib:.1f} GiB per GPU)")
                break
    else:
        for sharding, name in (("zero3", "zero3"), ("fsdp", "fsdp")):
            for gpus in sorted({max(u.gpus, 2), 8, 16, 32, 64}):
                if gpus >= u.gpus and fit(sharding=sharding, gpus=gpus).fits:
                    found.append(f"shard: --accelerate-config {name} --gpus {gpus}")
                    break
    if u.sharding != "zero3" and fit(sharding="zero3", gpus=max(u.gpus, 2) if u.gpus > 1 else u.gpus).fits and u.gpus > 1:
        found.append("ZeRO-3: --accelerate-config zero3 (fp32 master weights, but partitioned)")
    if not u.lora:
        alt = fit(lora=True, trainable=lora_trainable, reference=False)
        if alt.fits:
            found.append(f"LoRA: --set lora.enabled=true ({lora_trainable / 1e6:.0f}M trainable, no reference copy; "
                         f"{alt.per_gpu_gib:.1f} GiB per GPU)")
    if not u.checkpointing and fit(checkpointing=True).fits:
        found.append("--set grpo.gradient_checkpointing=true")
    micro = u.micro // 2
    while micro >= 1:
        if u.sequences % micro == 0 and fit(micro=micro).fits:
            found.append(f"smaller micro-batches: --set grpo.micro_batch_size={micro}")
            break
        micro //= 2
    completion = u.completion // 2
    while completion >= 64:
        if fit(completion=completion).fits:
            found.append(f"shorter completions: --set grpo.max_completion_length={completion}")
            break
        completion //= 2
    return found or combined_fix(s, u, lora_trainable)


def combined_fix(s: Shape, u: Setup, lora_trainable: int) -> list[str]:
    """No single change fits: apply them one after another (checkpointing, one sequence per micro-batch,
    sharding, more GPUs, LoRA, halved completions) and name the shortest sequence that fits."""
    changes: list[str] = []
    current = u

    def fits(setup: Setup) -> bool:
        return make_plan(s, setup).fits

    steps = []
    if not u.checkpointing:
        steps.append(("--set grpo.gradient_checkpointing=true", dict(checkpointing=True)))
    if u.micro > 1:
        steps.append(("--set grpo.micro_batch_size=1", dict(micro=1)))
    if u.sharding not in ("fsdp", "zero3"):
        steps.append(("--accelerate-config fsdp", dict(sharding="fsdp", gpus=max(u.gpus, 8))))
    for text, change in steps:
        current = dataclasses.replace(current, **change)
        changes.append(text)
        if fits(current):
            return [f"combined: {' + '.join(changes)}"]
    for gpus in (8, 16, 32, 64, 128, 256, 512, 1024, 2048):
        if gpus > current.gpus and fits(dataclasses.replace(current, gpus=gpus)):
            return [f"combined: {' + '.join([*changes, f'--gpus {gpus}'])}"]
    options = [(current, changes)]
    if not current.lora:
        options.append((dataclasses.replace(current, lora=True, trainable=lora_trainable, reference=False),
                        [*changes, "--set lora.enabled=true"]))
    for setup, named in options:
        if fits(setup):
            return [f"combined: {' + '.join(named)}"]
        completion = setup.completion // 2
        while completion >= 64:
            for gpus in sorted({setup.gpus, 64, 256, 1024}):
                if gpus >= setup.gpus and fits(dataclasses.replace(setup, completion=completion, gpus=gpus)):
                    extra = [f"--gpus {gpus}"] if gpus != setup.gpus else []
                    return [f"combined: {' + '.join([*named, *extra, f'--set grpo.max_completion_length={completion}'])}"]
            completion //= 2
    return []


# ----------------------------------------------------------------------------------------- the dry run

@dataclass
class DryRun:
    recipe_name: str
    shape: Shape
    setup: Setup
    plan: Plan
    problems: list[str]          # a real run would stop on these
    checks: list[str]            # what was checked
    launch: list[str]            # needed on the GPU machine, not checkable here
    fixes: list[str]


def read_accelerate(name_or_path: str | None) -> tuple[str | None, dict[str, Any]]:
    if not name_or_path:
        return None, {}

    path = resolve_config_path("accelerate", name_or_path)
    return str(path), read_yaml(path)


def sharding_of(accelerate: dict[str, Any], gpus: int) -> tuple[str, bool, bool]:
    kind = accelerate.get("distributed_type", "NO" if gpus == 1 else "MULTI_GPU")
    if kind == "FSDP":
        offload = bool(accelerate.get("fsdp_config", {}).get("fsdp_offload_params"))
        return "fsdp", offload, offload
    if kind == "DEEPSPEED":
        ds = accelerate.get("deepspeed_config", {})
        stage = ds.get("zero_stage", 0)
        if stage != 3:
            raise ReasonerError(f"the planner models ZeRO stage 3 only; this accelerate config has zero_stage {stage}")
        return "zero3", ds.get("offload_optimizer_device", "none") != "none", ds.get("offload_param_device", "none") != "none"
    if kind in ("MULTI_GPU", "MULTI_CPU"):
        return "ddp", False, False
    if kind == "NO":
        return "single", False, False
    raise ReasonerError(f"accelerate distributed_type {kind!r}: the planner knows NO, MULTI_GPU, FSDP and DEEPSPEED")


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)   # a real run would stop on these
    checks: list[str] = field(default_factory=list)     # what was checked
    launch: list[str] = field(default_factory=list)     # needed on the GPU machine, not checkable here


def dry_run(recipe, gpus: int | None = None, gpu: str | None = None, accelerate_config: str | None = None,
            mfu: float | None = None) -> DryRun:
    """Validate `recipe` as `reasoner train` would, without weights, and plan it per GPU."""
    found, p = Findings(), recipe.parallel
    gpus, gpu, mfu = gpus or p.gpus, (gpu or p.gpu).lower(), mfu or p.mfu
    if gpu not in GPUS:
        raise ReasonerError(f"--gpu {gpu}: known GPUs are {', '.join(GPUS)}")
    accel_path, accelerate = read_accelerate(accelerate_config or p.accelerate_config)
    sharding, offload_optimizer, offload_params = _sharding(accel_path, accelerate, gpus, found)
    config, shape, model, dtype = _model(recipe.model)
    found.checks.append(f"model {recipe.model}: {human(shape.total)} parameters, {human(shape.active)} activated "
                        f"per token, {dtype}")
    trainable, lora_alt = _trainable(recipe, shape, model, found)
    sequences, micro = _grpo_stage(recipe, config, sharding, accel_path, accelerate, found)
    rollout = _rollout(recipe, gpus, sharding, found)
    loaded = _train_data(recipe, found)
    if gpus > 1 and not accel_path:
        found.launch.append(f"{gpus} GPUs without --accelerate-config: planned as DDP (configs/accelerate/ddp.yaml)")
    if not _cuda():
        found.launch.append("a CUDA machine (this one has no GPU: nothing here was run on one)")
    g = recipe.grpo
    setup = Setup(sharding=sharding, gpus=gpus, gpu=gpu, mfu=mfu, trainable=trainable, lora=recipe.lora.enabled,
                  reference=g.beta > 0 and not recipe.lora.enabled, sequences=sequences, micro=micro,
                  prompt=_prompt_length(recipe, loaded, found), completion=g.max_completion_length,
                  checkpointing=g.gradient_checkpointing, rollout=rollout,
                  vllm_share=g.vllm_gpu_memory_utilization, vllm_tp=g.vllm_tensor_parallel_size,
                  offload_optimizer=offload_optimizer, offload_params=offload_params)
    plan = make_plan(shape, setup)
    return DryRun(recipe.name, shape, setup, plan, found.problems, found.checks, found.launch,
                  [] if plan.fits else fixes(shape, setup, lora_alt))


def _sharding(accel_path, accelerate: dict, gpus: int, found: Findings) -> tuple[str, bool, bool]:
    sharding, offload_optimizer, offload_params = sharding_of(accelerate, gpus)
    if sharding == "single" and gpus > 1:
        sharding = "ddp"
    if accel_path:
        relaunch = (f" (its num_processes {accelerate.get('num_processes')} -> launch with --num_processes {gpus})"
                    if accelerate.get("num_processes") not in (None, gpus) else "")
        found.checks.append(f"accelerate config {accel_path}: {accelerate.get('distributed_type')}{relaunch}")
    return sharding, offload_optimizer, offload_params


def _model(source: str):
    """(config, Shape, meta model, dtype name): the model as the run would build it, on the meta device."""
    config = model_config(source)
    model = meta_model(config)
    dtype = _dtype_of(source, config, is_checkpoint, ModelSpec)
    return config, shape_of(config, model, {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]), model, dtype


def _trainable(recipe, shape: Shape, model, found: Findings) -> tuple[int, int]:
    """(trainable parameters, what LoRA with the default targets would train: a fix to offer)."""
    default_targets = ["q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
    lora_alt = shape.lora_parameters(recipe.lora.r, default_targets, model)
    if not recipe.lora.enabled:
        return shape.total, lora_alt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = with_lora(model, recipe.lora)      # raises on targets the model lacks, as a run would
    trainable = sum(t.numel() for t in peft_model.parameters() if t.requires_grad)
    found.checks.append(f"LoRA r={recipe.lora.r} on {', '.join(recipe.lora.target_modules)}: "
                        f"{trainable / 1e6:.1f}M trainable (peft, meta device)")
    return trainable, lora_alt


def _grpo_stage(recipe, config, sharding: str, accel_path, accelerate: dict, found: Findings) -> tuple[int, int]:
    """The stage the recipe runs: GRPO (the SFT stage is planned only when GRPO is off). (sequences, micro)."""
    g = recipe.grpo
    if not g.enabled:
        raise ReasonerError("the dry run plans the GRPO stage; this recipe has grpo.enabled: false")
    unknown = sorted(set(g.rewards) - set(REWARD_NAMES))
    if unknown:
        found.problems.append(f"grpo.rewards: unknown {unknown}; known: {', '.join(REWARD_NAMES)}")
    else:
        build_rewards(g.rewards, g.max_completion_length, g.overlong_buffer)
    if g.reward_weights is not None and len(g.reward_weights) != len(g.rewards):
        found.problems.append(f"grpo.reward_weights has {len(g.reward_weights)} entries for {len(g.rewards)} rewards")
    sequences = g.prompts_per_step * g.num_generations
    micro = g.micro_batch_size or sequences
    with tempfile.TemporaryDirectory() as scratch:
        try:
            config_args = grpo_config(recipe, Path(scratch), use_cpu=True)
            found.checks.append(f"TRL GRPOConfig: {config_args.per_device_train_batch_size} sequences per "
                                f"micro-batch x {config_args.gradient_accumulation_steps} accumulation steps, "
                                f"G={g.num_generations}")
        except (ValueError, ReasonerError) as err:
            found.problems.append(f"TRL GRPOConfig rejects the recipe: {err}")
    if sharding == "zero3":
        _check_zero3(accel_path, accelerate, sequences // micro if sequences % micro == 0 else 1, found)
    length = recipe.parallel.prompt_length + g.max_completion_length
    if length > config.max_position_embeddings:
        found.problems.append(f"prompt ({recipe.parallel.prompt_length}) + completion ({g.max_completion_length}) "
                              f"tokens exceed the model's max_position_embeddings ({config.max_position_embeddings})")
    return sequences, micro


def _check_zero3(accel_path, accelerate: dict, accumulate: int, found: Findings) -> None:
    ds = accelerate.get("deepspeed_config", {})
    if ds.get("gradient_accumulation_steps", accumulate) not in (accumulate, "auto"):
        found.problems.append(f"{accel_path}: deepspeed gradient_accumulation_steps={ds['gradient_accumulation_steps']} "
                              f"but the recipe accumulates {accumulate} micro-batches per step: set it to "
                              f"{accumulate} (or auto)")
    if importlib.util.find_spec("deepspeed") is None:
        found.launch.append("pip install deepspeed (ZeRO-3)")


def _rollout(recipe, gpus: int, sharding: str, found: Findings) -> str:
    """How rollouts are sampled: vllm-server, vllm-colocate, our engine, or transformers' generate."""
    g = recipe.grpo
    if g.use_vllm:
        rollout = "vllm-server" if g.vllm_mode == "server" else "vllm-colocate"
        if importlib.util.find_spec("vllm") is None:
            found.launch.append("pip install vllm (TRL's vLLM rollouts, CUDA only)")
        if rollout == "vllm-server":
            where = g.vllm_server_base_url or "TRL default http://0.0.0.0:8000"
            found.launch.append(f"start the vLLM server first ({where}); see docs/scale-out.md")
        elif gpus % g.vllm_tensor_parallel_size:
            found.problems.append(f"grpo.vllm_tensor_parallel_size={g.vllm_tensor_parallel_size} must divide the "
                                  f"{gpus} GPUs")
        return rollout
    if g.fast_rollout and not recipe.lora.enabled:
        if sharding in ("fsdp", "zero3"):
            found.problems.append(f"our rollout engine reads whole weight matrices, which {sharding} shards: set "
                                  "grpo.use_vllm: true (or grpo.fast_rollout: false to sample with transformers)")
        return "engine"
    return "generate"


def _train_data(recipe, found: Findings) -> list:
    """The held-out task loads; the training prompts (real data), where they are here."""
    task = get_task(recipe.task.name)
    eval_problems = task.problems("heldout", 2, level=recipe.task.eval_level, seed=recipe.seed)
    found.checks.append(f"evaluation task {recipe.task.name}: loads ({len(eval_problems)} sampled)")
    data, loaded = recipe.task.train_data, []
    if not (data.gsm8k or data.math):
        if recipe.task.name in ("gsm8k", "math500", "humaneval"):
            found.problems.append(f"task {recipe.task.name} is a test set: set task.train_data (GSM8K/MATH train "
                                  "splits) for GRPO prompts")
        return loaded
    for name, where in (("gsm8k", data.gsm8k), ("math", data.math)):
        if not where:
            continue
        if where == HUB:
            found.launch.append(f"task.train_data.{name}: hub -> network access and HF_HUB_OFFLINE=0 on the "
                                "training machine")
            continue
        if not Path(os.path.expandvars(os.path.expanduser(where))).exists():
            found.launch.append(f"task.train_data.{name}: {where} does not exist here; the run needs it")
            continue
        rows = load_source(name, where)
        loaded += rows
        found.checks.append(f"task.train_data.{name}: {len(rows)} problems from {where}")
    return loaded


def _prompt_length(recipe, loaded: list, found: Findings) -> int:
    """parallel.prompt_length, or the longest sampled training prompt when that is longer."""
    source, configured = recipe.model, recipe.parallel.prompt_length
    if not (loaded and is_checkpoint(source) and (Path(source) / "tokenizer_config.json").exists()):
        return configured
    longest, sampled = longest_prompt(loaded, source, recipe.task.prompt_style, recipe.seed)
    found.checks.append(f"prompts: the longest of {sampled} sampled is {longest} tokens (parallel.prompt_length "
                        f"{configured}" + ("; the plan uses the longest)" if longest > configured else ")"))
    return max(configured, longest)


def longest_prompt(problems: list, source: str, style: str, seed: int, sample: int = 2000) -> tuple[int, int]:
    """Tokens in the longest rendered GRPO prompt of (a seeded sample of) the training problems, with the
    checkpoint's own tokenizer and the recipe's prompt style: TRL does not truncate prompts."""

    tokenizer = load_tokenizer(source)
    chosen = problems if len(problems) <= sample else random.Random(seed).sample(problems, sample)
    return max(len(tokenizer(render_prompt(p.question, tokenizer, style)).input_ids) for p in chosen), len(chosen)


def _dtype_of(source, config, is_checkpoint, ModelSpec) -> str:
    if is_checkpoint(source):
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
        return str(dtype).replace("torch.", "")
    return ModelSpec.load(source).dtype


def _cuda() -> bool:
    return torch.cuda.is_available()


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def render(run: DryRun) -> list[str]:
    u, plan, s = run.setup, run.plan, run.shape
    lines = [f"dry run: {run.recipe_name} on {u.gpus} x {GPUS[u.gpu].name} ({GPUS[u.gpu].memory_gib} GiB, "
             f"{GPUS[u.gpu].bf16_tflops:.0f} TFLOP/s bf16), {SHARDINGS[u.sharding]}"]
    lines += [f"  checked: {c}" for c in run.checks]
    lines += [f"  problem: {p}" for p in run.problems]
    lines += [f"  needs on the GPU machine: {item}" for item in run.launch]
    lines.append(f"per GPU ({'LoRA' if u.lora else 'full parameters'}; {u.sequences} sequences per step, "
                 f"{u.micro} per micro-batch, {u.prompt} + {u.completion} tokens):")
    width = max(len(name) for name, _, _ in plan.memory)
    for name, size, how in plan.memory:
        lines.append(f"  {name:<{width}}  {size / GiB:9.2f} GiB   {how}")
    lines.append(f"  {'total':<{width}}  {plan.per_gpu_gib:9.2f} GiB   of {GPUS[u.gpu].memory_gib} GiB "
                 f"({HEADROOM:.0%} usable: {HEADROOM * plan.capacity / GiB:.1f} GiB)")
    lines += [f"  note: {n}" for n in plan.notes]
    lines.append(f"tokens per step: {plan.train_tokens:,} trained ({u.gpus} GPUs x {u.sequences} x "
                 f"{u.prompt + u.completion}), {plan.generated_tokens:,} generated")
    parts = ", ".join(f"{k} {v:.3g}" for k, v in plan.flops.items())
    total = sum(plan.flops.values())
    lines.append(f"FLOPs per step: {total:.3g} ({parts}; {'4' if u.lora else '6'} x {s.active / 1e9:.2f}B activated "
                 f"per trained token + causal attention)")
    lines.append(f"step time: {_duration(plan.step_seconds)} at MFU {u.mfu:.0%} of {GPUS[u.gpu].bf16_tflops:.0f} TFLOP/s "
                 "(decode usually runs below the training MFU: read the generation share as a lower bound)")
    if not plan.fits:
        if run.fixes:
            lines += [f"fix: {f}" for f in run.fixes]
        else:
            lines.append("fix: no single change fits; combine them (more GPUs with ZeRO-3, LoRA, gradient "
                         "checkpointing, smaller micro-batches, shorter completions)")
    lines.append(f"plan: per_gpu_memory_gib={plan.per_gpu_gib:.1f} fits={'yes' if plan.fits else 'no'}")
    return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def exit_code(run: DryRun) -> int:
    """2: a real run would stop on a problem; 1: it does not fit; 0: it fits."""
    return 2 if run.problems else (0 if run.plan.fits else 1)


# ----------------------------------------------------------------------------------------- published facts

V3_PRETRAINING = {"tokens": 14.8e12, "sequence_length": 4096, "gpu_hours_total": 2.788e6, "gpu_hours_pretraining": 2.664e6,
                  "gpu": "h800"}


def v3_pretraining_check() -> dict[str, float]:
    """The MFU the DeepSeek-V3 report implies: the planner's FLOPs for 14.8T tokens of 4096-token sequences on
    the V3 shape, over 2.664M H800 GPU-hours (pre-training) or 2.788M (the whole run, which also includes
    context extension and post-training, so that figure overstates the pre-training time)."""

    config = model_config("deepseek-v3")
    shape = shape_of(config, meta_model(config), 2)
    f = V3_PRETRAINING
    per_token_dense = 6 * shape.active
    per_token_attention = 3 * shape.attention_flops_forward(f["sequence_length"])
    flops = f["tokens"] * (per_token_dense + per_token_attention)
    peak = GPUS[f["gpu"]].bf16_tflops * 1e12
    result = {"active": shape.active, "flops_per_token_dense": per_token_dense, "flops_per_token_attention": per_token_attention,
              "flops": flops}
    for key in ("gpu_hours_pretraining", "gpu_hours_total"):
        achieved = flops / (f[key] * 3600)
        result[f"achieved_tflops_{key}"] = achieved / 1e12
        result[f"mfu_{key}"] = achieved / peak
    return result


def render_v3_check(r: dict[str, float]) -> list[str]:
    f = V3_PRETRAINING
    return [
        "DeepSeek-V3 pre-training, checked against the report (arXiv 2412.19437):",
        f"  FLOPs per token: 6 x {r['active'] / 1e9:.2f}B activated = {r['flops_per_token_dense'] / 1e9:.1f} GFLOP"
        f" + causal attention at {f['sequence_length']} tokens {r['flops_per_token_attention'] / 1e9:.1f} GFLOP",
        f"  x {f['tokens'] / 1e12:.1f}T tokens = {r['flops']:.3g} FLOPs",
        f"  over {f['gpu_hours_pretraining'] / 1e6:.3f}M H800 GPU-hours (pre-training): "
        f"{r['achieved_tflops_gpu_hours_pretraining']:.0f} TFLOP/s per GPU = MFU {r['mfu_gpu_hours_pretraining']:.1%} of 989 (bf16)",
        f"  over {f['gpu_hours_total'] / 1e6:.3f}M (whole run incl. context extension and post-training): "
        f"MFU {r['mfu_gpu_hours_total']:.1%}",
        "  V3 trained its GEMMs in FP8 (H800 FP8 peak 1979 TFLOP/s): against that peak the MFU is half the above.",
        f"v3-pretraining: mfu={r['mfu_gpu_hours_pretraining']:.3f}",
    ]
