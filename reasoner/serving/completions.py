"""A chat completion, whole or streamed as Server-Sent Events, from the batcher or from the pipeline model.

Work happens off the event loop (the batcher's worker, or a thread for a pipeline run); `Events` brings what
it reports back onto the loop, and gives the request's slot back with the last event.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

from reasoner.errors import ReasonerError
from reasoner.serving.batcher import Batcher, Job, Row
from reasoner.serving.guards import Slot
from reasoner.serving.pipeline_model import PipelineModel, progress_line
from reasoner.serving.reasoning import ReasoningStream, split_reasoning
from reasoner.serving.schemas import (AssistantMessage, ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice,
                                      Delta, error_body, usage)
from reasoner.sampling import Sampling

FINAL = ("done", "error", "cancelled", "solved")


class Events:
    """Events from a worker thread, queued on the event loop; the slot is given back with the last one."""

    def __init__(self, slot: Slot):
        self.loop, self.queue, self.slot = asyncio.get_running_loop(), asyncio.Queue(), slot

    def notify(self, kind: str, payload) -> None:   # called from the worker thread
        self.loop.call_soon_threadsafe(self._deliver, kind, payload)

    def _deliver(self, kind: str, payload) -> None:
        if kind in FINAL:
            self.slot.release()
        self.queue.put_nowait((kind, payload))

    async def final(self):
        async for kind, payload in self.until_final():
            if kind in FINAL:
                return kind, payload

    async def until_final(self):
        """(kind, payload) as they come, the final one last."""
        while True:
            kind, payload = await self.queue.get()
            yield kind, payload
            if kind in FINAL:
                return


# ---------------------------------------------------------------- the model


class ModelCompletion:
    """One request to the served model: its job in the batcher, and the response built from its rows."""

    def __init__(self, batcher: Batcher, chat: ChatRequest, model: str, prompt_ids: list[int], sampling: Sampling,
                 deadline: float, slot: Slot):
        self.chat, self.model, self.prompt_tokens = chat, model, len(prompt_ids)
        self.events = Events(slot)
        self.job = batcher.submit(Job(prompt_ids, chat.n, sampling, deadline, self.events.notify, chat.stream))

    async def whole(self) -> ChatResponse:
        try:
            kind, rows = await self.events.final()
        finally:
            self.job.cancel()
        if kind == "error":
            raise rows
        choices = [Choice(index=i, message=_message(row.text), finish_reason=row.finish_reason)
                   for i, row in enumerate(rows)]
        return ChatResponse(model=self.model, choices=choices, usage=self._usage(rows))

    async def stream(self) -> AsyncIterator[str]:
        chunks = Chunks(self.model)
        parsers = [ReasoningStream() for _ in range(self.chat.n)]
        try:
            yield chunks.sse([ChunkChoice(index=i, delta=Delta(role="assistant")) for i in range(self.chat.n)])
            async for kind, payload in self.events.until_final():
                if kind == "delta":
                    yield chunks.sse([_delta(i, *parsers[i].feed(text)) for i, text in payload])
                elif kind == "done":
                    yield chunks.sse([_delta(i, *parser.finish()) for i, parser in enumerate(parsers)])
                    yield chunks.sse([ChunkChoice(index=i, delta=Delta(), finish_reason=row.finish_reason)
                                      for i, row in enumerate(payload)])
                    if self.chat.include_usage:
                        yield chunks.sse([], usage=self._usage(payload))
                else:
                    yield sse_error(payload)
            yield "data: [DONE]\n\n"
        finally:
            self.job.cancel()  # a client that went away frees its rows at the next segment

    def _usage(self, rows: list[Row]):
        return usage(self.prompt_tokens, sum(len(row.tokens) for row in rows))


def _message(text: str) -> AssistantMessage:
    reasoning, content = split_reasoning(text)
    return AssistantMessage(content=content, reasoning_content=reasoning)


def _delta(index: int, reasoning: str, content: str) -> ChunkChoice:
    return ChunkChoice(index=index, delta=Delta(reasoning_content=reasoning or None, content=content or None))


class Chunks:
    """The chunks of one streamed response: one id and creation time, in SSE framing."""

    def __init__(self, model: str):
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model

    def sse(self, choices: list[ChunkChoice], **extra) -> str:
        choices = [c for c in choices if c.finish_reason or any(c.delta.model_dump(exclude_none=True).values())]
        if not choices and not any(extra.values()):
            return ""
        chunk = ChatChunk(id=self.id, created=self.created, model=self.model, choices=choices, **extra)
        data = chunk.model_dump(exclude_none=True)
        for choice in data["choices"]:
            choice.setdefault("finish_reason", None)
        return f"data: {json.dumps(data)}\n\n"


def sse_error(err) -> str:
    """An error after the stream began (its status was already 200): an OpenAI error body as the last event."""
    if isinstance(err, ReasonerError):  # e.g. the pipeline refused the problem: the client's to fix
        return f"data: {json.dumps(error_body(str(err), 'invalid_request_error', 400))}\n\n"
    return f"data: {json.dumps(error_body('the model failed on this request', 'server_error', 500))}\n\n"


# ---------------------------------------------------------------- the pipeline


class PipelineCompletion:
    """One request to the pipeline model: a `Reasoner.solve` run in a thread, its progress as reasoning."""

    def __init__(self, pipeline: PipelineModel, pool: ThreadPoolExecutor, chat: ChatRequest, slot: Slot):
        self.pipeline, self.chat = pipeline, chat
        self.events = Events(slot)
        self.cancel = threading.Event()  # the client went away: the run stops asking the model
        self.events.loop.run_in_executor(pool, self._solve)

    def _solve(self) -> None:
        try:
            solution = self.pipeline.solve(self.chat, lambda event: self.events.notify("progress", event),
                                           self.cancel)
            self.events.notify("solved", (solution, self.pipeline.trace_text(solution.trace_id)))
        except Exception as err:
            self.events.notify("error", err)

    async def whole(self) -> ChatResponse:
        try:
            kind, payload = await self.events.final()
        finally:
            self.cancel.set()  # done already, or the client left (the server cancels this coroutine)
        if kind == "error":
            raise payload
        solution, trace = payload
        choice = Choice(index=0, message=AssistantMessage(content=solution.answer or "", reasoning_content=trace),
                        finish_reason="stop")
        return ChatResponse(model=self.chat.model, choices=[choice], usage=usage(0, 0), trace_id=solution.trace_id,
                            solution=_summary(solution))

    async def stream(self) -> AsyncIterator[str]:
        chunks = Chunks(self.chat.model)
        try:
            yield chunks.sse([ChunkChoice(index=0, delta=Delta(role="assistant"))])
            async for kind, payload in self.events.until_final():
                if kind == "progress":
                    yield chunks.sse([_delta(0, progress_line(payload), "")])
                elif kind == "solved":
                    solution, trace = payload
                    yield chunks.sse([_delta(0, "\n" + trace, solution.answer or "")])
                    yield chunks.sse([ChunkChoice(index=0, delta=Delta(), finish_reason="stop")],
                                     trace_id=solution.trace_id, solution=_summary(solution))
                else:
                    yield sse_error(payload)
            yield "data: [DONE]\n\n"
        finally:
            self.cancel.set()  # a client that went away stops the run at its next model call


def _summary(solution) -> dict:
    return {"answer": solution.answer, "status": solution.status, "verified": solution.verified,
            "trace_id": solution.trace_id, "error": solution.error}
