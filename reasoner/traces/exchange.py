"""Trace files: JSON lines (our schema, import and export) and OTLP JSON lines (export)."""
from __future__ import annotations

import hashlib
import json
import os
from typing import IO, Any, Iterable, Iterator

from reasoner.errors import ReasonerError
from reasoner.traces.build import rollout_trace
from reasoner.traces.model import Span, Trace
from reasoner.traces.schema import validate_trace_dict
from reasoner.traces.views import span_times


def read_jsonl(path: str | os.PathLike) -> Iterator[Trace]:
    """Traces from a JSON-lines file, validated; errors name the line.

    Lines in the trace schema are read as they are. Flat rollout records that training wrote
    before the store existed ({"prompt", "completion", "rewards" | "reward", "advantage", "step",
    "correct", "task", "model"}) are converted with rollout_trace().
    """
    try:
        handle = open(path, encoding="utf-8")
    except OSError as err:
        raise ReasonerError(f"cannot read {path}: {err.strerror}") from None
    with handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield _parse_line(line, f"{path}:{number}")


def _parse_line(line: str, where: str) -> Trace:
    try:
        data = json.loads(line)
    except ValueError as err:
        raise ReasonerError(f"{where}: not JSON ({err})") from None
    if isinstance(data, dict) and "spans" not in data and "completion" in data:
        return _legacy_rollout(data, where)
    validate_trace_dict(data, where)
    return Trace.from_dict(data)


def _legacy_rollout(data: dict, where: str) -> Trace:
    rewards = data.get("rewards")
    if not isinstance(rewards, dict):
        rewards = {} if data.get("reward") is None else {"reward": data["reward"]}
    try:
        trace = rollout_trace(prompt=str(data.get("prompt", "")), completion=str(data["completion"]),
                              rewards=rewards, step=int(data.get("step", 0)), advantage=data.get("advantage"),
                              correct=data.get("correct"), task=str(data.get("task") or "unknown"),
                              model=data.get("model"))
    except (TypeError, ValueError) as err:
        raise ReasonerError(f"{where}: not a trace or rollout record ({err})") from None
    validate_trace_dict(trace.to_dict(), where)
    return trace


def write_jsonl(traces: Iterable[Trace], out: IO[str]) -> int:
    count = 0
    for trace in traces:
        out.write(json.dumps(trace.to_dict(), ensure_ascii=False, allow_nan=False) + "\n")
        count += 1
    return count


# -- OTLP ------------------------------------------------------------------------------------
# One ExportTraceServiceRequest per line, as OpenTelemetry's file exporter writes, with GenAI
# semantic-convention attributes (Langfuse) and OpenInference ones (Phoenix) on model calls.

def write_otlp(traces: Iterable[Trace], out: IO[str]) -> int:
    count = 0
    for trace in traces:
        out.write(json.dumps(otlp_request(trace), ensure_ascii=False) + "\n")
        count += 1
    return count


def otlp_request(trace: Trace) -> dict:
    """One trace as an OTLP request: a root span covering the whole trace, then every span under its parent.
    Times come from views.span_times, so every child lies within its parent (waterfalls draw right)."""
    spans: list[dict] = []
    trace_id = _hex_id(trace.id, 32)
    root_id = _hex_id(trace.id + "/root", 16)
    times, (start, end), _ = span_times(trace)
    root_attributes = {"openinference.span.kind": "CHAIN", "reasoner.trace.id": trace.id,
                       "reasoner.source": trace.source, "reasoner.task": trace.task, "reasoner.model": trace.model,
                       "reasoner.correct": trace.correct, "reasoner.reward": trace.reward,
                       "input.value": trace.prompt,
                       **{f"reasoner.metadata.{k}": v for k, v in trace.metadata.items()}}
    spans.append(_otlp_span(trace_id, root_id, None, f"{trace.source} {trace.task}", start, end,
                            root_attributes, None, 1))
    for span in trace.spans:
        _otlp_walk(span, trace_id, root_id, times, spans, trace.model)
    resource = {"attributes": _attributes({"service.name": "reasoner", "reasoner.source": trace.source})}
    scope = {"name": "reasoner.traces", "version": str(trace.schema_version)}
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [{"scope": scope, "spans": spans}]}]}


def _otlp_walk(span: Span, trace_id: str, parent_id: str, times: dict, out: list[dict],
               trace_model: str | None) -> None:
    span_id = _hex_id(span.id, 16)
    start, end = times[span.id]
    kind = 3 if span.model_call else 1  # SPAN_KIND_CLIENT for model calls, else INTERNAL
    model = (span.model_call.model or trace_model) if span.model_call else None  # calls inherit the trace's model
    name = f"chat {model}" if model else span.name
    out.append(_otlp_span(trace_id, span_id, parent_id, name, start, end, _span_attributes(span, model),
                          span.error if span.status == "error" else None, kind, span.status))
    for child in span.children:
        _otlp_walk(child, trace_id, span_id, times, out, trace_model)


def _otlp_span(trace_id, span_id, parent_id, name, start, end, attributes, error, kind, status="ok") -> dict:
    data = {"traceId": trace_id, "spanId": span_id, "name": name, "kind": kind,
            "startTimeUnixNano": str(round(start * 1e9)), "endTimeUnixNano": str(round(end * 1e9)),
            "attributes": _attributes(attributes),
            "status": {"code": 2, "message": error or ""} if status == "error" else {"code": 1}}
    if parent_id:
        data["parentSpanId"] = parent_id
    return data


def _span_attributes(span: Span, model: str | None) -> dict:
    attributes: dict[str, Any] = {"reasoner.span.kind": span.kind, "reasoner.span.name": span.name,
                                  **{f"reasoner.attr.{k}": v for k, v in span.attributes.items()}}
    if span.model_call:
        attributes.update(_model_call_attributes(span, model))
    elif span.verification:
        v = span.verification
        attributes.update({"openinference.span.kind": "EVALUATOR", "reasoner.verification.verdict": v.verdict,
                           "reasoner.verification.detail": v.detail, "reasoner.verification.verifier": v.verifier,
                           "output.value": f"{v.verdict}: {v.detail}" if v.detail else v.verdict})
    elif span.reward:
        r = span.reward
        attributes.update({"openinference.span.kind": "EVALUATOR", "reasoner.reward.total": r.total,
                           "reasoner.reward.advantage": r.advantage,
                           **{f"reasoner.reward.{name}": value for name, value in r.components.items()}})
    else:
        attributes["openinference.span.kind"] = "CHAIN"
    return attributes


_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "max_tokens", "seed", "frequency_penalty", "presence_penalty")


def _model_call_attributes(span: Span, model: str | None) -> dict:
    call = span.model_call
    output_parts = ([{"type": "reasoning", "content": call.think}] if call.think else []) + \
        [{"type": "text", "content": call.answer}]
    attributes = {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "reasoner", "gen_ai.system": "reasoner",
        "gen_ai.request.model": model, "gen_ai.response.model": model,
        "gen_ai.usage.input_tokens": call.prompt_tokens, "gen_ai.usage.output_tokens": call.completion_tokens,
        "gen_ai.prompt": call.prompt, "gen_ai.completion": call.completion,
        "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": call.prompt}]}]),
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": output_parts}]),
        "openinference.span.kind": "LLM", "input.value": call.prompt, "output.value": call.completion,
        "llm.model_name": model, "llm.token_count.prompt": call.prompt_tokens,
        "llm.token_count.completion": call.completion_tokens,
        "reasoner.think": call.think, "reasoner.answer": call.answer, "reasoner.latency_s": call.latency_s,
    }
    for key in _SAMPLING_KEYS:
        attributes[f"gen_ai.request.{key}"] = call.sampling.get(key)
    attributes.update({f"reasoner.sampling.{k}": v for k, v in call.sampling.items() if k not in _SAMPLING_KEYS})
    return attributes


def _attributes(values: dict) -> list[dict]:
    return [{"key": key, "value": _any_value(value)} for key, value in values.items() if value is not None]


def _any_value(value: Any) -> dict:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # OTLP JSON encodes 64-bit integers as strings
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value):
        return {"arrayValue": {"values": [_any_value(v) for v in value]}}
    return {"stringValue": json.dumps(value, ensure_ascii=False, default=str)}


def _hex_id(text: str, digits: int) -> str:
    """Our ids are already hex of the right length when made by new_*_id; others are hashed."""
    lowered = text.lower()
    if len(lowered) == digits and all(c in "0123456789abcdef" for c in lowered) and set(lowered) != {"0"}:
        return lowered
    return hashlib.sha256(text.encode()).hexdigest()[:digits]


# -- HTML --------------------------------------------------------------------------------------

def render_html(traces: Iterable[Trace], title: str = "reasoner traces") -> str:
    """One self-contained page (viewer.html with the traces inlined): no network, no files beside it."""
    from html import escape
    from importlib import resources

    template = resources.files(__package__).joinpath("viewer.html").read_text("utf-8")
    payload = json.dumps([trace.to_dict() for trace in traces], ensure_ascii=False, allow_nan=False)
    # Inside <script>, "</script>" or "<!--" in a trace would end the block early: escape < > &.
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return template.replace("__TITLE__", escape(title)).replace("__TRACE_DATA__", payload, 1)


def write_html(traces: Iterable[Trace], out: IO[str], title: str = "reasoner traces") -> int:
    traces = list(traces)
    out.write(render_html(traces, title))
    return len(traces)
