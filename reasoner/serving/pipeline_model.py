"""The pipeline as a model: a chat completion to `reasoner-pipeline` runs `Reasoner.solve` on the last user message.

The answer is the content, the whole decomposed trace (as `reasoner traces show` draws it) the reasoning
content, and the run's trace id comes back beside them. Progress events (plan, vote, step solved, retry) are
lines of reasoning that a streamed request gets as they happen.
"""
from __future__ import annotations

import collections
import io
import threading
from pathlib import Path
from typing import Callable

from rich.console import Console

from reasoner.api import Reasoner, Solution
from reasoner.errors import ReasonerError
from reasoner.serving.backends import Backend
from reasoner.serving.schemas import ChatRequest
from reasoner.traces.render import trace_tree
from reasoner.traces.store import TraceStore, default_store_path

PIPELINE_MODEL = "reasoner-pipeline"


class PipelineModel:
    def __init__(self, backend: Backend, *, traces: str | Path | None = None, checkpoints: str | Path | None = None,
                 prompt_style: str = "compact"):
        self.backend, self.prompt_style = backend, prompt_style
        self.traces = Path(traces) if traces else default_store_path()
        self.checkpoints = checkpoints

    def solve(self, request: ChatRequest, progress: Callable[[dict], None] | None = None,
              cancel: threading.Event | None = None) -> Solution:
        """One run (a fresh Reasoner per request: runs in parallel threads share no SQLite connection);
        `cancel` set: it starts no new model call and ends with what it has (its trace is still written)."""
        problem = last_user_message(request.plain_messages())
        with Reasoner(self.backend, checkpoints=self.checkpoints, traces=self.traces,
                      prompt_style=self.prompt_style) as reasoner:
            return reasoner.solve(problem, task=request.task, progress=progress, cancel=cancel,
                                  **solve_options(request))

    def trace_text(self, trace_id: str) -> str:
        with TraceStore.open(self.traces, create=False) as store:
            trace = store.get(trace_id)
        out = io.StringIO()
        Console(file=out, width=120, color_system=None, emoji=False).print(trace_tree(trace, show_think=True))
        return out.getvalue()


def last_user_message(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message["role"] == "user":
            return message["content"]
    raise ReasonerError("the pipeline model needs a user message: the problem to solve")


def solve_options(request: ChatRequest) -> dict:
    """What the request says about sampling, in the pipeline's terms; the rest are the pipeline's defaults."""
    options = {"temperature": request.temperature, "top_p": request.top_p, "seed": request.seed,
               "max_tokens": request.max_tokens or request.max_completion_tokens, "samples": request.samples,
               "retries": request.retries}
    return {name: value for name, value in options.items() if value is not None}


LINES = {  # progress event node -> its line of reasoning
    "plan": "plan: asking for sub-problems",
    "replan": "plan: no majority, asking again{retry}",
    "vote": "vote: {answer} ({votes} of {samples} plans)",
    "sample": "step {step}: {question}{retry}",
    "reflect": "step {step}: the check failed, trying again{retry}",
    "solved": "step {step}: {question} -> {answer} [{status}]",
    "answer": "answer: {answer} [{status}]",
}


def progress_line(event: dict) -> str:
    """One line of reasoning for a progress event."""
    template = LINES.get(event.get("node"))
    if template is None:
        return f"{event}\n"
    retry = f" (retry {event['attempt']})" if event.get("attempt") else ""
    return template.format_map(collections.defaultdict(str, event, retry=retry)) + "\n"
