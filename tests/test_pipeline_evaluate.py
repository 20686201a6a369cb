"""The demo comparison: metric bookkeeping with a simulated small model, and the benchmark script end to end."""
import importlib.util
import json
import random
import threading
from pathlib import Path

from reasoner.api import Reasoner
from reasoner.model import load_model, save_checkpoint
from reasoner.pipeline.backends import ScriptedBackend
from reasoner.pipeline.checks import recompute
from reasoner.pipeline.evaluate import compare, heldout_arithmetic, write_summary
from reasoner.pipeline.plans import arithmetic_split
from reasoner.pipeline.prompts import render
from reasoner.tasks.base import Problem

ROOT = Path(__file__).resolve().parents[1]
PLAN_CUE = render("plan", problem="")  # the planner prompt is the problem, then this


class SmallModel:
    """Plans well and does one operation right 70% of the time, but long expressions only 10%."""

    def __init__(self, seed=0):
        self.rng, self.lock = random.Random(seed), threading.Lock()

    def __call__(self, messages, n):
        content = messages[-1]["content"]
        if content.endswith(PLAN_CUE):
            return [json.dumps(arithmetic_split(content.removesuffix(PLAN_CUE)))] * n
        question = content.split("\n")[0]
        value = int(recompute(question))
        p_right = 0.7 if sum(question.count(op) for op in "+*") + question[1:].count("-") <= 1 else 0.1
        with self.lock:
            return [f"<answer>{value if self.rng.random() < p_right else value + self.rng.choice([-1, 1, 10])}</answer>"
                    for _ in range(n)]


def test_compare_measures_both_arms_on_the_same_problems(tmp_path):
    problems = heldout_arithmetic(12, level=6)
    assert len(problems) == 12 and all(p.level == 6 for p in problems)
    reasoner = Reasoner(ScriptedBackend(SmallModel()), checkpoints=tmp_path / "p.db", traces=tmp_path / "t.db")
    code = [Problem(id="c1", question="add", answer="", task="code", tests=["assert add(2, 3) == 5"],
                    entry_point="add")]
    results = compare(reasoner, problems, k=5, retries=3, code_problems=[])
    assert results["n_pipeline"] == 12 and results["k"] == 5 and results["pipeline_level"] == 6
    assert results["pipeline_accuracy"] >= results["direct_accuracy"] + 0.2
    assert 0 <= results["pipeline_plans_only_accuracy"] <= 1
    # Where the right answer is the most common one, voting beats a single sample.
    short = compare(reasoner, heldout_arithmetic(12, level=1), k=5, ablation=False)
    assert short["maj_at_k"] > short["pass_at_1"] > 0.5
    coder = Reasoner(ScriptedBackend(lambda m, n: ["```python\ndef add(a, b):\n    return a + b\n```"] * n),
                     checkpoints=tmp_path / "p.db", traces=tmp_path / "t.db")
    code_results = compare(coder, [], code_problems=code, ablation=False)
    assert code_results["code_verified"] == 1 and code_results["code_verified_pass_rate"] == 1.0
    assert code_results["code_direct_accuracy"] == 1.0


def test_summary_is_merged_not_overwritten(tmp_path):
    path = tmp_path / "demo" / "summary.json"
    write_summary({"train_reward": 0.5}, path)
    write_summary({"direct_accuracy": 0.1, "pipeline_accuracy": 0.4, "n_pipeline": 200}, path)
    assert json.loads(path.read_text()) == {"train_reward": 0.5, "direct_accuracy": 0.1, "pipeline_accuracy": 0.4,
                                            "n_pipeline": 200}


def test_benchmark_script_runs_on_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONER_HOME", str(tmp_path))
    model, tokenizer = load_model("tiny")
    checkpoint = save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    spec = importlib.util.spec_from_file_location("bench_pipeline", ROOT / "benchmarks" / "pipeline.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "summary.json"
    assert bench.main(["--model", str(checkpoint), "--n", "2", "--k", "2", "--max-tokens", "6", "--no-ablation",
                       "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["n_pipeline"] == 2 and {"direct_accuracy", "pipeline_accuracy", "maj_at_k", "pass_at_1"} <= set(summary)
