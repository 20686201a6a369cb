"""Fail-fast recipes: every bad value is one error naming its key, at load, before any training."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from reasoner.errors import ConfigError
from reasoner.rl.recipe import Recipe

BAD = [
    ("grpo.rewards=[accuracy, bogus]", "grpo.rewards.1", "unknown reward 'bogus'"),
    ("grpo.levels=[99]", "grpo.levels", "has levels"),
    ("grpo.reward_weights=[1.0, 0.5]", "grpo.reward_weights", "2 weights for 3 rewards"),
    ("threads=-4", "threads", ">= 1"),
    ("threads=0", "threads", ">= 1"),
    ("threads=two", "threads", "expected integer or null"),
    ("seed=[1", "seed", "not valid YAML"),
    ("seed=1.5", "seed", "expected integer"),
    ("task.eval_level=99", "task.eval_level", "has levels"),
    ("task.train_levels=[0]", "task.train_levels", "has levels"),
    ("sft.code_levels=[9]", "sft.code_levels", "task 'code' has levels 1, 2, 3"),
    ("sft.plan_levels=[42]", "sft.plan_levels", "has levels"),
    ("grpo.overlong_buffer=100", "grpo.overlong_buffer", "longer than grpo.max_completion_length"),
    ("grpo.rewards=[]", "grpo.rewards", "at least one reward"),
    ("model=no-such-model", "model", "no packaged model named"),
    ("grpo.num_generations=1", "grpo.num_generations", ">= 2"),
    ("eval.samples=0", "eval.samples", ">= 1"),
    ("lora.r=2.5", "lora.r", "expected integer"),
]


@pytest.mark.parametrize("override, key, message", BAD)
def test_bad_values_fail_at_load_fast_naming_the_key(override, key, message):
    started = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        Recipe.load("demo", [override])
    assert time.perf_counter() - started < 2.0
    text = str(err.value)
    assert f"{key}:" in text and message in text, text
    assert "\n" not in text


def test_good_recipes_still_load():
    recipe = Recipe.load("demo", ["threads=null", "grpo.reward_weights=null", "grpo.rewards=[accuracy]",
                                  "task.eval_level=null"])
    assert recipe.threads is None and recipe.grpo.rewards == ["accuracy"]
    # a disabled stage's default levels need not fit the task
    assert Recipe.load("demo", ["task.name=gsm8k", "task.eval_level=0", "sft.enabled=false", "sft.code_levels=[]",
                                "grpo.levels=[0]"]).task.name == "gsm8k"


@pytest.mark.parametrize("override, key", [("seed=[1", "seed"), ("threads=-4", "threads"),
                                           ("grpo.rewards=[accuracy, bogus]", "grpo.rewards")])
def test_cli_prints_one_line_naming_the_key(override, key):
    result = subprocess.run([sys.executable, "-m", "reasoner", "train", "demo", "--set", override],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("reasoner train: error:") and key in result.stderr
