"""Terminal views of traces (rich): the list table, the span tree, and the side-by-side diff."""
from __future__ import annotations

from typing import Sequence

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from reasoner.progress import printable
from reasoner.traces.model import Span, Trace
from reasoner.traces.store import TraceSummary
from reasoner.traces.views import diff_segments, final_answer, question_text, trace_text

VERDICT_STYLES = {"pass": "bold green", "fail": "bold red", "error": "bold yellow", "unknown": "dim"}
VERDICT_MARKS = {"pass": "✔", "fail": "✘", "error": "!", "unknown": "?"}
PREVIEW_CHARS = 240
SOURCE_SHORT = {"train": "train", "pipeline": "pipe", "eval": "eval"}


def _shown(value):
    """Every string in a trace (keys too) with control characters escaped: traces hold untrusted text."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_shown(k): _shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shown(v) for v in value]
    return value


def printable_trace(trace: Trace) -> Trace:
    """A copy of the trace that is safe to print: what the terminal views render."""
    return Trace.from_dict(_shown(trace.to_dict()))


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def correct_text(correct: bool | None) -> Text:
    if correct is None:
        return Text("–", style="dim")
    return Text("✔", style="bold green") if correct else Text("✘", style="bold red")


def _verdict_reward(row: TraceSummary) -> Text:
    """Correctness and reward share a column (✔ 1.5 / ✘ 0 / – 0.3): 80 columns is tight."""
    return Text.assemble(correct_text(row.correct), " ", _num(row.reward))


def summary_table(summaries: Sequence[TraceSummary], total: int | None = None) -> Table:
    """Readable at 80 columns: short ids and times, the question (not the chat template) gets what is left;
    a column every row shares (source, model) moves to the caption."""
    shown = len(summaries)
    count = total if total is not None else shown
    caption = f"{shown} of {count} traces" if count != shown else f"{count} trace{'s' * (count != 1)}"
    shared = {}
    for name in ("source", "model"):
        values = {getattr(row, name) for row in summaries}
        if len(values) == 1 and shown > 1:
            shared[name] = next(iter(values))
    if shared:
        caption += " · " + " · ".join(f"{k} {printable(v or '–', False)}" for k, v in shared.items())
    table = Table(caption=caption, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True, expand=True, padding=(0, 0))
    with_tokens = any(row.completion_tokens is not None for row in summaries)
    # (header, justify, min width, max width): ids and times stay whole; the question takes what is left
    columns = [("id", "left", 8, 8), ("created", "left", 11, 11)]
    columns += [("src", "left", 3, 5)] * ("source" not in shared) + [("task", "left", 4, 10)]
    columns += [("model", "left", 5, 10)] * ("model" not in shared) + [("reward", "right", 6, 7)]
    columns += [("tok", "right", 3, 5)] * with_tokens + [("question", "left", 12, None)]
    for name, justify, width, most in columns:
        table.add_column(name, justify=justify, overflow="ellipsis", no_wrap=True, min_width=width, max_width=most,
                         ratio=1 if name == "question" else None)
    for row in summaries:
        cells = [printable(row.id[:8], False), row.created.strftime("%m-%d %H:%M")]
        if "source" not in shared:
            cells.append(SOURCE_SHORT.get(row.source, printable(row.source, False)))
        cells.append(printable(row.task, False))
        if "model" not in shared:
            cells.append(printable(row.model, False) if row.model else "–")
        cells.append(_verdict_reward(row))
        if with_tokens:
            cells.append("–" if row.completion_tokens is None else str(row.completion_tokens))
        table.add_row(*cells, printable(question_text(row.preview)[:120], False))
    return table


def _clip(text: str, limit: int = PREVIEW_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + f"… (+{len(text) - limit} chars)"


def _span_label(span: Span) -> Text:
    kind = span.kind.replace("_", " ")
    label = Text(span.name, style="bold")
    if span.kind != "node" and kind not in span.name.lower():  # "reward reward" says nothing twice
        label = Text.assemble((kind + " ", "dim"), label)
    details = []
    if span.model_call:
        call = span.model_call
        if call.model:
            details.append(call.model)
        if call.prompt_tokens is not None or call.completion_tokens is not None:
            details.append(f"{call.prompt_tokens or '?'}→{call.completion_tokens or '?'} tok")
        details += [f"{k}={v}" for k, v in call.sampling.items() if k in ("temperature", "top_p", "max_tokens")]
    if span.duration_s is not None:
        details.append(f"{span.duration_s:.2f}s")
    if details:
        label.append("  " + "  ".join(details), style="cyan")
    if span.status == "error":
        label.append(f"  error: {span.error or ''}", style="bold yellow")
    return label


def _add_model_call(node: Tree, span: Span, show_think: bool) -> None:
    call = span.model_call
    node.add(Text.assemble(("prompt: ", "dim"), _clip(call.prompt)))
    if call.think is not None:
        if show_think:
            node.add(Text.assemble(("think: ", "magenta"), (call.think, "italic dim")))
        else:
            first_line = (call.think.strip().splitlines() or [""])[0][:80]
            node.add(Text.assemble((f"▸ think ({len(call.think)} chars, folded; --think unfolds): ", "magenta"),
                                   (first_line, "italic dim")))
    node.add(Text.assemble(("answer: ", "bold"), _clip(call.answer, 2000 if show_think else PREVIEW_CHARS)))


def _add_span(parent: Tree, span: Span, show_think: bool) -> None:
    node = parent.add(_span_label(span))
    if span.model_call:
        _add_model_call(node, span, show_think)
    if span.verification:
        v = span.verification
        style = VERDICT_STYLES.get(v.verdict, "")
        node.add(Text.assemble((f"{VERDICT_MARKS.get(v.verdict, '?')} {v.verdict}", style),
                               f"  {v.detail}" if v.detail else "", (f"  ({v.verifier})" if v.verifier else "", "dim")))
    if span.reward:
        r = span.reward
        parts = ", ".join(f"{name}={_num(value)}" for name, value in r.components.items())
        node.add(Text.assemble(("reward ", "dim"), (_num(r.total), "bold"), f"  ({parts})" if parts else "",
                               ("  advantage ", "dim"), _num(r.advantage)))
    if span.attributes:
        node.add(Text(", ".join(f"{k}={v}" for k, v in span.attributes.items()), style="dim"))
    for child in span.children:
        _add_span(node, child, show_think)


def trace_tree(trace: Trace, show_think: bool = False) -> Tree:
    trace = printable_trace(trace)
    header = Text.assemble((f"trace {trace.id}", "bold"), "  ", (trace.source, "cyan"), " · ", trace.task,
                           " · ", trace.model or "no model", " · ", trace.created.strftime("%Y-%m-%d %H:%M:%S UTC"))
    tree = Tree(header)
    facts = Text.assemble(("correct ", "dim"), correct_text(trace.correct), ("  reward ", "dim"), _num(trace.reward))
    if trace.metadata:
        facts.append("  " + ", ".join(f"{k}={v}" for k, v in trace.metadata.items()), style="dim")
    tree.add(facts)
    if trace.prompt:
        tree.add(Text.assemble(("prompt: ", "bold"), _clip(trace.prompt)))
    for span in trace.spans:
        _add_span(tree, span, show_think)
    return tree


def _facts(trace: Trace) -> dict[str, str]:
    calls = trace.model_calls()
    think_chars = sum(len(call.think or "") for call in calls)
    answer, status = final_answer(trace)
    return {
        "id": trace.id[:12], "source": trace.source, "task": trace.task, "model": trace.model or "–",
        "created": trace.created.strftime("%Y-%m-%d %H:%M"), "correct": str(trace.correct),
        "reward": _num(trace.reward), "model calls": str(len(calls)),
        "completion tokens": "–" if trace.completion_tokens is None else str(trace.completion_tokens),
        "think chars": str(think_chars),
        "answer": (_clip(answer, 120) or "–") + (f"  ({status})" if status else ""),
    }


def highlighted_diff(a: str, b: str) -> tuple[Text, Text]:
    """Both texts with what differs marked: removed from A in red, added in B in green (underlined, so the
    marks survive without colour)."""
    left, right = Text(), Text()
    for tag, part_a, part_b in diff_segments(a, b):
        if tag == "equal":
            left.append(part_a)
            right.append(part_b)
        else:
            left.append(part_a, style="bold red underline")
            right.append(part_b, style="bold green underline")
    return left, right


def diff_view(a: Trace, b: Trace, show_think: bool = False) -> Group:
    """A facts table (differences in yellow; the final answers and completions with the differing words
    marked) above both span trees side by side."""
    a, b = printable_trace(a), printable_trace(b)
    facts_a, facts_b = _facts(a), _facts(b)
    facts = Table(title="A vs B", header_style="bold")
    for name in ("", "A", "B"):
        facts.add_column(name, overflow="fold")
    for key in facts_a:
        if key == "answer" and facts_a[key] != facts_b[key]:
            facts.add_row(key, *highlighted_diff(facts_a[key], facts_b[key]))
            continue
        style = "yellow" if facts_a[key] != facts_b[key] and key not in ("id", "created") else ""
        facts.add_row(key, Text(facts_a[key], style=style), Text(facts_b[key], style=style))
    text_a, text_b = trace_text(a), trace_text(b)
    if text_a != text_b:
        facts.add_row("text", *highlighted_diff(_clip(text_a, 1500), _clip(text_b, 1500)))
    if a.prompt != b.prompt:
        facts.caption = "note: the two traces have different prompts"
    trees = Table.grid(expand=True, padding=(0, 2))
    trees.add_column(ratio=1)
    trees.add_column(ratio=1)
    trees.add_row(trace_tree(a, show_think), trace_tree(b, show_think))
    return Group(facts, trees)
