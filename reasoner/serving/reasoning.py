"""Reasoning split out of `<think>...</think>` into `reasoning_content`, as vLLM's reasoning parsers do.

A completion that opens with `<think>` is reasoning up to `</think>` and content after it; one that never closes
the tag is all reasoning (it ran out of tokens while thinking). Anything else is all content. OpenAIBackend puts
the two back together in their tags, so a client of ours sees what the model wrote.
"""
from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning_content or None, content) of a whole completion."""
    stripped = text.lstrip()
    if not stripped.startswith(OPEN):
        return None, text
    reasoning, closed, content = stripped[len(OPEN):].partition(CLOSE)
    return reasoning, content if closed else ""


class ReasoningStream:
    """The same split over a completion that arrives in pieces: `feed(delta)` -> (reasoning delta, content delta).

    Text that may be the start of a tag is held back until the next piece (or `finish`) says what it is, so
    the pieces of each part add up to what `split_reasoning` gives for the whole text."""

    def __init__(self):
        self.state = "start"   # start -> thinking -> answering, or start -> answering
        self.pending = ""

    def feed(self, delta: str) -> tuple[str, str]:
        self.pending += delta
        reasoning = content = ""
        if self.state == "start":
            self._open()
        if self.state == "thinking":
            reasoning = self._think()
        if self.state == "answering":
            content, self.pending = self.pending, ""
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        """Whatever is still held back, at the end of the completion."""
        rest, self.pending = self.pending, ""
        if self.state == "thinking":
            return rest, ""
        return "", rest

    def _open(self) -> None:
        stripped = self.pending.lstrip()
        if stripped.startswith(OPEN):
            self.state, self.pending = "thinking", stripped[len(OPEN):]
        elif not OPEN.startswith(stripped):  # not a tag (blank or partial "<thi" keep waiting)
            self.state = "answering"

    def _think(self) -> str:
        if CLOSE in self.pending:
            reasoning, _, self.pending = self.pending.partition(CLOSE)
            self.state = "answering"
            return reasoning
        keep = _partial_tag_length(self.pending, CLOSE)
        reasoning, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return reasoning


def _partial_tag_length(text: str, tag: str) -> int:
    """How many characters at the end of text could be the beginning of tag."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0
