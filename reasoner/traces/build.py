"""One-line builders for writers: GRPO rollouts, pipeline runs, evaluations."""
from __future__ import annotations

import contextlib
import contextvars
import time
from typing import Any, Iterator, Mapping, Sequence

from reasoner.traces.model import ModelCall, Reward, Span, Trace, Verification, finite_or_none, split_think


def model_call_span(prompt: str, completion: str, *, model: str | None = None, prompt_tokens: int | None = None,
                    completion_tokens: int | None = None, latency_s: float | None = None,
                    sampling: Mapping[str, Any] | None = None, name: str = "generate",
                    start: float | None = None, **attributes: Any) -> Span:
    """A model call; the `<think>` text is split from the answer here, once."""
    think, answer = split_think(completion)
    call = ModelCall(prompt=prompt, completion=completion, think=think, answer=answer, model=model,
                     prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     latency_s=latency_s, sampling=dict(sampling or {}))
    end = start + latency_s if start is not None and latency_s is not None else None
    return Span(kind="model_call", name=name, start=start, end=end, model_call=call, attributes=attributes)


def _verdict(verdict: bool | str | None) -> str:
    if verdict is None:
        return "unknown"
    if isinstance(verdict, bool):
        return "pass" if verdict else "fail"
    return verdict


def verification_span(verdict: bool | str | None, detail: str = "", *, verifier: str | None = None,
                      name: str = "verify", **attributes: Any) -> Span:
    """verdict: True/False, None (unknown) or one of 'pass', 'fail', 'error', 'unknown'."""
    return Span(kind="verification", name=name, attributes=attributes,
                verification=Verification(_verdict(verdict), detail, verifier))


def reward_span(total: float | None = None, components: Mapping[str, float | None] | None = None, *,
                advantage: float | None = None, name: str = "reward", **attributes: Any) -> Span:
    """Reward components by reward-function name; total defaults to their sum."""
    components = {key: finite_or_none(value) for key, value in (components or {}).items()}
    if total is None and components:
        total = sum(value for value in components.values() if value is not None)
    return Span(kind="reward", name=name, attributes=attributes,
                reward=Reward(finite_or_none(total), components, finite_or_none(advantage)))


def node_span(name: str, *children: Span, kind: str = "node", **attributes: Any) -> Span:
    return Span(kind=kind, name=name, children=list(children), attributes=attributes)


def rollout_trace(*, prompt: str, completion: str, rewards: Mapping[str, float | None], step: int,
                  advantage: float | None = None, correct: bool | None = None, task: str,
                  model: str | None = None, total_reward: float | None = None, source: str = "train",
                  verdict_detail: str = "", prompt_tokens: int | None = None,
                  completion_tokens: int | None = None, sampling: Mapping[str, Any] | None = None,
                  metadata: Mapping[str, Any] | None = None) -> Trace:
    """One GRPO rollout: a training-step span holding the model call, verification and reward."""
    reward = reward_span(total_reward, rewards, advantage=advantage)
    children = [model_call_span(prompt, completion, model=model, prompt_tokens=prompt_tokens,
                                completion_tokens=completion_tokens, sampling=sampling)]
    if correct is not None:
        children.append(verification_span(correct, verdict_detail))
    children.append(reward)
    step_span = node_span(f"GRPO step {step}", *children, kind="step", step=step)
    return Trace(source=source, task=task, model=model, prompt=prompt, correct=correct,
                 reward=reward.reward.total, metadata={"step": step, **(metadata or {})}, spans=[step_span])


def rollout_traces(*, prompts: Sequence[str], completions: Sequence[str],
                   rewards: Mapping[str, Sequence[float | None]], step: int,
                   advantages: Sequence[float] | None = None, correct: Sequence[bool | None] | None = None,
                   task: str | Sequence[str], model: str | None = None,
                   metadata: Mapping[str, Any] | None = None, **common: Any) -> list[Trace]:
    """A whole GRPO step from the parallel lists TRL keeps (rewards: name -> one value per rollout)."""
    count = len(completions)
    tasks = [task] * count if isinstance(task, str) else list(task)
    return [
        rollout_trace(prompt=prompts[i], completion=completions[i], step=step, task=tasks[i], model=model,
                      rewards={name: values[i] for name, values in rewards.items()},
                      advantage=advantages[i] if advantages is not None else None,
                      correct=correct[i] if correct is not None else None,
                      metadata={"index": i, **(metadata or {})}, **common)
        for i in range(count)
    ]


class TraceRecorder:
    """Builds one trace with nested, timed spans, e.g. for a LangGraph solve:

        rec = TraceRecorder("pipeline", task="math", model="tiny-moe", prompt=problem)
        with rec.span("plan"):
            rec.add(model_call_span(p, out, latency_s=0.4))
        rec.add(verification_span(True, "42 == 42"))
        store.add(rec.finish(correct=True))

    Nesting follows a context variable, so parallel branches (threads, asyncio tasks) each nest
    under the span that was open where they started.
    """

    def __init__(self, source: str, *, task: str, model: str | None = None, prompt: str | None = None,
                 metadata: Mapping[str, Any] | None = None):
        self.trace = Trace(source=source, task=task, model=model, prompt=prompt, metadata=dict(metadata or {}))
        self._current: contextvars.ContextVar[Span | None] = contextvars.ContextVar("reasoner_span", default=None)

    def add(self, span: Span, parent: Span | None = None) -> Span:
        """Attach a finished span under `parent`, else under the currently open span (or at top level)."""
        parent = parent or self._current.get()
        (parent.children if parent else self.trace.spans).append(span)
        return span

    @contextlib.contextmanager
    def span(self, name: str, kind: str = "node", *, parent: Span | None = None,
             **attributes: Any) -> Iterator[Span]:
        """Open a timed span; an exception marks it as an error and propagates.

        Plain threads start with an empty context: pass `parent=` to nest their spans explicitly.
        """
        span = self.add(Span(kind=kind, name=name, start=time.time(), attributes=attributes), parent)
        token = self._current.set(span)
        try:
            yield span
            span.status = "ok"
        except BaseException as err:
            span.status, span.error = "error", f"{type(err).__name__}: {err}"
            raise
        finally:
            span.end = time.time()
            self._current.reset(token)

    def finish(self, *, correct: bool | None = None, reward: float | None = None, **metadata: Any) -> Trace:
        self.trace.correct, self.trace.reward = correct, finite_or_none(reward)
        self.trace.metadata.update(metadata)
        return self.trace
