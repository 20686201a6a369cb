"""A real GRPOTrainer step whose rollouts come from the engine through TRL's rollout_func."""
from __future__ import annotations

import os

import torch

from reasoner.model import load_model
from reasoner.rollout import RolloutEngine
from reasoner.rollout.hooks import make_rollout_func


def test_grpo_step_with_rollout_func(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run(tmp_path, monkeypatch, GRPOConfig, GRPOTrainer, Dataset)
    finally:
        torch.set_num_threads(threads)


def _run(tmp_path, monkeypatch, GRPOConfig, GRPOTrainer, Dataset):
    model, tok = load_model("tiny")
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": f"What is {i}+{i}?"}]} for i in range(4)])
    seen = []

    def reward(completions, **kwargs):
        seen.extend(c[0]["content"] for c in completions)
        return [float(len(c[0]["content"]) % 3) for c in completions]

    args = GRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=12, report_to=[], use_cpu=True, save_strategy="no",
                      learning_rate=1e-2, dataloader_num_workers=0, disable_tqdm=True, seed=0)
    rollout_func = make_rollout_func()
    calls = []
    original = RolloutEngine._generate_chunk

    def spy(self, prompts, first, request):
        calls.append((len(prompts), request.num_samples))
        return original(self, prompts, first, request)

    monkeypatch.setattr(RolloutEngine, "_generate_chunk", spy)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                          processing_class=tok, rollout_func=rollout_func)
    before = model.model.layers[1].self_attn.kv_b_proj.weight.detach().clone()
    result = trainer.train()

    engine = rollout_func.state["engine"]
    assert engine is not None and engine.model is model
    assert calls == [(2, 4)]  # 8 rows = 2 prompts x 4 generations, one prefill per prompt
    assert len(seen) == 8 and result.global_step == 1
    assert torch.isfinite(torch.tensor(result.training_loss))
    after = model.model.layers[1].self_attn.kv_b_proj.weight.detach()
    assert not torch.equal(before, after)  # the step trained on our rollouts
    assert engine._signature != engine._current_signature()  # ...and the engine will see the new weights
    out = rollout_func([[{"role": "user", "content": "1+1?"}]] * 2, trainer)
    assert set(out) == {"prompt_ids", "completion_ids", "logprobs"}
    assert len(out["completion_ids"]) == 2 and all(len(ids) <= 12 for ids in out["completion_ids"])
    assert [len(lp) for lp in out["logprobs"]] == [len(ids) for ids in out["completion_ids"]]
    assert all(lp <= 0 for row in out["logprobs"] for lp in row)
    assert engine._signature == engine._current_signature()
