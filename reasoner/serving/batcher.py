"""Dynamic batching: requests that arrive together are decoded together, in one call to the model.

One worker thread owns the model. When a request arrives it waits `window` seconds more for others (up to
`max_rows` rows in all), then decodes in segments of `segment_tokens` tokens. A segment is one
`LocalBackend.generate_ids` call over the unfinished rows of a group: rows that may share a call are greedy ones,
or sampled ones with the same settings and no seed; a seeded sampled request runs alone, so its text does not
depend on what else was running. Between segments finished and cancelled requests leave, waiting ones join,
and every request is told its new text. A streamed request is also told within a segment, at each token the
model samples. A segment resumes from the prompt plus the tokens so far, so a streamed completion and a whole
one are the same text at the same seed.
"""
from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from reasoner.generation import Output, cut_at_stop
from reasoner.sampling import Sampling
from reasoner.serving.backends import Backend, BackendError, Generation, LocalBackend

log = logging.getLogger(__name__)

SEED_STRIDE = 7919  # segment k of a seeded request samples with seed + k * SEED_STRIDE


@dataclass
class Row:
    """One completion being decoded."""

    prompt_ids: list[int]
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    sent: int = 0  # characters of text already told to the caller
    pending: list[int] = field(default_factory=list)  # this segment's tokens so far (streamed requests)


class Job:
    """One request: n rows with the same prompt and settings. `notify(kind, payload)` hears about it:
    ("delta", [(row, text)...]) after each segment, then one of ("done", [Row]), ("error", exception) or
    ("cancelled", None)."""

    _ids = itertools.count()

    def __init__(self, prompt_ids: list[int], n: int, sampling: Sampling, deadline: float | None,
                 notify: Callable[[str, object], None], stream: bool = False):
        self.rows = [Row(list(prompt_ids)) for _ in range(n)]
        self.sampling, self.deadline, self.notify, self.stream = sampling, deadline, notify, stream
        self.cancelled = False
        self.segments = 0
        self.id = next(self._ids)

    def cancel(self) -> None:
        """The caller has gone (a closed stream): the worker drops this job before its next segment."""
        self.cancelled = True

    @property
    def done(self) -> bool:
        return all(row.finish_reason for row in self.rows)

    def group_key(self) -> tuple:
        s = self.sampling
        if s.greedy:
            return ("greedy", s.stop)
        if s.seed is not None:
            return ("alone", self.id)
        return ("sampled", s.temperature, s.top_p, s.top_k, s.stop)

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


class Batcher:
    def __init__(self, backend: LocalBackend, *, window: float = 0.01, max_rows: int = 64,
                 segment_tokens: int = 16):
        self.backend, self.window, self.max_rows, self.segment_tokens = backend, window, max_rows, segment_tokens
        self._pending: collections.deque[Job] = collections.deque()
        self._active: list[Job] = []
        self._wake = threading.Condition()
        self._stopped = False
        self.calls = 0  # model calls made: tests and the benchmark read it
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Job:
        with self._wake:
            self._pending.append(job)
            self._wake.notify()
        return job

    def close(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------ the worker

    def _run(self) -> None:
        while self._admit():
            self._drop_cancelled()
            for jobs in self._groups():
                try:
                    self._segment(jobs)
                except Exception as err:  # told to each caller; the worker goes on with the others
                    log.exception("batched generation failed")
                    for job in jobs:
                        _finish_all(job, "error")
                        _tell(job, "error", err)
            self._active = [job for job in self._active if not job.done]

    def _drop_cancelled(self) -> None:
        for job in self._active:
            if job.cancelled:
                _tell(job, "cancelled", None)
        self._active = [job for job in self._active if not job.cancelled]

    def _groups(self) -> list[list[Job]]:
        """Active jobs by what may share a model call."""
        groups = collections.defaultdict(list)
        for job in self._active:
            groups[job.group_key()].append(job)
        return list(groups.values())

    def _admit(self) -> bool:
        """Move waiting jobs in (after the collection window when idle); False once closed."""
        with self._wake:
            if not self._active:
                self._wake.wait_for(lambda: self._pending or self._stopped)
                end = time.monotonic() + self.window
                while self._rows(self._pending) < self.max_rows and not self._stopped \
                        and self._wake.wait(max(0.0, end - time.monotonic())):
                    pass
            while self._pending and (not self._active or
                                     self._rows(self._active) + len(self._pending[0].rows) <= self.max_rows):
                self._active.append(self._pending.popleft())
            return not self._stopped

    @staticmethod
    def _rows(jobs) -> int:
        return sum(len(job.rows) for job in jobs)

    def _segment(self, jobs: list[Job]) -> None:
        """One model call over the unfinished rows of jobs that share sampling settings."""
        now = time.monotonic()
        for job in jobs:
            if job.expired(now):
                _finish_all(job, "length")
        live = [(job, row) for job in jobs for row in job.rows if not row.finish_reason]
        if live:
            for (job, row), output in zip(live, self._call(jobs, live, now)):
                self._advance(job, row, output)
        for job in jobs:
            job.segments += 1
            self._publish(job)

    def _call(self, jobs, live, now) -> list[Output]:
        first = jobs[0].sampling
        left = max(job.sampling.max_tokens - len(row.tokens) for job, row in live)
        seed = None if first.seed is None else (first.seed + jobs[0].segments * SEED_STRIDE) % (1 << 63)
        sampling = replace(first, max_tokens=min(self.segment_tokens, left), seed=seed)
        deadlines = [job.deadline for job in jobs if job.deadline is not None]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        self.calls += 1
        on_tokens = (lambda rows, tokens: self._stream(live, rows, tokens)) \
            if any(job.stream for job in jobs) else None
        return self.backend.generate_ids([row.prompt_ids + row.tokens for _, row in live], sampling, 1, timeout,
                                         on_tokens)

    def _stream(self, live, rows: list[int], tokens: list[int]) -> None:
        """Within a segment: each streamed request hears the text its rows' new tokens add."""
        touched: dict[int, tuple[Job, set[int]]] = {}  # job id -> (job, ids of its rows that got a token)
        for i, token in zip(rows, tokens):
            job, row = live[i]
            if job.stream:
                row.pending.append(token)
                touched.setdefault(job.id, (job, set()))[1].add(id(row))
        for job, grown in touched.values():  # only those rows' text is decoded again
            deltas = [(i, text) for i, row in enumerate(job.rows)
                      if id(row) in grown and (text := _new_text(job, row, self._text(job, row)))]
            if deltas:
                _tell(job, "delta", deltas)

    def _text(self, job: Job, row: Row) -> str:
        """The row's text with this segment's tokens so far, within its budget, before any stop string."""
        tokens = (row.tokens + row.pending)[:job.sampling.max_tokens]
        return cut_at_stop(self.backend.decode(tokens), job.sampling.stop)[0]

    def _advance(self, job: Job, row: Row, output: Output) -> None:
        left = job.sampling.max_tokens - len(row.tokens)
        row.tokens += output.token_ids[:left]
        row.pending = []
        row.text, stopped = cut_at_stop(self.backend.decode(row.tokens), job.sampling.stop)
        ended = output.finish_reason == "stop" and len(output.token_ids) <= left  # EOS within its budget
        if stopped or ended:
            row.finish_reason = "stop"
        elif len(row.tokens) >= job.sampling.max_tokens or job.expired(time.monotonic()):
            row.finish_reason = "length"

    def _publish(self, job: Job) -> None:
        deltas = [(i, text) for i, row in enumerate(job.rows) if (text := _new_text(job, row))]
        if deltas:
            _tell(job, "delta", deltas)
        if job.done:
            _tell(job, "done", job.rows)


def _new_text(job: Job, row: Row, text: str | None = None) -> str:
    """Text not yet told (of `text`, default the row's text at the last segment's end); an unfinished row keeps
    back what could still become a stop string or a whole character (a byte-level token may end mid-character)."""
    visible = row.text if text is None else text
    if not row.finish_reason:
        hold = max((len(s) - 1 for s in job.sampling.stop), default=0)
        visible = visible[:len(visible) - hold].rstrip("\ufffd")
    new = visible[row.sent:]
    row.sent = max(row.sent, len(visible))
    return new


def _finish_all(job: Job, reason: str) -> None:
    for row in job.rows:
        row.finish_reason = row.finish_reason or reason


def _tell(job: Job, kind: str, payload) -> None:
    try:
        job.notify(kind, payload)
    except Exception:  # a caller whose event loop has closed (server shutdown) must not stop the worker
        log.debug("could not notify job %s", job.id, exc_info=True)


class BatchedBackend(Backend):
    """The Backend interface over a batcher: the pipeline model's calls join the server's batches."""

    def __init__(self, batcher: Batcher):
        self.batcher, self.name = batcher, batcher.backend.name

    def generate(self, messages, n, sampling, timeout=None):
        local = self.batcher.backend
        prompt, ids = local.encode(messages)
        sampling = replace(sampling, max_tokens=local.room(len(ids), sampling.max_tokens))
        answers: queue.Queue = queue.Queue()
        deadline = None if timeout is None else time.monotonic() + timeout
        start = time.perf_counter()
        self.batcher.submit(Job(ids, n, sampling, deadline, lambda kind, payload: answers.put((kind, payload))))
        kind, payload = answers.get()
        while kind == "delta":
            kind, payload = answers.get()
        if kind == "error":
            raise BackendError(f"generation failed: {payload}")
        latency = time.perf_counter() - start
        return [Generation(row.text, row.finish_reason, prompt, latency, len(ids), len(row.tokens)) for row in payload]
