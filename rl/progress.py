"""One progress bar per stage with the few numbers worth watching, instead of the Trainer's raw log dicts."""
from __future__ import annotations

from tqdm.auto import tqdm

from reasoner.progress import printable
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

# (log key, short label, format)
WATCHED = (
    ("loss", "loss", "{:.3f}"),
    ("rewards/accuracy_reward/mean", "acc", "{:.2f}"),
    ("reward", "reward", "{:.2f}"),
    ("completions/mean_length", "len", "{:.1f}"),
    ("maxvio", "maxvio", "{:.2f}"),
)


class CompactProgress(TrainerCallback):
    def __init__(self, stage: str):
        self.stage = stage
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=printable(self.stage, False),
                            dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs:
            shown = {label: printable(fmt.format(logs[key]), False) for key, label, fmt in WATCHED
                     if logs.get(key) is not None}
            self.bar.set_postfix(shown, refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def use_compact_progress(trainer, stage: str) -> None:
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(CompactProgress(stage))
