"""Stage 2: TRL's GRPOTrainer with rule-based rewards, load balancing and rollout recording."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from accelerate.utils import gather_object
from trl import GRPOConfig, GRPOTrainer

from reasoner.errors import ReasonerError
from reasoner.mtp import mtp_depth, mtp_loss_on_completions
from reasoner.rl.checkpoints import MarkCompleteCheckpoints
from reasoner.rl.fit import fit
from reasoner.rl.progress import reporting
from reasoner.rl.recipe import Recipe
from reasoner.rl.rewards import build_rewards
from reasoner.rollout.hooks import make_rollout_func
from reasoner.traces import TraceStore, rollout_trace

RolloutSink = Callable[[list[dict]], None]


class RecordingGRPOTrainer(GRPOTrainer):
    """GRPOTrainer that hands every scored rollout (prompt, completion, rewards, advantage) to a sink.

    TRL already gathers these for its own logging (`self._logs`); we read the newest entries after each
    generation round instead of recomputing anything.
    """

    def __init__(self, *args, rollout_sink: RolloutSink | None = None, mtp_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.rollout_sink = rollout_sink
        self.mtp_weight = mtp_weight  # recipe.mtp.grpo: keep training the MTP draft on the policy's samples

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.mtp_weight > 0 and mtp_depth(model):
            extra = mtp_loss_on_completions(model, inputs["prompt_ids"], inputs["prompt_mask"],
                                            inputs["completion_ids"], inputs["completion_mask"])
            self._metrics["train" if model.training else "eval"]["mtp_loss"].append(extra.item())
            loss = loss + self.mtp_weight * extra
        return loss

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        acceptance = getattr(self.rollout_func, "state", {}).get("acceptance")
        if acceptance is not None:  # rollouts drafted with MTP (reasoner/rollout/speculative.py)
            self._metrics["train" if self.model.training else "eval"]["mtp_acceptance"].append(acceptance)
        problem_ids = gather_object([row.get("problem_id") for row in inputs])
        answers = gather_object([row.get("answer") for row in inputs])
        if self.rollout_sink is not None and self.accelerator.is_main_process:
            self.rollout_sink(self._latest_rollouts(problem_ids, answers))
        return output

    def _latest_rollouts(self, problem_ids: list, answers: list) -> list[dict]:
        n = len(problem_ids)
        logs = self._logs
        tail = lambda values: list(values)[-n:]  # noqa: E731
        rewards = {name: tail(values) for name, values in logs["rewards"].items()}
        records = []
        for i, (prompt, completion, advantage) in enumerate(
                zip(tail(logs["prompt"]), tail(logs["completion"]), tail(logs["advantages"]))):
            per_reward = {name: values[i] for name, values in rewards.items()}
            records.append({
                "step": self.state.global_step, "problem_id": problem_ids[i], "gold": answers[i],
                "prompt": prompt, "completion": completion, "rewards": per_reward,
                "reward": sum(v * w for v, w in zip(per_reward.values(), self.reward_weights.tolist())
                              if v == v),  # NaN (reward not applicable) counts as nothing
                "advantage": advantage,
            })
        return records


def grpo_config(recipe: Recipe, output_dir: Path, use_cpu: bool) -> GRPOConfig:
    stage = recipe.grpo
    weights = stage.reward_weights or [1.0] * len(stage.rewards)
    # One generation round per optimizer step; micro_batch_size splits it into gradient-accumulation steps.
    sequences = stage.prompts_per_step * stage.num_generations
    micro = stage.micro_batch_size or sequences
    if sequences % micro:
        raise ReasonerError(f"grpo.micro_batch_size={micro} must divide prompts_per_step x num_generations = {sequences}")
    accumulate = sequences // micro
    vllm = dict(vllm_mode=stage.vllm_mode, vllm_server_base_url=stage.vllm_server_base_url,
                vllm_gpu_memory_utilization=stage.vllm_gpu_memory_utilization,
                vllm_tensor_parallel_size=stage.vllm_tensor_parallel_size) if stage.use_vllm else {}
    return GRPOConfig(
        output_dir=str(output_dir), max_steps=stage.max_steps, learning_rate=stage.learning_rate,
        per_device_train_batch_size=micro, num_generations=stage.num_generations,
        gradient_accumulation_steps=accumulate, steps_per_generation=accumulate,
        **vllm,
        max_completion_length=stage.max_completion_length, temperature=stage.temperature, top_p=stage.top_p,
        loss_type=stage.loss_type, beta=stage.beta, epsilon=stage.epsilon, epsilon_high=stage.epsilon_high,
        scale_rewards=stage.scale_rewards, reward_weights=weights, mask_truncated_completions=False,
        seed=recipe.seed, save_steps=stage.save_steps, save_total_limit=2,
        **reporting(stage, output_dir), use_cpu=use_cpu, bf16=False, dataloader_num_workers=0, use_vllm=stage.use_vllm,
        lr_scheduler_type="constant_with_warmup", warmup_steps=stage.warmup_steps, disable_tqdm=False, activation_checkpointing=stage.gradient_checkpointing,
    )


def run_grpo(recipe: Recipe, model, tokenizer, dataset, output_dir: Path, use_cpu: bool,
             rollout_sink: RolloutSink | None = None, rollout_func=None, callbacks=()):
    stage = recipe.grpo
    rewards = build_rewards(stage.rewards, stage.max_completion_length, stage.overlong_buffer)
    # The engine reads the projections' weights directly; under LoRA those omit the adapters' delta, so
    # LoRA runs sample with TRL's own generate.
    if rollout_func is None and stage.fast_rollout and not stage.use_vllm and not recipe.lora.enabled:
        rollout_func = make_rollout_func(max_batch_size=stage.prompts_per_step * stage.num_generations)
    trainer = RecordingGRPOTrainer(
        model=model, reward_funcs=rewards, args=grpo_config(recipe, output_dir, use_cpu),
        train_dataset=dataset, processing_class=tokenizer, rollout_func=rollout_func,
        callbacks=[MarkCompleteCheckpoints(), *callbacks], rollout_sink=rollout_sink,
        mtp_weight=recipe.mtp.weight if recipe.mtp.grpo else 0.0,
    )
    return fit(trainer, recipe.balance.gamma, output_dir, "grpo")


def trace_sink(task: str, model: str, store_path: str | Path | None = None, *, metadata: dict | None = None,
               group_size: int | None = None) -> RolloutSink:
    """Write each generation round's rollouts to the trace store as one transaction.

    metadata (the run id, output_dir, recipe, stage) goes on every rollout; each also gets its GRPO group
    (`group`: the k = group_size consecutive rollouts of one prompt in one round) and the round's wall time
    on its step span, so `reasoner traces ui` can show a prompt's rollouts side by side."""
    store = TraceStore.open(store_path)
    state = {"round": 0, "since": time.time()}

    def sink(records: list[dict]) -> None:
        now, round_ = time.time(), state["round"]
        traces = []
        for i, r in enumerate(records):
            group = i // group_size if group_size else None
            extra = {"problem_id": r["problem_id"], "gold": r["gold"], **(metadata or {}), "index": i}
            if group is not None:
                extra.update(group=f"{(metadata or {}).get('run', '')}:s{r['step']}r{round_}g{group}",
                             group_size=group_size)
            trace = rollout_trace(prompt=r["prompt"], completion=r["completion"], rewards=r["rewards"],
                                  step=r["step"], advantage=r["advantage"], correct=_correct(r["rewards"]),
                                  task=task, model=model, total_reward=r["reward"], metadata=extra)
            trace.spans[0].start, trace.spans[0].end = state["since"], now  # the generation round, timed
            traces.append(trace)
        store.add_many(traces)
        state["round"], state["since"] = round_ + 1, time.time()

    return sink


def _correct(rewards: dict[str, float]) -> bool | None:
    for name in ("accuracy_reward", "code_reward"):
        value = rewards.get(name)
        if value is not None and value == value:  # not NaN: the reward applied to this task
            return value == 1.0
    return None
