"""runs/<name>/summary.json: merged, never overwritten, replaced atomically."""
from __future__ import annotations

import json
from pathlib import Path

from reasoner.files import write_json_atomically


def write_summary(results: dict, path: str | Path) -> Path:
    """Merge `results` into the summary (other keys kept) and replace the file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary.update(results)
    return write_json_atomically(path, summary, indent=2)
