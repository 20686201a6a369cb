"""What the trace viewers share (terminal, web UI, OTLP): the question behind a prompt, a trace's final
answer, span times that nest, and word-level text differences."""
from __future__ import annotations

import difflib
import re
from reasoner.traces.model import Span, Trace

# Chat-template markers around the user's text: ours (<|user|>...<|assistant|>), DeepSeek's (<｜User｜>),
# ChatML (<|im_start|>user ... <|im_end|>) and a plain "User: ... Assistant:" transcript.
_USER_MARKERS = re.compile(r"<\|user\|>|<｜User｜>|<\|im_start\|>user\s*|(?:^|\n)User:\s*")
_END_MARKERS = re.compile(r"<\|assistant\|>|<｜Assistant｜>|<\|im_end\|>|(?:^|\n)Assistant:")
_SPECIAL = re.compile(r"<\|[^|<>]{0,40}\|>|<｜[^｜<>]{0,40}｜>|</?s>")


def question_text(prompt: str | None) -> str:
    """The user's question inside a chat-templated prompt, on one line; other prompts unchanged (one line)."""
    if not prompt:
        return ""
    text = prompt
    users = list(_USER_MARKERS.finditer(text))
    if users:
        text = text[users[-1].end():]
        end = _END_MARKERS.search(text)
        if end:
            text = text[:end.start()]
    return " ".join(_SPECIAL.sub(" ", text).split())


def final_answer(trace: Trace) -> tuple[str, str | None]:
    """(answer, status): what the trace concluded. A pipeline run records it in metadata (the last model call
    may be a rejected sample); a rollout's answer is its completion's answer part."""
    meta = trace.metadata or {}
    if meta.get("answer") is not None:
        status = meta.get("status")
        return str(meta["answer"]), None if status is None else str(status)
    calls = trace.model_calls()
    if not calls:
        return "", meta.get("status")
    return calls[-1].answer, meta.get("status")


def trace_text(trace: Trace) -> str:
    """Every model call's completion, in order: what two traces are compared on."""
    return "\n\n".join(call.completion for call in trace.model_calls())


# -- timing ------------------------------------------------------------------------------------

def span_times(trace: Trace) -> tuple[dict[str, tuple[float, float]], tuple[float, float], bool]:
    """({span id: (start, end)}, (root start, root end), timed) in epoch seconds, such that every span lies
    within its parent and the root covers every span.

    Spans without times are placed after their previous sibling (or at their parent's start) and last their
    model call's latency, if any; a parent is widened to cover its children. `timed` says whether any span
    carried a time at all (rollouts usually carry none).
    """
    known = [s.start for _, s in trace.walk() if s.start is not None]
    timed = bool(known) or any(s.duration_s for _, s in trace.walk())
    origin = min(known) if known else trace.created.timestamp()
    times: dict[str, tuple[float, float]] = {}

    def place(span: Span, default_start: float) -> tuple[float, float]:
        start = span.start if span.start is not None else default_start
        end = span.end if span.end is not None else start + max(span.duration_s or 0.0, 0.0)
        end = max(end, start)
        cursor = start
        for child in span.children:
            child_start, child_end = place(child, cursor)
            if child.start is None:
                cursor = child_end
            start, end = min(start, child_start), max(end, child_end)
        times[span.id] = (start, end)
        return start, end

    cursor = origin
    bounds: list[tuple[float, float]] = []
    for span in trace.spans:
        bounds.append(place(span, cursor))
        if span.start is None:
            cursor = bounds[-1][1]
    if bounds:
        root = (min(b[0] for b in bounds), max(b[1] for b in bounds))
    else:
        root = (origin, origin)
    return times, root, timed


def waterfall(trace: Trace) -> dict:
    """Rows for a timing waterfall: one per span, depth first, offsets in ms from the trace's start."""
    times, (root_start, root_end), timed = span_times(trace)
    rows = []
    for depth, span in trace.walk():
        start, end = times[span.id]
        rows.append({"id": span.id, "name": span.name, "kind": span.kind, "depth": depth,
                     "status": span.status, "offset_ms": round((start - root_start) * 1000, 3),
                     "duration_ms": round((end - start) * 1000, 3)})
    return {"total_ms": round((root_end - root_start) * 1000, 3), "timed": timed, "spans": rows}


# -- text differences --------------------------------------------------------------------------

_TOKENS = re.compile(r"\s+|\w+|[^\w\s]")


def diff_segments(a: str, b: str) -> list[tuple[str, str, str]]:
    """Word-level differences: [(tag, a_text, b_text)] with tag 'equal', 'replace', 'delete' or 'insert'.
    Joining the a_texts gives a back, the b_texts b."""
    ta, tb = _TOKENS.findall(a or ""), _TOKENS.findall(b or "")
    matcher = difflib.SequenceMatcher(None, ta, tb, autojunk=False)
    return [(tag, "".join(ta[i1:i2]), "".join(tb[j1:j2])) for tag, i1, i2, j1, j2 in matcher.get_opcodes()]

