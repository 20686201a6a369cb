"""What every training stage shares: load balancing, a compact progress bar, resuming, training."""
from __future__ import annotations

from pathlib import Path

from reasoner.rl.balance import ExpertLoadBalancer
from reasoner.rl.checkpoints import (latest_complete_checkpoint, restore_router_biases,
                                     restore_trained_outside_adapters)
from reasoner.rl.progress import use_compact_progress


def fit(trainer, gamma: float, output_dir: Path, stage: str):
    """Train from the newest complete checkpoint under output_dir (if any); returns the trainer."""
    balancer = ExpertLoadBalancer(trainer.model, gamma)
    trainer.add_callback(balancer)
    use_compact_progress(trainer, stage)
    resume = latest_complete_checkpoint(output_dir)
    if resume:
        restore_router_biases(trainer.model, resume)
        restore_trained_outside_adapters(trainer.model, resume)
    trainer.train(resume_from_checkpoint=resume)
    trainer.balancer = balancer
    return trainer
