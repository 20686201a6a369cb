"""runs/<name>/summary.json: merged, never overwritten, replaced atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_summary(results: dict, path: str | Path) -> Path:
    """Merge `results` into the summary (other keys kept) and replace the file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary.update(results)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(json.dumps(summary, indent=2) + "\n")
    staging.replace(path)
    return path
