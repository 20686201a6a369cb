"""Stage 1, cold start: TRL's SFTTrainer on worked `<think>` traces."""
from __future__ import annotations

from pathlib import Path

from trl import SFTConfig, SFTTrainer

from reasoner.rl.checkpoints import MarkCompleteCheckpoints
from reasoner.rl.fit import fit
from reasoner.rl.recipe import Recipe


def sft_config(recipe: Recipe, output_dir: Path, use_cpu: bool) -> SFTConfig:
    stage = recipe.sft
    return SFTConfig(
        output_dir=str(output_dir), max_steps=stage.max_steps, per_device_train_batch_size=stage.batch_size,
        learning_rate=stage.learning_rate, lr_scheduler_type="cosine", warmup_steps=stage.warmup_steps,
        max_length=stage.max_length, seed=recipe.seed, logging_steps=10, save_steps=max(1, stage.max_steps // 4),
        save_total_limit=2, report_to=[], use_cpu=use_cpu, bf16=False, dataloader_num_workers=0,
        completion_only_loss=True, disable_tqdm=False,
        activation_checkpointing=False,
    )


def run_sft(recipe: Recipe, model, tokenizer, dataset, output_dir: Path, use_cpu: bool, callbacks=()):
    """Train in place; resumes from the newest complete checkpoint under output_dir. Returns the trainer."""
    trainer = SFTTrainer(model=model, args=sft_config(recipe, output_dir, use_cpu), train_dataset=dataset,
                         processing_class=tokenizer, callbacks=[MarkCompleteCheckpoints(), *callbacks])
    return fit(trainer, recipe.balance.gamma, output_dir, "sft")
