"""The prompts and their one renderer: `render(role, style, **fields)` -> chat messages.

Roles: plan (the planner's JSON sub-problems), solve, reflect (a retry that shows the failed answer and why),
repair (a plan that did not parse). Styles:
- compact: the bare templates our from-scratch character-level models are trained on (`{problem}` then
  `plan:`): every character costs them, and they learn the format from examples, not instructions.
- r1: compact, after DeepSeek-R1's system prompt; what a checkpoint trained with `prompt_style: r1` saw.
- chat: for instruction-tuned models (DeepSeek-R1 on vLLM, any OpenAI-compatible server): it says what
  JSON plan to write, with the plan schema's own example, and how to give the final answer (`\\boxed{}` or
  `<answer>`). All in the user turn, as R1's model card asks: no system prompt.

Files: `compact_<role>.txt`, `chat_<role>.txt`, `r1_system.txt` and `plan.schema.json`, read through
importlib.resources, so the same code reads them from the repository and from an installed wheel.
Training (reasoner.rl.data) and the pipeline both render here, so a checkpoint is asked in the words it
was taught with.
"""
from __future__ import annotations

import functools
import json
import re
from importlib.resources import files

from reasoner.errors import ReasonerError

ROLES = ("plan", "solve", "reflect", "repair")
STYLES = ("compact", "r1", "chat")
RECIPE_STYLES = {"plain": "compact", "r1": "r1"}  # a recipe's task.prompt_style -> the style to render in
_FIELD = re.compile(r"\{([a-z_]+)\}")  # not {} or {1}: those are plan references, kept as written


@functools.cache
def read(name: str) -> str:
    """A prompt file's exact text (no trailing newline is added or removed)."""
    return files(__name__).joinpath(name).read_text(encoding="utf-8")


@functools.cache
def plan_schema() -> dict:
    return json.loads(read("plan.schema.json"))


def plan_example() -> str:
    """The plan schema's own example, as the chat planner is shown it."""
    return json.dumps(plan_schema()["examples"][0])


def recipe_style(prompt_style: str) -> str:
    """The style a checkpoint trained with a recipe's `task.prompt_style` ("plain" or "r1") is asked in."""
    if prompt_style not in RECIPE_STYLES:
        raise ReasonerError(f"unknown recipe prompt style {prompt_style!r}; styles: {', '.join(RECIPE_STYLES)}")
    return RECIPE_STYLES[prompt_style]


def render(role: str, style: str, **fields: str) -> list[dict]:
    """The messages for one call in `role`: `{name}` fields filled in the style's template (not str.format:
    problems and code are full of braces of their own), after R1's system prompt in the r1 style."""
    if role not in ROLES:
        raise ReasonerError(f"unknown prompt role {role!r}; roles: {', '.join(ROLES)}")
    if style not in STYLES:
        raise ReasonerError(f"unknown prompt style {style!r}; styles: {', '.join(STYLES)}")
    name = f"{'chat' if style == 'chat' else 'compact'}_{role}.txt"
    messages = [{"role": "user", "content": _fill(read(name), name, {"example": plan_example(), **fields})}]
    if style == "r1":
        messages.insert(0, {"role": "system", "content": read("r1_system.txt").strip()})
    return messages


def _fill(template: str, name: str, fields: dict) -> str:
    missing = set(_FIELD.findall(template)) - set(fields)
    if missing:
        raise KeyError(f"prompts/{name} needs {sorted(missing)}")
    return _FIELD.sub(lambda m: str(fields[m.group(1)]), template)
