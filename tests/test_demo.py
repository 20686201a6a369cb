"""`reasoner demo` end to end at plumbing size: every figure issue 12 asks for lands in summary.json, from
real training, real evaluation and the real pipeline; a rerun resumes instead of redoing the work."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

FIELDS = {"n", "direct_accuracy", "sampled_pass_at_1", "maj_accuracy", "mean_samples", "pipeline_accuracy",
          "blind_direct_accuracy", "blind_pipeline_accuracy"}
SMALL = ["sft.max_steps=6", "grpo.max_steps=2", "task.n_eval=10", "task.per_level=50", "sft.code_per_level=50",
         "sft.word_per_level=50", "grpo.n_prompts=32", "threads=1"]


def run_demo(output_dir) -> subprocess.CompletedProcess:
    overrides = [arg for item in [f"output_dir={output_dir}", *SMALL] for arg in ("--set", item)]
    return subprocess.run([sys.executable, "-m", "reasoner", "demo", "--quick", *overrides],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_demo_writes_every_honest_figure_and_resumes(tmp_path):
    done = run_demo(tmp_path / "demo")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert set(summary["pipeline_tasks"]) == {"word", "countdown", "code"}
    for task, row in summary["pipeline_tasks"].items():
        assert FIELDS <= set(row), (task, set(row))
        assert row["n"] == 6 and row["maj_samples"] == max(1, round(row["mean_samples"]))
        assert row["mean_samples"] >= row["settings"]["samples"]  # the pipeline drew at least one round
    assert summary["eval_task"] == "countdown" and summary["n_eval"] == 10
    assert summary["sft_equal_compute_arm"] in summary["sft_equal_compute_validation"]
    assert summary["maxvio_balanced"] > 0 and summary["maxvio_unbalanced"] > 0
    assert summary["api_example"]["status"] in ("verified", "rejected", "failed")
    for stage in ("sft", "grpo", "sft-equal-lr0.0001", "sft-equal-lr0.001", "balance-gamma0.01", "balance-gamma0"):
        assert (tmp_path / "demo" / stage / "final" / "config.json").exists(), stage
    cached = {task: (tmp_path / "demo" / "pipeline" / f"{task}.json").stat().st_mtime_ns
              for task in summary["pipeline_tasks"]}
    again = run_demo(tmp_path / "demo")  # everything finished: nothing is trained or compared again
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished" in again.stdout + again.stderr
    assert cached == {task: (tmp_path / "demo" / "pipeline" / f"{task}.json").stat().st_mtime_ns for task in cached}
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["pipeline_tasks"] == summary["pipeline_tasks"]
