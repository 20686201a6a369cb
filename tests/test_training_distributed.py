"""Scale-out on the engines we already use: the recipe under `accelerate launch` with 2 processes (CPU, gloo).

DDP, through the shipped configs/accelerate/cpu-2proc.yaml: a tiny launcher calls reasoner.rl.train.train and, per
rank and stage, dumps what must agree across ranks: a digest of every parameter, the routers'
e_score_correction_bias buffers (updated by our balancer, which DDP does not average), the MaxVio history,
and each rank's own expert loads before the all-reduce (which must differ: the ranks saw different data).

FSDP2, through the shipped configs/accelerate/fsdp.yaml on 2 processes: each rank holds half of every sharded
weight, and each stage's final/ and checkpoint-N/ must still be the whole model: loaded in one process it gives the
logits the sharded model gave. SFT trains LoRA adapters (merged into final/), GRPO every weight. Both train the MTP
module too (V3's multi-token prediction, reasoner/mtp.py), whose layer FSDP shards like any decoder layer: the
whole checkpoints carry it, and it gives the sharded model's MTP logits."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel

from reasoner.model import is_checkpoint, load_model, model_config
from reasoner.mtp import attach_mtp, mtp_depth, mtp_outputs
from reasoner.rl.checkpoints import OUTSIDE_ADAPTERS, restore_trained_outside_adapters

REPO = Path(__file__).resolve().parents[1]
SFT_STEPS, GRPO_STEPS = 4, 2

RECIPE = {
    "name": "ddp-test", "model": "tiny", "seed": 0, "threads": 1,
    "task": {"name": "arithmetic", "train_levels": [1, 2], "per_level": 64, "n_eval": 8},
    "sft": {"max_steps": SFT_STEPS, "batch_size": 4, "warmup_steps": 0},
    "grpo": {"max_steps": GRPO_STEPS, "levels": [2], "n_prompts": 32, "prompts_per_step": 2, "num_generations": 4,
             "max_completion_length": 24, "overlong_buffer": 8, "save_steps": 1},
    "balance": {"gamma": 0.01},
}

LAUNCHER = r'''
import hashlib, json, os, sys
import reasoner.rl.balance as balance
import reasoner.rl.train as training
from reasoner.rl.recipe import Recipe

recipe_path, out_dir = sys.argv[1], sys.argv[2]
local_loads = []  # this rank's own expert loads, before the all-reduce, one entry per step

original_update = balance.ExpertLoadBalancer.update
def update(self):
    local_loads.append([load.tolist() for load in self.loads])
    return original_update(self)
balance.ExpertLoadBalancer.update = update

def digest(named):
    h = hashlib.sha256()
    for name, tensor in named:
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()

def recorded(stage, run):
    def wrapper(*args, **kwargs):
        trainer = run(*args, **kwargs)
        acc = trainer.accelerator
        model = acc.unwrap_model(trainer.model)
        record = {
            "rank": acc.process_index, "world": acc.num_processes,
            "distributed_type": str(acc.distributed_type), "backend": acc.state.backend,
            "global_step": trainer.state.global_step,
            "params": digest(sorted(model.named_parameters())),
            "biases": {n: b.tolist() for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")},
            "maxvio": [entry["maxvio"] for entry in trainer.balancer.history],
            "local_loads": list(local_loads),
        }
        local_loads.clear()
        with open(os.path.join(out_dir, f"{stage}-rank{record['rank']}.json"), "w") as f:
            json.dump(record, f)
        return trainer
    return wrapper

training.run_sft = recorded("sft", training.run_sft)    # the names train.py calls
training.run_grpo = recorded("grpo", training.run_grpo)
training.train(Recipe.load(recipe_path))
'''


def launch(tmp_path: Path, config: Path, launcher: str, recipe: dict) -> tuple[Path, Path]:
    """Run `launcher` under `accelerate launch --config_file config` on the recipe; (run dir, records dir)."""
    recipe_file = tmp_path / "recipe.yaml"
    run = tmp_path / "run"
    recipe_file.write_text(yaml.safe_dump({**recipe, "output_dir": str(run)}))
    script = tmp_path / "launch.py"
    script.write_text(launcher)
    records = tmp_path / "records"
    records.mkdir()
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--config_file", str(config), "--main_process_port", "0",
           str(script), str(recipe_file), str(records)]
    env = {**os.environ, "REASONER_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1",
           "TRL_EXPERIMENTAL_SILENCE": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return run, records


@pytest.mark.slow
def test_two_processes_train_and_stay_in_sync(tmp_path):
    run, records = launch(tmp_path, REPO / "configs" / "accelerate" / "cpu-2proc.yaml", LAUNCHER, RECIPE)

    for stage, steps in (("sft", SFT_STEPS), ("grpo", GRPO_STEPS)):
        rank0, rank1 = (json.loads((records / f"{stage}-rank{r}.json").read_text()) for r in (0, 1))
        assert (rank0["rank"], rank1["rank"], rank0["world"]) == (0, 1, 2)
        assert rank0["backend"] == "gloo" and "MULTI" in rank0["distributed_type"]
        assert rank0["global_step"] == rank1["global_step"] == steps
        assert rank0["params"] == rank1["params"], f"{stage}: parameters diverged across ranks"
        assert rank0["biases"] == rank1["biases"], f"{stage}: router biases diverged across ranks"
        assert any(v != 0 for bias in rank0["biases"].values() for v in bias)  # the balancer did move them
        assert len(rank0["maxvio"]) == steps and rank0["maxvio"] == rank1["maxvio"]  # all-reduced loads
        # ...while each rank counted different tokens of its own: the agreement is the all-reduce's doing.
        assert rank0["local_loads"] != rank1["local_loads"]
        assert is_checkpoint(run / stage / "final")
    assert not list(run.glob("*/.final.*"))  # one rank wrote each final, atomically


FSDP_STEPS = {"sft": 2, "grpo": 1}
FSDP_RECIPE = {
    **RECIPE, "name": "fsdp-test",
    "sft": {**RECIPE["sft"], "max_steps": FSDP_STEPS["sft"]},
    # our rollout engine reads whole weights, so sharded GRPO samples with transformers (as the dry run says)
    "grpo": {**RECIPE["grpo"], "max_steps": FSDP_STEPS["grpo"], "fast_rollout": False},
    # the routers' biases stay put: a LoRA checkpoint-N holds only the adapters, so moved biases would be missing
    "balance": {"gamma": 0.0},
    "mtp": {"weight": 0.3, "grpo": True},  # SFT attaches and trains the MTP layer, GRPO keeps training it
}
PROBE = [[1, 17, 5, 23, 9, 41, 2, 30]]  # token ids the logits are compared on

FSDP_LAUNCHER = r"""
import dataclasses, json, sys
import torch
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor
import reasoner.rl.train as training
from reasoner.mtp import mtp_outputs
from reasoner.rl.recipe import Recipe

recipe_path, out_dir = sys.argv[1], sys.argv[2]
PROBE = %r

# LoRA on the SFT stage only (recipes put it on every stage): one launch gathers merged adapters and full weights.
current = []
_stage, _with_lora = training._stage, training.with_lora
def stage(result, name, *args, **kwargs):
    current[:] = [name]
    return _stage(result, name, *args, **kwargs)
def with_lora(model, config):
    return _with_lora(model, dataclasses.replace(config, enabled=current == ["sft"], r=4))
training._stage, training.with_lora = stage, with_lora

# accelerate 1.15 turns an FSDP config into FSDP only from a GPU distributed type (MULTI_GPU, ...); on CPU it
# keeps MULTI_CPU and drops the plugin, so the run would be plain data parallel. Switch it on as a GPU run would.
_init = AcceleratorState.__init__
def init(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None:
        self.fsdp_plugin = fsdp_plugin
    # every AcceleratorState() copies PartialState's MULTI_CPU back in, so this runs on each one, not once
    if getattr(self, "fsdp_plugin", None) is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
AcceleratorState.__init__ = init

def recorded(stage, run):
    def wrapper(*args, **kwargs):
        trainer = run(*args, **kwargs)
        acc, model = trainer.accelerator, trainer.model
        params = list(model.parameters())
        sharded = [p for p in params if isinstance(p, DTensor)]
        model.eval()
        with torch.no_grad():  # every rank: the sharded model all-gathers layer by layer
            logits = model(input_ids=torch.tensor(PROBE)).logits
            mtp_logits = mtp_outputs(model, torch.tensor(PROBE))[0][1]  # from that forward's hidden state
        record = {"rank": acc.process_index, "distributed_type": str(acc.distributed_type),
                  "fsdp2": acc.is_fsdp2, "backend": acc.state.backend, "global_step": trainer.state.global_step,
                  "sharded": len(sharded), "params": len(params),
                  "local_numel": sum(p.to_local().numel() for p in sharded), "numel": sum(p.numel() for p in sharded)}
        with open(f"{out_dir}/{stage}-rank{record['rank']}.json", "w") as f:
            json.dump(record, f)
        if acc.is_main_process:
            torch.save(logits, f"{out_dir}/{stage}-logits.pt")
            torch.save(mtp_logits, f"{out_dir}/{stage}-mtp-logits.pt")
        return trainer
    return wrapper

training.run_sft = recorded("sft", training.run_sft)
training.run_grpo = recorded("grpo", training.run_grpo)
training.train(Recipe.load(recipe_path))
""" % (PROBE,)


def probe_logits(source, adapter: Path | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The main model's logits on PROBE, and its MTP layer's (None without one)."""
    model, _ = load_model(source)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
        if (adapter / OUTSIDE_ADAPTERS).is_file():  # the MTP layer trained in full beside the adapters
            attach_mtp(model, 1)
            restore_trained_outside_adapters(model, adapter)
    ids = torch.tensor(PROBE)
    with torch.no_grad():
        logits = model.eval()(input_ids=ids).logits
        if not mtp_depth(model):
            return logits, None
        return logits, mtp_outputs(model, ids)[0][1]


@pytest.mark.slow
def test_fsdp_checkpoints_are_the_whole_model(tmp_path):
    config = yaml.safe_load((REPO / "configs" / "accelerate" / "fsdp.yaml").read_text())
    config.update(num_processes=2, main_process_ip="127.0.0.1")  # the shipped FSDP2 settings, on 2 CPU processes
    config_file = tmp_path / "fsdp-2proc.yaml"
    config_file.write_text(yaml.safe_dump(config))
    run, records = launch(tmp_path, config_file, FSDP_LAUNCHER, FSDP_RECIPE)

    fresh, _ = probe_logits("tiny")
    for stage, steps in FSDP_STEPS.items():
        rank0, rank1 = (json.loads((records / f"{stage}-rank{r}.json").read_text()) for r in (0, 1))
        assert rank0["distributed_type"].endswith("FSDP") and rank0["fsdp2"] and rank0["backend"] == "gloo"
        assert rank0["global_step"] == steps
        # really sharded: every weight is a DTensor and each rank holds about half of them
        assert rank0["sharded"] == rank0["params"] > 0
        assert rank0["local_numel"] + rank1["local_numel"] == rank0["numel"]
        assert rank0["local_numel"] < 0.6 * rank0["numel"]

        sharded = torch.load(records / f"{stage}-logits.pt")
        sharded_mtp = torch.load(records / f"{stage}-mtp-logits.pt")
        log = json.loads((run / stage / "log_history.json").read_text())
        assert any("mtp_loss" in entry for entry in log), f"{stage}: no MTP loss logged"
        final, step = run / stage / "final", run / stage / f"checkpoint-{steps}"
        # one process, no torch.distributed; SFT's checkpoint-N holds the LoRA adapters, on top of its start
        loaded = {final: (final, None), step: ("tiny", step) if stage == "sft" else (step, None)}
        for checkpoint, (source, adapter) in loaded.items():
            assert (adapter / "adapter_config.json").is_file() if adapter else is_checkpoint(source)
            whole, whole_mtp = probe_logits(source, adapter)
            assert whole.shape == sharded.shape
            diff = (whole - sharded).abs().max().item()
            print(f"{stage} {checkpoint.name}: max |logits - sharded model's| = {diff:.3g}")
            assert diff < 1e-5, f"{checkpoint} is not the model that was trained"
            if not adapter:  # LoRA's checkpoint-N: adapters, and the MTP layer whole beside them
                assert model_config(checkpoint).num_mtp_layers == 1  # from model.layers.{N}.*, the published layout
            mtp_diff = (whole_mtp - sharded_mtp).abs().max().item()
            print(f"{stage} {checkpoint.name}: max |MTP logits - sharded model's| = {mtp_diff:.3g}")
            assert mtp_diff < 1e-5, f"{checkpoint}'s MTP layer is not the one that was trained"
        assert (sharded - fresh).abs().max().item() > 1e-3  # and that model did train
