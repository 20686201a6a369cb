"""The pipeline's trace: spans built as plain dicts in graph state, written as one trace at the end.

Spans live in the (checkpointed) graph state rather than in memory, so a run that is interrupted
and resumed still produces one complete trace. This is the only module that knows the trace format.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from reasoner.traces.build import model_call_span, node_span, verification_span
from reasoner.traces.model import Span, Trace
from reasoner.traces.store import TraceStore


def model_calls(generations: Sequence, sampling: dict, model: str, name: str = "generate") -> list[dict]:
    now = time.time()
    return [model_call_span(g.prompt, g.text, model=model, prompt_tokens=g.prompt_tokens,
                            completion_tokens=g.completion_tokens, latency_s=g.latency_s, sampling=sampling,
                            name=name, start=now - g.latency_s, finish_reason=g.finish_reason).to_dict()
            for g in generations]


def verdict(verdict: dict, name: str = "verify", **attributes: Any) -> dict:
    return verification_span(verdict["verdict"], verdict["detail"], verifier=verdict.get("verifier"), name=name,
                             **attributes).to_dict()


def node(name: str, children: Sequence[dict] = (), start: float | None = None, status: str = "ok",
         error: str | None = None, kind: str = "node", **attributes: Any) -> dict:
    span = node_span(name, *(Span.from_dict(c) for c in children), kind=kind, **attributes)
    span.end = time.time()
    span.start, span.status, span.error = span.end if start is None else start, status, error
    return span.to_dict()


def event(name: str, message: str, **attributes: Any) -> dict:
    """A fallback or failure worth finding later: repair failed, backend error, budget spent."""
    return node(name, status="error", error=message, kind="other", **attributes)


def write_trace(result, *, run_id: str, model: str, store_path=None, elapsed_s: float) -> str:
    """One trace for a run, from its RunResult (pipeline/graph.py read_result)."""
    spans = sorted((Span.from_dict(s) for s in result.spans), key=lambda s: s.start or 0.0)
    trace = Trace(source="pipeline", task=result.task, model=model, prompt=result.problem, correct=result.verified,
                  spans=spans, id=run_id, metadata={
                      "answer": result.answer, "status": result.status, "elapsed_s": round(elapsed_s, 3),
                      "options": result.options.to_dict(), "events": result.events, "steps": result.planned})
    with TraceStore.open(store_path) as store:
        if not store.count(ids=[run_id]):  # asking a finished run again must not write it twice
            store.add(trace)
    return trace.id
