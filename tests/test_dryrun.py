"""`reasoner train RECIPE --dry-run`: the plan, its exit codes, the V3 pre-training check, and the memory plan
against measured memory on the CPU (tiny and small models, real training steps)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reasoner.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configs" / "recipes"


def _dry_run(capsys, *argv) -> tuple[int, list[str]]:
    code = main(["train", *argv, "--dry-run"])
    captured = capsys.readouterr()
    return code, (captured.out + captured.err).strip().splitlines()


def test_v2_lite_lora_recipe_fits_eight_h100s(capsys):
    code, lines = _dry_run(capsys, str(RECIPES / "v2-lite-grpo-math.yaml"), "--gpus", "8", "--gpu", "h100")
    assert code == 0, "\n".join(lines)
    assert lines[-1].startswith("plan: per_gpu_memory_gib=") and lines[-1].endswith("fits=yes")
    text = "\n".join(lines)
    for part in ("weights", "gradients", "optimizer", "activations", "rollout (vLLM colocate)", "tokens per step",
                 "FLOPs per step", "step time", "MFU 30%", "FSDP", "LoRA r=32"):
        assert part in text, part
    assert "problem:" not in text


def test_full_parameter_plan_on_one_gpu_does_not_fit_and_names_fixes(capsys):
    code, lines = _dry_run(capsys, str(RECIPES / "v2-lite-grpo-math-full.yaml"), "--gpus", "1", "--gpu", "h100")
    assert code == 1, "\n".join(lines)
    assert lines[-1].endswith("fits=no")
    fixes = [line for line in lines if line.startswith("fix:")]
    assert any("--gpus" in f for f in fixes) and any("lora.enabled=true" in f for f in fixes), fixes
    code, lines = _dry_run(capsys, str(RECIPES / "v2-lite-grpo-math-full.yaml"), "--gpus", "8")
    assert code == 0 and lines[-1].endswith("fits=yes"), "\n".join(lines)


def test_when_no_single_change_fits_a_combination_is_named(capsys):
    code, lines = _dry_run(capsys, str(RECIPES / "v2-lite-grpo-math-full.yaml"), "--gpus", "1", "--set",
                           "grpo.micro_batch_size=64", "--set", "grpo.max_completion_length=16384")
    assert code == 1
    assert [line for line in lines if line.startswith("fix:")] == ["fix: combined: --set grpo.micro_batch_size=1 + --gpus 8"]
    code, lines = _dry_run(capsys, "deepseek-v3-r1")                 # planning only: V3 at 32k does not fit 64 H800s
    assert code == 1 and lines[-1].endswith("fits=no")
    assert any(line.startswith("fix: combined:") and "max_completion_length" in line for line in lines), lines[-3:]


def test_what_a_real_run_would_reject_exits_2(capsys):
    # DeepSpeed refuses a gradient_accumulation_steps that differs from the Trainer's (here 64 / 4 = 16)
    code, lines = _dry_run(capsys, str(RECIPES / "v2-lite-grpo-math-full.yaml"), "--accelerate-config", "zero3")
    assert code == 2 and any("gradient_accumulation_steps=1" in line and "set it to 16" in line for line in lines)
    # our rollout engine reads whole weights, which FSDP shards
    code, lines = _dry_run(capsys, "demo", "--accelerate-config", "fsdp", "--gpus", "2")
    assert code == 2 and any("rollout engine" in line for line in lines)
    code, lines = _dry_run(capsys, "demo", "--set", "lora.enabled=true", "--set", "lora.target_modules=[nope_proj]")
    assert code == 2 and "nope_proj" in "\n".join(lines)


def test_plan_arithmetic_by_hand():
    """DDP of the tiny shape, nothing else: weights + grads + AdamW = 16 bytes per fp32 parameter."""
    from reasoner.model import model_config
    from reasoner.rl.dryrun import GiB, Setup, make_plan, meta_model, shape_of

    config = model_config("deepseek-v2-lite")
    shape = shape_of(config, meta_model(config), 2)
    assert abs(shape.total - 15.7e9) < 0.1e9 and abs(shape.active - 2.45e9) < 0.05e9
    setup = Setup(sharding="ddp", gpus=8, gpu="h100", mfu=0.5, trainable=shape.total, lora=False, reference=False,
                  sequences=16, micro=16, prompt=512, completion=1536, checkpointing=False, rollout="engine")
    plan = make_plan(shape, setup)
    memory = {name: size for name, size, _ in plan.memory}
    assert memory["weights"] == memory["gradients"] == shape.total * 2
    assert memory["optimizer"] == shape.total * 4
    assert memory["rollout (our engine)"] == 27 * (512 + 64) * 2 * 16 * 2048   # latent cache, bf16
    sharded = make_plan(shape, Setup(**{**setup.__dict__, "sharding": "fsdp"}))
    assert {n: s for n, s, _ in sharded.memory}["optimizer"] == shape.total * 4 / 8
    assert plan.train_tokens == 8 * 16 * 2048 and plan.generated_tokens == 8 * 16 * 1536
    assert plan.flops["train"] == plan.train_tokens * (6 * shape.active + 3 * shape.attention_flops_forward(2048))
    assert plan.step_seconds == pytest.approx(sum(plan.flops.values()) / (8 * 989e12 * 0.5))
    assert plan.per_gpu / GiB > 79.6 and not plan.fits          # full-parameter DDP of V2-Lite: no


def test_v3_pretraining_check_gives_the_mfu_the_report_implies(capsys):
    from reasoner.rl.dryrun import v3_pretraining_check

    r = v3_pretraining_check()
    assert abs(r["active"] - 36.6e9) < 0.1e9
    # 14.8T tokens x (6 x 36.6B + attention) over 2.664M H800-hours at 989 TFLOP/s
    assert r["flops"] == pytest.approx(14.8e12 * (r["flops_per_token_dense"] + r["flops_per_token_attention"]))
    assert 0.36 < r["mfu_gpu_hours_pretraining"] < 0.42 and r["mfu_gpu_hours_total"] < r["mfu_gpu_hours_pretraining"]
    assert main(["train", "--v3-pretraining-check"]) == 0
    out = capsys.readouterr().out
    assert "2.664M H800 GPU-hours" in out and out.strip().splitlines()[-1].startswith("v3-pretraining: mfu=0.3")


@pytest.mark.parametrize("name,dtype", [("tiny", "float32"), ("tiny", "bfloat16"), ("small", "bfloat16")])
def test_activation_formula_matches_the_tensors_autograd_saves(name, dtype):
    """Per token and layer, tensor by tensor: the plan's activations row against saved_tensors_hooks."""
    import torch
    from trl.trainer.utils import add_fused_lm_head

    sys.path.insert(0, str(REPO / "benchmarks"))
    from plan_memory import saved_activation_bytes

    from reasoner.model import load_model
    from reasoner.rl.dryrun import activation_bytes_per_token, final_bytes, shape_of

    model, _ = load_model(name, dtype=getattr(torch, dtype))
    add_fused_lm_head(model)
    sequences, prompt, completion = 2, 16, 48
    ids = torch.randint(3, model.config.vocab_size, (sequences, prompt + completion))
    labels = ids.clone()
    labels[:, :prompt] = -100
    saved = saved_activation_bytes(model, ids, torch.ones_like(ids), labels)
    s = shape_of(model.config, model, 4 if dtype == "float32" else 2)
    tokens, length = sequences * (prompt + completion), prompt + completion
    planned = tokens * (s.dense_layers * activation_bytes_per_token(s, False, length)
                        + (s.layers - s.dense_layers) * activation_bytes_per_token(s, True, length))
    planned += final_bytes(s, tokens, sequences * completion)
    assert planned == pytest.approx(saved, rel=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny", "small"])
def test_memory_plan_within_20_percent_of_measured_peak_on_cpu(model):
    """Real training steps (TRL's fused head, backward, fused AdamW) in a fresh process: peak RSS vs the plan."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "plan_memory.py"), "--one", model, "--steps", "2"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert abs(result["rss_vs_plan"]) < 0.20, result
    assert abs(result["saved_vs_plan"]) < 0.02, result


def test_prompt_length_is_measured_with_the_checkpoints_tokenizer(tiny_checkpoint, tmp_path, capsys):
    """With a checkpoint and train data on this machine, the plan uses the longest real prompt when it is longer."""
    question = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. " * 3
    data = tmp_path / "gsm8k.jsonl"
    data.write_text(json.dumps({"question": question, "answer": "48/2=24\n#### 72"}) + "\n")
    code, lines = _dry_run(capsys, "demo", "--set", f"model={tiny_checkpoint}", "--set", f"task.train_data.gsm8k={data}",
                           "--set", "parallel.prompt_length=16")
    text = "\n".join(lines)
    assert code == 0 and "task.train_data.gsm8k: 1 problems" in text, text
    longest = int(text.split("the longest of 1 sampled is ")[1].split(" tokens")[0])
    assert longest > len(question) and "the plan uses the longest" in text   # built-in tokenizer: one per character
    header = next(line for line in lines if line.startswith("per GPU"))
    assert f", {longest} + " in header, header
