"""Resume after SIGKILL, end to end: `reasoner train RECIPE` as a real subprocess, killed (-9) mid-SFT once a
checkpoint is complete, then mid-GRPO, and rerun with the same command each time. The Trainer's own log line
("Resuming training from checkpoint with epoch E and global step K", info level) says where each rerun
started; a half-written checkpoint planted beside the real ones must be ignored and removed."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from reasoner.model import is_checkpoint, load_model
from reasoner.rl.checkpoints import MARKER

SFT_STEPS, GRPO_STEPS = 16, 5  # SFT saves every 4 steps, GRPO every step

RECIPE = {
    "name": "resume-test", "model": "tiny", "seed": 0, "threads": 1,
    "task": {"name": "arithmetic", "train_levels": [1, 2], "per_level": 64, "n_eval": 8},
    "sft": {"max_steps": SFT_STEPS, "batch_size": 8, "warmup_steps": 1},
    "grpo": {"max_steps": GRPO_STEPS, "levels": [2], "n_prompts": 32, "prompts_per_step": 2, "num_generations": 4,
             "max_completion_length": 24, "overlong_buffer": 8, "save_steps": 1},
    "balance": {"gamma": 0.01},
}
RESUMED = re.compile(r"Resuming training from checkpoint with epoch \d+ and global step (\d+)")


def _command(recipe: Path) -> list[str]:
    script = Path(sys.executable).with_name("reasoner")
    return [str(script) if script.exists() else sys.executable, *([] if script.exists() else ["-m", "reasoner"]),
            "train", str(recipe), "--no-eval"]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "REASONER_HOME": str(tmp_path / "home"), "TRANSFORMERS_VERBOSITY": "info",
            "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "PYTHONUNBUFFERED": "1"}


def _complete_steps(stage_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in stage_dir.glob("checkpoint-*") if (p / MARKER).is_file())


def _run_until_checkpoint(cmd, env, cwd: Path, stage_dir: Path, log: Path, timeout: float = 240) -> int:
    """Start the command, SIGKILL its whole process group as soon as `stage_dir` holds a complete checkpoint;
    return the newest complete step at that moment."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not _complete_steps(stage_dir):
            assert proc.poll() is None, f"training ended (rc={proc.returncode}) before a checkpoint:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return _complete_steps(stage_dir)[-1]


def _plant_half_written(stage_dir: Path, complete_step: int) -> Path:
    """What a kill during Trainer._save_checkpoint leaves: a newer folder with some files, truncated, no marker."""
    good = stage_dir / f"checkpoint-{complete_step}"
    half = stage_dir / f"checkpoint-{complete_step + 1}"
    if half.exists():  # the kill already left a real one there
        assert not (half / MARKER).exists()
        return half
    half.mkdir()
    shutil.copy(good / "config.json", half / "config.json")
    weights = (good / "model.safetensors").read_bytes()
    (half / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    return half


@pytest.mark.slow
def test_sigkill_then_same_command_resumes(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    run = tmp_path / "run"
    recipe.write_text(yaml.safe_dump({**RECIPE, "output_dir": str(run)}))
    cmd, env = _command(recipe), _env(tmp_path)
    sft, grpo = run / "sft", run / "grpo"

    # 1. Killed during SFT, right after its first complete checkpoint.
    k_sft = _run_until_checkpoint(cmd, env, tmp_path, sft, tmp_path / "run1.log")
    assert k_sft < SFT_STEPS and not (sft / "final").exists() and not grpo.exists()
    half = _plant_half_written(sft, k_sft)

    # 2. Same command: resumes SFT from checkpoint-k_sft (not the half-written one), finishes SFT; killed in GRPO.
    k_grpo = _run_until_checkpoint(cmd, env, tmp_path, grpo, tmp_path / "run2.log")
    log2 = (tmp_path / "run2.log").read_text()
    assert [int(s) for s in RESUMED.findall(log2)] == [k_sft], log2[-3000:]
    assert f"Loading model from {sft / f'checkpoint-{k_sft}'}" in log2
    assert not half.exists()
    assert is_checkpoint(sft / "final") and k_grpo < GRPO_STEPS and not (grpo / "final").exists()
    sft_state = json.loads((sft / f"checkpoint-{SFT_STEPS}" / "trainer_state.json").read_text())
    assert sft_state["global_step"] == SFT_STEPS
    # The resumed trainer's log history continues the killed run's: one entry per logging step, no repeats.
    assert [e["step"] for e in sft_state["log_history"] if "loss" in e] == list(range(10, SFT_STEPS + 1, 10))

    # 3. Same command again: SFT is skipped, GRPO resumes from its newest complete checkpoint and finishes.
    with open(tmp_path / "run3.log", "w") as out:
        done = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=300)
    log3 = (tmp_path / "run3.log").read_text()
    assert done.returncode == 0, log3[-3000:]
    assert "already finished" in log3
    assert [int(s) for s in RESUMED.findall(log3)] == [k_grpo], log3[-3000:]
    grpo_state = json.loads((grpo / f"checkpoint-{GRPO_STEPS}" / "trainer_state.json").read_text())
    assert grpo_state["global_step"] == GRPO_STEPS
    assert [e["step"] for e in grpo_state["log_history"] if "loss" in e] == list(range(1, GRPO_STEPS + 1))
    assert json.loads((grpo / "final" / "reasoner.json").read_text())["started_from"] == str(sft / "final")
    model, _ = load_model(grpo / "final")
    assert model.config.num_hidden_layers == 4
    assert not list(run.glob("**/.final.*"))  # no staging leftovers from the atomic final saves
    assert (tmp_path / "home" / "traces.db").is_file()  # GRPO rollouts were recorded, outside the repo
