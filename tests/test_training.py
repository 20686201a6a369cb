"""Training robustness on the real tiny model: SFT and GRPO steps through our wiring, auxiliary-loss-free
load balancing (unit level and the with/without comparison), and the checkpoint-completeness rules that
resume relies on. The SIGKILL/resume run is in test_training_resume.py, multi-process in
test_training_distributed.py."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from reasoner.model import load_model
from reasoner.rl.balance import ExpertLoadBalancer
from reasoner.rl.checkpoints import MARKER, MarkCompleteCheckpoints, latest_complete_checkpoint
from reasoner.rl.recipe import Recipe

TINY_RECIPE = {
    "name": "tiny-test", "model": "tiny", "seed": 0, "threads": 1,
    "task": {"name": "arithmetic", "train_levels": [1, 2], "per_level": 64, "n_eval": 8},
    "sft": {"max_steps": 6, "batch_size": 8, "warmup_steps": 1},
    "grpo": {"max_steps": 3, "levels": [2], "n_prompts": 32, "prompts_per_step": 2, "num_generations": 4,
             "max_completion_length": 24, "overlong_buffer": 8, "save_steps": 1},
    "balance": {"gamma": 0.01},
}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a busy 2-core machine a second OpenMP thread makes these small steps
    several times slower (threads spin waiting for a core), and results stay bit-reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_recipe(directory: Path, **sections) -> Path:
    """A tiny recipe YAML under `directory` (output_dir inside it); `sections` update TINY_RECIPE's."""
    data = {key: dict(value) if isinstance(value, dict) else value for key, value in TINY_RECIPE.items()}
    for key, value in sections.items():
        if isinstance(value, dict):
            data[key].update(value)
        else:
            data[key] = value
    data.setdefault("output_dir", str(directory / "run"))
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _recipe(tmp_path, overrides=()):
    return Recipe.load(write_recipe(tmp_path), list(overrides))


def _sft(recipe: Recipe, output_dir: Path):
    from reasoner.rl.data import sft_dataset
    from reasoner.rl.sft import run_sft
    from reasoner.rl.train import training_problems

    model, tokenizer = load_model("tiny")  # fresh seeded weights (the model YAML's seed), not the shared fixture
    problems = training_problems(recipe, recipe.task.train_levels, recipe.task.per_level * len(recipe.task.train_levels))
    return model, run_sft(recipe, model, tokenizer, sft_dataset(problems, tokenizer), output_dir, use_cpu=True)


def _biases(model) -> list[torch.Tensor]:
    return [b.detach().clone() for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")]


# ---------------------------------------------------------------------------------------------- balancing


def test_balancer_update_moves_bias_by_gamma_sign_of_underload():
    model, _ = load_model("tiny")
    balancer = ExpertLoadBalancer(model, gamma=0.1)
    assert len(balancer.routers) == 3  # 4 layers, the first dense
    loads = [torch.tensor([8, 0, 4, 4, 4, 4, 4, 4], dtype=torch.float64),   # expert 0 over, expert 1 under
             torch.full((8,), 5, dtype=torch.float64),                       # perfectly balanced
             torch.zeros(8, dtype=torch.float64)]                            # no tokens: leave alone
    for load, given in zip(balancer.loads, loads):
        load.copy_(given)
    violation = balancer.update()

    assert violation == pytest.approx([8 / 4 - 1, 0.0, 0.0])
    first, second, third = (r.e_score_correction_bias for r in balancer.routers)
    assert first.tolist() == pytest.approx([-0.1, 0.1, 0, 0, 0, 0, 0, 0])  # sign(mean - load): 0 at the mean
    assert second.tolist() == [0.0] * 8 and third.tolist() == [0.0] * 8
    assert all(load.sum() == 0 for load in balancer.loads)  # counting restarts for the next step

    off = ExpertLoadBalancer(load_model("tiny")[0], gamma=0.0)  # gamma 0: MaxVio is still measured, bias kept
    off.loads[0].copy_(loads[0])
    assert off.update()[0] == pytest.approx(1.0)
    assert all(r.e_score_correction_bias.abs().sum() == 0 for r in off.routers)


def test_balancer_counts_trained_tokens_only():
    """Loads are the experts chosen for real tokens in grad-enabled forwards: top_k per non-pad token,
    nothing from padding, nothing from no-grad passes (rollouts, reference log-probs)."""
    model, _ = load_model("tiny")
    balancer = ExpertLoadBalancer(model, gamma=0.01)
    top_k = model.config.num_experts_per_tok
    ids = torch.randint(5, 40, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    mask[2, :7] = 0
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert all(load.sum() == 0 for load in balancer.loads)

    model(input_ids=ids, attention_mask=mask).logits.sum().backward()
    real_tokens = int(mask.sum())
    assert [int(load.sum()) for load in balancer.loads] == [top_k * real_tokens] * 3

    model(input_ids=ids).logits.sum().backward()  # no mask: every token counts; accumulates (grad accumulation)
    assert [int(load.sum()) for load in balancer.loads] == [top_k * (real_tokens + ids.numel())] * 3


@pytest.mark.slow
def test_balancing_lowers_maxvio(tmp_path):
    """DeepSeek-V3's claim on our model: same seed, data and steps, MaxVio with the bias updates
    (gamma > 0) ends well below MaxVio without them (gamma = 0)."""
    steps, tail = 30, 10
    maxvio = {}
    for gamma in (0.0, 0.01):
        recipe = _recipe(tmp_path, [f"sft.max_steps={steps}", f"balance.gamma={gamma}"])
        model, trainer = _sft(recipe, tmp_path / f"gamma{gamma}")
        history = trainer.balancer.history
        assert [entry["step"] for entry in history] == list(range(1, steps + 1))
        per_step = [sum(entry["maxvio"]) / len(entry["maxvio"]) for entry in history]
        maxvio[gamma] = sum(per_step[-tail:]) / tail
        assert per_step[0] > 0.5  # the untrained router is clearly unbalanced: there is something to fix
        moved = torch.cat(_biases(model)).abs().sum()
        assert (moved > 0) == (gamma > 0)
        logged = [entry for entry in trainer.state.log_history if "maxvio" in entry]
        assert logged and all(f"maxvio/layer{i}" in logged[0] for i in range(3))
    print(f"\nMaxVio, mean over the last {tail} of {steps} SFT steps: "
          f"gamma=0 {maxvio[0.0]:.3f}, gamma=0.01 {maxvio[0.01]:.3f}")
    assert maxvio[0.01] < 0.6 * maxvio[0.0]


# ---------------------------------------------------------------------------------------------- one step each


def test_one_sft_step(tmp_path):
    recipe = _recipe(tmp_path, ["sft.max_steps=1", "sft.warmup_steps=0"])  # warmup would make step 1's lr 0
    before = load_model("tiny")[0].state_dict()
    model, trainer = _sft(recipe, tmp_path / "sft")

    assert trainer.state.global_step == 1
    loss = [e["train_loss"] for e in trainer.state.log_history if "train_loss" in e]
    assert loss and math.isfinite(loss[0]) and loss[0] > 0
    after = model.state_dict()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert any("experts" in n for n in changed) and any("self_attn" in n for n in changed)
    assert len(trainer.balancer.history) == 1 and len(trainer.balancer.history[0]["maxvio"]) == 3
    steps = torch.cat(_biases(model)).abs()
    assert torch.allclose(steps[steps > 0], torch.tensor(0.01))  # one update: each bias moved by gamma or not at all
    checkpoint = tmp_path / "sft" / "checkpoint-1"
    assert (checkpoint / MARKER).is_file() and latest_complete_checkpoint(tmp_path / "sft") == str(checkpoint)


def test_one_grpo_step(tmp_path, monkeypatch):
    """One GRPO step through run_grpo, rollouts from our engine via TRL's rollout_func, recorded to the sink.
    (grpo.warmup_steps, 5 by default, starts the learning rate at 0: step 1 computes a real gradient but moves no weight.)"""
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    from reasoner.rl.data import grpo_dataset
    from reasoner.rl.grpo import run_grpo
    from reasoner.rl.train import training_problems

    recipe = _recipe(tmp_path, ["grpo.max_steps=1"])
    model, tokenizer = load_model("tiny")
    problems = training_problems(recipe, recipe.grpo.levels, recipe.grpo.n_prompts)
    rollouts: list[dict] = []
    trainer = run_grpo(recipe, model, tokenizer, grpo_dataset(problems, tokenizer), tmp_path / "grpo", use_cpu=True,
                       rollout_sink=rollouts.extend)

    assert trainer.state.global_step == 1
    group = recipe.grpo.prompts_per_step * recipe.grpo.num_generations
    assert len(rollouts) == group and all(r["step"] == 0 for r in rollouts)
    assert {r["problem_id"] for r in rollouts} <= {p.id for p in problems}
    assert len({r["problem_id"] for r in rollouts}) == recipe.grpo.prompts_per_step
    assert all(set(r["rewards"]) == {"accuracy_reward", "format_reward", "overlong_reward"} for r in rollouts)
    assert all(math.isfinite(r["advantage"]) for r in rollouts) and any(r["advantage"] != 0 for r in rollouts)
    logged = trainer.state.log_history[0]
    assert math.isfinite(logged["loss"]) and logged["grad_norm"] > 0 and "reward" in logged
    assert logged["maxvio"] > 0 and "maxvio/layer2" in logged
    # One bias update from the training forward (rollout generation runs without grad and is not counted).
    assert len(trainer.balancer.history) == 1
    assert torch.cat(_biases(model)).abs().max() == pytest.approx(0.01)
    assert (tmp_path / "grpo" / "checkpoint-1" / MARKER).is_file()


# ---------------------------------------------------------------------------------------------- checkpoints


def _fake_checkpoint(folder: Path, complete: bool) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    if complete:
        (folder / MARKER).write_text(folder.name.split("-")[1])
    return folder


def test_half_written_checkpoint_is_never_chosen(tmp_path):
    assert latest_complete_checkpoint(tmp_path) is None
    _fake_checkpoint(tmp_path / "checkpoint-4", complete=True)
    _fake_checkpoint(tmp_path / "checkpoint-8", complete=True)
    half = _fake_checkpoint(tmp_path / "checkpoint-12", complete=False)  # newest, but the writer was killed
    _fake_checkpoint(tmp_path / "checkpoint-10", complete=False)
    (tmp_path / "checkpoint-99.tmp").mkdir()  # not a checkpoint name: ignored, kept
    assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-8")  # numeric order, not text
    assert not half.exists() and not (tmp_path / "checkpoint-10").exists()  # Trainer rotation never sees them
    assert (tmp_path / "checkpoint-4").exists() and (tmp_path / "checkpoint-99.tmp").exists()

    only_half = tmp_path / "other"
    _fake_checkpoint(only_half / "checkpoint-2", complete=False)
    assert latest_complete_checkpoint(only_half) is None  # start over rather than load half a checkpoint


def test_marker_written_after_save_by_main_process_only(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    folder = _fake_checkpoint(tmp_path / "checkpoint-3", complete=False)
    state = TrainerState(global_step=3, is_world_process_zero=False)
    MarkCompleteCheckpoints().on_save(args, state, TrainerControl())
    assert not (folder / MARKER).exists()
    state.is_world_process_zero = True
    MarkCompleteCheckpoints().on_save(args, state, TrainerControl())
    assert (folder / MARKER).read_text() == "3"
    state.global_step = 5  # the Trainer saved nothing for this step: no folder is invented
    MarkCompleteCheckpoints().on_save(args, state, TrainerControl())
    assert not (tmp_path / "checkpoint-5").exists()


# ---------------------------------------------------------------------------------------------- LoRA


def test_lora_trains_only_the_adapted_projections_and_saves_them_merged(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    from reasoner.rl.train import train

    recipe = _recipe(tmp_path, ["lora.enabled=true", "lora.r=4", "sft.max_steps=3", "sft.warmup_steps=0",
                                "grpo.max_steps=1", "balance.gamma=0"])
    result = train(recipe, log=lambda text: None)
    before = load_model("tiny")[0].state_dict()
    for stage in ("sft", "grpo"):
        after = load_model(result.checkpoints[stage])[0].state_dict()
        assert set(after) == set(before)  # merged: a plain DeepseekV3 checkpoint, no adapter weights
    after = load_model(result.checkpoints["sft"])[0].state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    targets = tuple(f"{module}.weight" for module in recipe.lora.target_modules)
    assert changed and all(name.endswith(targets) for name in changed)
    assert any(name.endswith("kv_b_proj.weight") for name in changed)


def test_lora_on_a_module_the_model_lacks_names_the_field():
    from reasoner.errors import ReasonerError
    from reasoner.rl.lora import with_lora
    from reasoner.rl.recipe import LoraConfig

    with pytest.raises(ReasonerError, match=r"lora.target_modules: \['q_b_proj'\] are not modules"):
        with_lora(load_model("tiny")[0], LoraConfig(enabled=True, target_modules=["q_b_proj", "o_proj"]))


def test_a_lora_checkpoint_keeps_the_router_biases_the_balancer_moved(tmp_path):
    """A LoRA checkpoint-N holds only adapters; the routers' biases are saved beside it and put back on resume."""
    from reasoner.rl.checkpoints import ROUTER_BIASES, restore_router_biases, save_router_biases
    from reasoner.rl.lora import with_lora
    from reasoner.rl.recipe import LoraConfig

    model = with_lora(load_model("tiny")[0], LoraConfig(enabled=True, r=4))
    biases = [b for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")]
    assert biases
    moved = [torch.randn_like(b) for b in biases]
    for bias, value in zip(biases, moved):
        bias.copy_(value)
    save_router_biases(model, tmp_path)
    assert (tmp_path / ROUTER_BIASES).is_file()
    fresh = with_lora(load_model("tiny")[0], LoraConfig(enabled=True, r=4))
    restore_router_biases(fresh, tmp_path)
    restored = [b for n, b in fresh.named_buffers() if n.endswith("e_score_correction_bias")]
    assert all(torch.equal(a, b) for a, b in zip(restored, moved))


def test_a_lora_checkpoint_keeps_the_mtp_layer_trained_beside_the_adapters(tmp_path):
    """MTP attached after the adapters trains in full; checkpoint-N's adapter file lacks it, so it is saved beside."""
    from reasoner.mtp import attach_mtp, mtp_layers
    from reasoner.rl.checkpoints import (OUTSIDE_ADAPTERS, restore_trained_outside_adapters,
                                         save_trained_outside_adapters)
    from reasoner.rl.lora import with_lora
    from reasoner.rl.recipe import LoraConfig

    def lora_with_mtp():
        model = with_lora(load_model("tiny")[0], LoraConfig(enabled=True, r=4))
        attach_mtp(model, 1)
        return model

    model = lora_with_mtp()
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert trained and all(".layers.4." in n for n in trained)  # the MTP layer only (tiny has 4 main layers)
    with torch.no_grad():
        for p in trained.values():
            p.add_(torch.randn_like(p))
    save_trained_outside_adapters(model, tmp_path)
    assert (tmp_path / OUTSIDE_ADAPTERS).is_file()
    fresh = lora_with_mtp()
    assert not torch.equal(next(mtp_layers(fresh)[0].parameters()), next(mtp_layers(model)[0].parameters()))
    restore_trained_outside_adapters(fresh, tmp_path)
    for (name, a), b in zip(mtp_layers(fresh)[0].named_parameters(), mtp_layers(model)[0].parameters()):
        assert torch.equal(a, b), name
