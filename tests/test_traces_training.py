"""Training runs you can watch and find again (issue 16): a run id on every `reasoner train`, rollouts tagged with it
in the run's own trace store, GRPO groups recorded, TensorBoard event files written offline, plots of loss and
token accuracy (SFT) and reward parts (GRPO), a model card naming base model, recipe and dataset, and plain
progress lines when output is not a terminal."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import yaml

from reasoner.rl.recipe import Recipe

RECIPE = {
    "name": "tb-test", "model": "tiny", "seed": 0, "threads": 1,
    "task": {"name": "arithmetic", "train_levels": [1, 2], "per_level": 32, "n_eval": 8},
    "sft": {"max_steps": 3, "batch_size": 8, "warmup_steps": 1, "report_to": "tensorboard", "logging_steps": 1},
    "grpo": {"max_steps": 2, "levels": [2], "n_prompts": 16, "prompts_per_step": 2, "num_generations": 4,
             "max_completion_length": 16, "overlong_buffer": 8, "save_steps": 5, "report_to": "tensorboard"},
    "balance": {"gamma": 0.01},
}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.delenv("REASONER_HOME", raising=False)
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    yield
    torch.set_num_threads(threads)


def _events(folder: Path) -> list[Path]:
    return sorted(folder.rglob("events.out.tfevents.*"))


def _scalar_tags(event_file: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(event_file))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


@pytest.mark.slow
def test_three_step_training_reports_to_tensorboard_and_tags_its_rollouts(tmp_path, monkeypatch):
    from reasoner.rl.train import train
    from reasoner.traces import TraceStore

    monkeypatch.chdir(tmp_path)  # nothing may land in a cwd-relative runs/ folder
    output_dir = tmp_path / "run"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "output_dir": str(output_dir)}))
    recipe = Recipe.load(path)
    messages = []
    result = train(recipe, log=messages.append)

    # offline TensorBoard: one event file per stage, under the stage's logs/, with the SFT loss in it
    sft_events, grpo_events = _events(output_dir / "sft" / "logs"), _events(output_dir / "grpo" / "logs")
    assert sft_events and grpo_events
    assert not (tmp_path / "runs").exists()
    assert {"train/loss", "train/mean_token_accuracy"} <= _scalar_tags(sft_events[-1])
    assert "train/reward" in _scalar_tags(grpo_events[-1])

    # the run id, and the rollouts in the run's own store, tagged and grouped
    run = json.loads((output_dir / "run.json").read_text())
    assert run["run"].startswith("tb-test-") and any(run["run"] in m for m in messages)
    with TraceStore.open(output_dir / "traces.db", create=False) as store:
        rollouts = store.query(run=run["run"], sort="created", descending=False)
        assert len(rollouts) == 2 * 2 * 4  # steps x prompts x generations
        meta = rollouts[0].metadata
        assert (meta["recipe"], meta["stage"], meta["output_dir"]) == ("tb-test", "grpo", str(output_dir))
        groups = {}
        for trace in rollouts:
            groups.setdefault(trace.metadata["group"], []).append(trace)
        assert len(groups) == 4 and all(len(members) == 4 for members in groups.values())
        for members in groups.values():
            assert len({t.prompt for t in members}) == 1  # a group is one prompt's k rollouts
            rewards = [next(s.reward for _, s in t.walk() if s.reward) for t in members]
            assert all(r.advantage is not None and r.components for r in rewards)
        assert all(t.spans[0].start is not None and t.spans[0].end >= t.spans[0].start for t in rollouts)

    # plots and model card
    assert result.plots["sft"].is_file() and result.plots["grpo"].is_file()
    card = (output_dir / "sft" / "README.md").read_text()
    assert "[None]" not in card and "`tiny`" in card and "`tb-test`" in card and "arithmetic" in card
    assert run["run"] in (output_dir / "grpo" / "README.md").read_text()


def test_plots_show_sft_loss_and_token_accuracy_and_grpo_reward_parts(tmp_path):
    from reasoner.rl import plots

    drawn = []
    sft_log = [{"step": s, "loss": 2.0 / s, "mean_token_accuracy": 0.1 * s, "maxvio": 0.5} for s in range(1, 6)]
    grpo_log = [{"step": s, "loss": 0.01, "reward": 0.5 + 0.1 * s, "rewards/accuracy_reward/mean": 0.1 * s,
                 "rewards/format_reward/mean": 1.0, "completions/mean_length": 12 + s, "kl": 0.001 * s, "maxvio": 0.3}
                for s in range(1, 6)]
    import matplotlib.axes

    original = matplotlib.axes.Axes.set_title

    def spy(self, title, *args, **kwargs):
        drawn.append(title)
        return original(self, title, *args, **kwargs)

    matplotlib.axes.Axes.set_title = spy
    try:
        assert plots.plot_training(sft_log, tmp_path / "sft.png", "sft")
        assert drawn == ["loss", "token accuracy", "MaxVio"]
        drawn.clear()
        assert plots.plot_training(grpo_log, tmp_path / "grpo.png", "grpo")
        assert drawn == ["reward", "accuracy", "completion length", "KL", "MaxVio"]
    finally:
        matplotlib.axes.Axes.set_title = original


def test_progress_is_plain_lines_when_not_a_terminal():
    from types import SimpleNamespace

    from reasoner.rl.progress import CompactProgress

    out = io.StringIO()
    progress = CompactProgress("grpo", every_steps=10, every_s=1e9, out=out)
    state = SimpleNamespace(is_world_process_zero=True, max_steps=35, global_step=0)
    progress.on_train_begin(None, state, None)
    for step in range(1, 36):
        state.global_step = step
        progress.on_log(None, state, None, logs={"loss": 0.5, "reward": 1.25, "completions/mean_length": 20.0})
        progress.on_step_end(None, state, None)
        if step == 20:
            progress.on_save(None, state, None)
    progress.on_train_end(None, state, None)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "[grpo] training 35 steps"
    steps = [line for line in lines if " step " in line]
    assert [line.split()[2] for line in steps] == ["10/35", "20/35", "30/35", "35/35"]
    assert "reward 1.25" in steps[0] and "eta" in steps[0]
    assert "[grpo] saved checkpoint-20" in lines and lines[-1].startswith("[grpo] trained 35 steps in")
