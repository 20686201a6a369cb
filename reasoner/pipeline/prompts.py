"""Prompt files, one per role, in prompts/ (shipped as package data)."""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from reasoner.config import PACKAGE_ROOT

PROMPTS_DIR = Path(PACKAGE_ROOT) / "prompts"
_FIELD = re.compile(r"\{([a-z_]+)\}")


@functools.cache
def prompt_text(role: str) -> str:
    return (PROMPTS_DIR / f"{role}.txt").read_text()


@functools.cache
def plan_schema() -> dict:
    return json.loads((PROMPTS_DIR / "plan.schema.json").read_text())


def render(role: str, **fields: str) -> str:
    """Fill `{name}` fields. Not str.format: problems and code are full of braces of their own."""
    template = prompt_text(role)
    missing = set(_FIELD.findall(template)) - set(fields)
    if missing:
        raise KeyError(f"prompts/{role}.txt needs {sorted(missing)}")
    return _FIELD.sub(lambda m: str(fields[m.group(1)]), template)


def user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]
