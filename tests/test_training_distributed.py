"""Scale-out on the engines we already use: the recipe under `accelerate launch` with 2 processes (CPU, gloo),
through the shipped configs/accelerate/cpu-2proc.yaml. A tiny launcher calls reasoner.rl.train.train and, per
rank and stage, dumps what must agree across ranks: a digest of every parameter, the routers'
e_score_correction_bias buffers (updated by our balancer, which DDP does not average), the MaxVio history,
and each rank's own expert loads before the all-reduce (which must differ: the ranks saw different data)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reasoner.model import is_checkpoint

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
import reasoner.rl.grpo as grpo
import reasoner.rl.sft as sft
from reasoner.rl.recipe import Recipe
from reasoner.rl.train import train

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

sft.run_sft = recorded("sft", sft.run_sft)    # train.py imports these at call time
grpo.run_grpo = recorded("grpo", grpo.run_grpo)
train(Recipe.load(recipe_path))
'''


@pytest.mark.slow
def test_two_processes_train_and_stay_in_sync(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    run = tmp_path / "run"
    recipe.write_text(yaml.safe_dump({**RECIPE, "output_dir": str(run)}))
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    records = tmp_path / "records"
    records.mkdir()
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--config_file", str(REPO / "configs" / "accelerate" / "cpu-2proc.yaml"),
           "--main_process_port", "0", str(launcher), str(recipe), str(records)]
    env = {**os.environ, "REASONER_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1",
           "TRL_EXPERIMENTAL_SILENCE": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

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
