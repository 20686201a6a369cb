"""The real-scale recipes (V2-Lite LoRA and full-parameter, V3 with R1's GRPO hyperparameters) and the GSM8K /
MATH train-split loaders. Nothing here downloads: the hub path is exercised with a stand-in `load_dataset`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from reasoner.errors import ReasonerError
from reasoner.rl.recipe import Recipe, TrainData

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "recipes"
REAL = ("v2-lite-grpo-math", "v2-lite-grpo-math-full", "deepseek-v3-r1")


@pytest.mark.parametrize("name", REAL)
def test_real_recipes_validate_against_the_recipe_schema(name):
    recipe = Recipe.load(RECIPES / f"{name}.yaml")         # schema + the cross-field checks Recipe.load runs
    assert Recipe.load(name).to_dict() == recipe.to_dict()  # and they ship as packaged names
    assert recipe.task.prompt_style == "r1" and recipe.grpo.use_vllm and not recipe.sft.enabled
    assert recipe.task.train_data.gsm8k and recipe.task.train_data.math
    assert recipe.parallel.accelerate_config in ("fsdp", "zero3")


def test_v2_lite_recipes_are_lora_and_full_parameter():
    lora, full = Recipe.load("v2-lite-grpo-math"), Recipe.load("v2-lite-grpo-math-full")
    assert lora.model == full.model == "deepseek-v2-lite"
    assert lora.lora.enabled and not full.lora.enabled
    assert lora.grpo.vllm_mode == "colocate" and full.grpo.vllm_mode == "server" and full.grpo.vllm_server_base_url


def test_v3_recipe_has_the_r1_reports_grpo_hyperparameters():
    r = Recipe.load("deepseek-v3-r1")
    g = r.grpo
    assert r.model == "deepseek-v3"
    assert (g.learning_rate, g.beta, g.num_generations, g.max_completion_length) == (3e-6, 0.001, 16, 32768)
    assert r.parallel.gpus * g.prompts_per_step * g.num_generations == 1024     # sequences per step


def test_recipe_fields_reach_trls_grpo_config(tmp_path):
    from reasoner.rl.grpo import grpo_config

    r = Recipe.load("v2-lite-grpo-math")
    config = grpo_config(r, tmp_path, use_cpu=True)
    assert config.per_device_train_batch_size == r.grpo.micro_batch_size == 8
    assert config.gradient_accumulation_steps == config.steps_per_generation == 64 // 8
    assert config.activation_checkpointing and config.use_vllm and config.vllm_mode == "colocate"
    assert config.vllm_gpu_memory_utilization == 0.5
    demo = Recipe.load("demo")            # no micro_batch_size: one micro-batch per step, as before
    config = grpo_config(demo, tmp_path, use_cpu=True)
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == \
        (demo.grpo.prompts_per_step * demo.grpo.num_generations, 1)
    assert not config.activation_checkpointing
    with pytest.raises(ReasonerError, match="micro_batch_size"):
        grpo_config(Recipe.load("demo", ["grpo.micro_batch_size=7"]), tmp_path, use_cpu=True)


# ---------------------------------------------------------------- train splits

def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


GSM8K_ROWS = [{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7"},
              {"question": "A 1,000 dollar bill split in 2?", "answer": "1000/2=500\n#### 1,000"}]
MATH_ROWS = [{"problem": "What is $1+1$?", "solution": "We add: $1+1=\\boxed{2}$.", "level": "Level 1", "type": "Algebra"},
             {"problem": "Simplify $\\frac{2}{4}$.", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "level": "Level 2"}]


def test_gsm8k_and_math_train_splits_load_from_a_path(tmp_path):
    from reasoner.rl.traindata import train_problems

    data = TrainData(gsm8k=str(_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)),
                     math=str(_jsonl(tmp_path / "math.jsonl", MATH_ROWS)))
    problems = train_problems(data)
    assert [(p.task, p.answer) for p in problems] == [("gsm8k", "7"), ("gsm8k", "1000"), ("math500", "2"),
                                                     ("math500", "\\frac{1}{2}")]
    assert problems[2].level == 1 and "<<" not in problems[0].question
    assert len(train_problems(data, n=2, seed=0)) == 2 and train_problems(data, 2, 0) == train_problems(data, 2, 0)


def test_math_train_loads_from_hendrycks_folder_layout(tmp_path):
    from reasoner.rl.traindata import load_source

    folder = tmp_path / "MATH" / "train" / "algebra"
    folder.mkdir(parents=True)
    for i, row in enumerate(MATH_ROWS):
        (folder / f"{i}.json").write_text(json.dumps(row))
    assert sorted(p.answer for p in load_source("math", str(tmp_path / "MATH" / "train"))) == ["2", "\\frac{1}{2}"]


def test_train_split_mistakes_are_one_line_errors(tmp_path):
    from reasoner.rl.traindata import load_source

    with pytest.raises(ReasonerError, match="not found"):
        load_source("gsm8k", str(tmp_path / "missing.jsonl"))
    with pytest.raises(ReasonerError, match="has no '#### N'"):
        load_source("gsm8k", str(_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "no marker"}])))
    (tmp_path / "bad.jsonl").write_text('{"problem": "x"\n')
    with pytest.raises(ReasonerError, match="bad.jsonl:1: not JSON"):
        load_source("math", str(tmp_path / "bad.jsonl"))


def test_hub_is_used_only_when_asked_and_online(monkeypatch, tmp_path):
    import datasets

    from reasoner.rl.traindata import load_source

    calls = []

    def fake_load_dataset(repo, config=None, split=None):
        calls.append((repo, config, split))
        return GSM8K_ROWS if "gsm8k" in repo else MATH_ROWS

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    load_source("gsm8k", str(_jsonl(tmp_path / "g.jsonl", GSM8K_ROWS)))
    assert calls == []                                           # a path never touches the hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ReasonerError, match="HF_HUB_OFFLINE"):
        load_source("gsm8k", "hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    assert [p.answer for p in load_source("math", "hub")] == ["2", "\\frac{1}{2}"]
    assert calls == [("DigitalLearningGmbH/MATH-lighteval", None, "train")]


def test_training_draws_grpo_prompts_from_the_train_splits(tmp_path):
    from reasoner.rl.train import training_problems

    path = _jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)
    recipe = Recipe.load("v2-lite-grpo-math", [f"task.train_data.gsm8k={path}", "task.train_data.math=null"])
    problems = training_problems(recipe, recipe.grpo.levels, recipe.grpo.n_prompts)
    assert [p.answer for p in problems] == ["7", "1000"]
