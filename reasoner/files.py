"""Atomic file writes: a reader sees the old file or the new one, never half of one, even after a kill."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from reasoner.errors import ReasonerError


@contextmanager
def atomic_open(path: str | Path) -> Iterator:
    """A text handle on a staging file beside `path`; on a clean exit it is fsynced and renamed over `path`,
    on an exception it is removed and `path` is left as it was."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ReasonerError(f"cannot write {path}: folder {folder} does not exist")
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o666 & ~umask)  # mkstemp makes 0600; these are ordinary files
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | Path, text: str) -> Path:
    with atomic_open(path) as handle:
        handle.write(text)
    return Path(path)


def write_json_atomically(path: str | Path, data, indent: int = 1) -> Path:
    return write_text_atomically(path, json.dumps(data, indent=indent) + "\n")


def write_jsonl_atomically(path: str | Path, rows: Sequence[dict], sort_keys: bool = False) -> Path:
    return write_text_atomically(path, "".join(json.dumps(r, sort_keys=sort_keys) + "\n" for r in rows))
