"""benchmarks/demo_diff.py: two demo runs' figures side by side, with a CI of each difference."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import demo_diff  # noqa: E402


def test_newcombe_interval_matches_the_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, worked example 56/70 vs 48/80, method 10: [0.0524, 0.3339]
    low, high = demo_diff.newcombe(48 / 80, 80, 56 / 70, 70)
    assert (low, high) == pytest.approx((0.0524, 0.3339), abs=1e-4)


def summary(pipeline: float, direct: float) -> dict:
    figures = {key: direct for key in demo_diff.TASK_FIGURES} | {"pipeline_accuracy": pipeline}
    task = {"n": 200, "mean_samples": 10, "ci95": {key: [0.0, 1.0] for key in figures}, **figures}
    return {"pipeline_tasks": {"word": task}, "eval_level": 1, "n_eval": 208, "maxvio_balanced": 0.2,
            "maxvio_unbalanced": 1.2, "eval_ci95": {name: [0.0, 0.1] for name in demo_diff.CHECKPOINT_FIGURES.values()},
            **{key: 0.01 for key in demo_diff.CHECKPOINT_FIGURES}}


def test_marks_only_differences_whose_interval_excludes_zero(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(summary(pipeline=0.50, direct=0.05)))
    b.write_text(json.dumps(summary(pipeline=0.90, direct=0.06)))
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "demo_diff.py"), str(a), str(b)],
                         capture_output=True, text=True, check=True).stdout
    marked = [line.split(" |")[0] for line in out.splitlines() if "outside noise" in line]
    assert marked == ["| word pipeline_accuracy (n=200)"]
