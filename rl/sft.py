"""Stage 1, cold start: TRL's SFTTrainer on worked `<think>` traces (plus the MTP loss when recipe.mtp.weight > 0)."""
from __future__ import annotations

from pathlib import Path

from trl import SFTConfig, SFTTrainer

from reasoner.mtp import attach_mtp, mtp_depth, mtp_loss
from reasoner.rl.checkpoints import MarkCompleteCheckpoints
from reasoner.rl.fit import fit
from reasoner.rl.progress import reporting
from reasoner.rl.recipe import Recipe


class MTPSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss adds V3's multi-token-prediction loss: L = L_main + mtp_weight * L_MTP.

    The MTP layers read the main model's last hidden state from the same forward (reasoner/mtp.py keeps it),
    so the MTP loss costs one more decoder block and head per depth. `mtp_loss` is logged like TRL's metrics."""

    def __init__(self, *args, mtp_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.mtp_weight = mtp_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        if self.mtp_weight <= 0 or not mtp_depth(model):
            return result
        extra = mtp_loss(model, inputs["input_ids"], inputs.get("labels"), inputs.get("attention_mask"))
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["mtp_loss"].append(self.accelerator.gather_for_metrics(extra.detach()).mean().item())
        if return_outputs:
            loss, outputs = result
            return loss + self.mtp_weight * extra, outputs
        return result + self.mtp_weight * extra


def sft_config(recipe: Recipe, output_dir: Path, use_cpu: bool) -> SFTConfig:
    stage = recipe.sft
    return SFTConfig(
        output_dir=str(output_dir), max_steps=stage.max_steps, per_device_train_batch_size=stage.batch_size,
        learning_rate=stage.learning_rate, lr_scheduler_type="cosine", warmup_steps=stage.warmup_steps,
        max_length=stage.max_length, seed=recipe.seed, save_steps=max(1, stage.max_steps // 4),
        save_total_limit=2, **reporting(stage, output_dir), use_cpu=use_cpu, bf16=False, dataloader_num_workers=0,
        completion_only_loss=True, disable_tqdm=False,
        activation_checkpointing=False,
    )


def run_sft(recipe: Recipe, model, tokenizer, dataset, output_dir: Path, use_cpu: bool, callbacks=()):
    """Train in place; resumes from the newest complete checkpoint under output_dir. Returns the trainer."""
    if recipe.mtp.weight > 0 and not mtp_depth(model):
        attach_mtp(model, recipe.mtp.depth)  # saved with the model: later stages and rollouts use it
    trainer = MTPSFTTrainer(model=model, args=sft_config(recipe, output_dir, use_cpu), train_dataset=dataset,
                            processing_class=tokenizer, callbacks=[MarkCompleteCheckpoints(), *callbacks],
                            mtp_weight=recipe.mtp.weight)
    return fit(trainer, recipe.balance.gamma, output_dir, "sft")
