"""One progress bar per stage with the few numbers worth watching, instead of the Trainer's raw log dicts.

On a terminal it is a tqdm bar; written to a file or a pipe (CI, `make demo > log`), it is one plain line
every `every_steps` steps or `every_s` seconds, whichever comes first, and says when it saves a checkpoint.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from reasoner.progress import printable
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

# (log key, short label, format)
WATCHED = (
    ("loss", "loss", "{:.3f}"),
    ("mean_token_accuracy", "tok_acc", "{:.2f}"),
    ("rewards/accuracy_reward/mean", "acc", "{:.2f}"),
    ("reward", "reward", "{:.2f}"),
    ("completions/mean_length", "len", "{:.1f}"),
    ("kl", "kl", "{:.4f}"),
    ("maxvio", "maxvio", "{:.2f}"),
)
PLAIN_EVERY_STEPS = 10
PLAIN_EVERY_S = 30.0


def reporting(stage, output_dir: Path) -> dict:
    """TrainingArguments for a stage's logging: report_to (comma-separated in the recipe) and logging_steps.

    transformers 5 takes TensorBoard's folder from $TENSORBOARD_LOGGING_DIR (read when the Trainer builds its
    callbacks), else a `runs/` folder under the working directory; we point it at the stage's logging_dir,
    default <stage output_dir>/logs, so a run keeps its event files with its checkpoints.
    """
    names = [name.strip() for name in str(getattr(stage, "report_to", "none") or "none").split(",") if name.strip()]
    names = [] if names in ([], ["none"]) else names
    if "tensorboard" in names or "all" in names:
        logging_dir = getattr(stage, "logging_dir", None) or str(Path(output_dir) / "logs")
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(logging_dir).expanduser())
    return {"report_to": names, "logging_steps": int(getattr(stage, "logging_steps", None) or 1)}


def _format(logs: dict) -> dict[str, str]:
    return {label: printable(fmt.format(logs[key]), False) for key, label, fmt in WATCHED
            if isinstance(logs.get(key), (int, float))}


class CompactProgress(TrainerCallback):
    def __init__(self, stage: str, plain: bool | None = None, every_steps: int = PLAIN_EVERY_STEPS,
                 every_s: float = PLAIN_EVERY_S, out=None):
        self.stage = stage
        self.bar = None
        self.out = out
        self.plain = plain
        self.every_steps, self.every_s = every_steps, every_s
        self.shown: dict[str, str] = {}
        self._last_step, self._last_time, self._start = 0, 0.0, 0.0
        self._active = False

    def _stream(self):
        return self.out or sys.stderr

    def _say(self, text: str) -> None:
        stream = self._stream()
        print(text, file=stream, flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.plain is None:
            stream = self._stream()
            self.plain = not (hasattr(stream, "isatty") and stream.isatty())
        self._active = True
        self._start = self._last_time = time.monotonic()
        self._last_step = state.global_step
        if self.plain:
            resumed = f", resuming at step {state.global_step}" if state.global_step else ""
            self._say(f"[{printable(self.stage, False)}] training {state.max_steps} steps{resumed}")
        else:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=printable(self.stage, False),
                            dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
        elif self._active and self.plain:
            now = time.monotonic()
            due = state.global_step - self._last_step >= self.every_steps or now - self._last_time >= self.every_s
            if due or state.global_step >= state.max_steps:
                self._line(state, now)

    def _line(self, state, now: float) -> None:
        done, total = state.global_step, max(state.max_steps, 1)
        steps = max(done - self._last_step, 1)
        per_step = (now - self._last_time) / steps
        eta = per_step * max(total - done, 0)
        numbers = " ".join(f"{k} {v}" for k, v in self.shown.items())
        self._say(f"[{printable(self.stage, False)}] step {done}/{total} ({100 * done / total:.0f}%) "
                  f"{per_step:.2f} s/step eta {_duration(eta)}" + (f"  {numbers}" if numbers else ""))
        self._last_step, self._last_time = done, now

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        self.shown.update(_format(logs))
        if self.bar is not None:
            self.bar.set_postfix(self.shown, refresh=True)

    def on_save(self, args, state, control, **kwargs):
        if self._active and self.plain:
            self._say(f"[{printable(self.stage, False)}] saved checkpoint-{state.global_step}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self._active and self.plain:
            self._say(f"[{printable(self.stage, False)}] trained {state.global_step} steps in "
                      f"{_duration(time.monotonic() - self._start)}")
        self._active = False


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def use_compact_progress(trainer, stage: str) -> None:
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(CompactProgress(stage))
