"""Reasoning traces: one schema (trace.schema.json) and one SQLite store for training rollouts,
pipeline runs and evaluations.

Writers:
    store = TraceStore.open()                      # $REASONER_HOME/traces.db or ./runs/traces.db
    store.add_many(rollout_traces(prompts=..., completions=..., rewards={...}, advantages=...,
                                  correct=..., step=step, task="gsm8k", model="tiny-moe"))
    rec = TraceRecorder("pipeline", task="math", prompt=problem)
    with rec.span("solve"):
        rec.add(model_call_span(prompt, completion, latency_s=0.8))
    store.add(rec.finish(correct=True))

Readers:
    store.query(source="train", correct=False, min_reward=0.5, limit=20) -> list[Trace]
"""
from reasoner.traces.build import (
    TraceRecorder,
    model_call_span,
    node_span,
    reward_span,
    rollout_trace,
    rollout_traces,
    verification_span,
)
from reasoner.traces.model import (
    SCHEMA_VERSION,
    ModelCall,
    Reward,
    Span,
    Trace,
    Verification,
    split_think,
)
from reasoner.traces.schema import TraceValidationError, load_schema, validate_trace_dict
from reasoner.traces.store import (
    ImportResult,
    TraceFilter,
    TraceNotFound,
    TraceStore,
    TraceStoreError,
    TraceSummary,
    default_store_path,
)


def import_jsonl(path, store: TraceStore | None = None) -> ImportResult:
    """Import a JSON-lines trace file into `store` (default: the default store)."""
    if store is not None:
        return store.import_jsonl(path)
    with TraceStore.open() as default_store:
        return default_store.import_jsonl(path)


__all__ = [
    "SCHEMA_VERSION", "ImportResult", "ModelCall", "Reward", "Span", "Trace", "TraceFilter", "TraceNotFound",
    "TraceRecorder", "TraceStore", "TraceStoreError", "TraceSummary", "TraceValidationError", "Verification",
    "default_store_path", "import_jsonl", "load_schema", "model_call_span", "node_span", "reward_span",
    "rollout_trace", "rollout_traces", "split_think", "validate_trace_dict", "verification_span",
]
