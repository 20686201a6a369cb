"""Resumable training: only checkpoints that were written to the end are ever resumed from.

The HF Trainer writes `checkpoint-N/` file by file; a SIGKILL can leave half of one. A callback
drops a COMPLETE marker (fsynced) once the Trainer has finished saving, and resume picks the newest
marked checkpoint, deleting unmarked leftovers.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

MARKER = "COMPLETE"


class MarkCompleteCheckpoints(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                with open(folder / MARKER, "w") as handle:
                    handle.write(str(state.global_step))
                    handle.flush()
                    os.fsync(handle.fileno())


def _step(path: Path) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match else -1


def latest_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest fully written checkpoint; unfinished ones are removed so the Trainer never sees them."""
    folders = sorted((p for p in Path(output_dir).glob("checkpoint-*") if _step(p) >= 0), key=_step)
    complete = [p for p in folders if (p / MARKER).exists()]
    for leftover in folders:
        if not (leftover / MARKER).exists():
            shutil.rmtree(leftover, ignore_errors=True)
    return str(complete[-1]) if complete else None
