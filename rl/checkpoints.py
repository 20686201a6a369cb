"""Resumable training: only checkpoints that were written to the end are ever resumed from.

The HF Trainer writes `checkpoint-N/` file by file; a SIGKILL can leave half of one. A callback
drops a COMPLETE marker once the Trainer has finished saving (after fsyncing every file of the
checkpoint, then the marker, then the folder, so the marker can never reach the disk before the
data it vouches for), and resume picks the newest marked checkpoint, deleting unmarked leftovers.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

MARKER = "COMPLETE"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mark_complete(folder: str | Path, step: int) -> None:
    folder = Path(folder)
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            _fsync(file)
    for sub in sorted((d for d in folder.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
        _fsync(sub)
    with open(folder / MARKER, "w") as handle:
        handle.write(str(step))
        handle.flush()
        os.fsync(handle.fileno())
    _fsync(folder)


class MarkCompleteCheckpoints(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        # on_save runs after the Trainer's _save_checkpoint (weights, optimizer, scheduler, RNG, state) returned.
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                mark_complete(folder, state.global_step)


def _step(path: Path) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match else -1


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def latest_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest fully written checkpoint; unfinished ones are removed so the Trainer never sees them
    (its checkpoint rotation would otherwise count them). Only the main process deletes."""
    folders = sorted((p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and _step(p) >= 0), key=_step)
    complete = [p for p in folders if is_complete(p)]
    if int(os.environ.get("RANK", "0")) == 0:
        for leftover in folders:
            if not is_complete(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
    return str(complete[-1]) if complete else None
