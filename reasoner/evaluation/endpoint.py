"""A model behind any OpenAI-compatible endpoint (vLLM, SGLang, `reasoner serve`, an API), scored as a local
checkpoint is: the same prompts, the same graders, the same pass@1 / maj@K / pass@K and per-problem rows as
`reasoner.evaluation.checkpoints.evaluate`.

Requests go out `concurrency` at a time. Transport errors, timeouts, 5xx, 408 and 429 are retried with
exponential backoff (counted); other 4xx are not. A problem whose requests keep failing is recorded as an
error row, never ends the run; after `stop_after` failed problems in a row (the server is gone) the run stops
and says so. Each finished problem is appended to the output JSON-lines file at once (flushed and fsynced),
so a rerun of the same command skips the problems already there (keyed by id) and retries the failed ones.
The settings a result depends on are kept beside it, in `<output>.settings.json`; a rerun with other settings
is refused, naming each difference.
"""
from __future__ import annotations

import json
import os
import queue
import random
import re
import socket
import threading
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from reasoner.errors import ReasonerError
from reasoner.evaluation.grading import grade_many
from reasoner.evaluation.metrics import Metric, bootstrap, voted_completion
from reasoner.files import write_json_atomically, write_jsonl_atomically
from reasoner.serving.backends import Backend, BackendError, Sampling
from reasoner.progress import printable, progress
from reasoner.prompts import recipe_style, render
from reasoner.tasks.base import Problem

MAX_N_PER_REQUEST = 16   # `reasoner serve` takes at most 16 choices a request; more are split over requests
RETRY_HTTP = {408, 425, 429}
# settings a result depends on: a rerun must match each; base_url is kept for the record (a restarted
# server on another port is the same model)
CHECKED = ("served_model", "task", "split", "level", "seed", "samples", "temperature", "max_new_tokens",
           "prompt_style")


def prompt_messages(question: str, style: str = "plain") -> list[dict]:
    """The chat messages a checkpoint trained with the recipe's `task.prompt_style` saw (plain or r1)."""
    return render("solve", recipe_style(style), question=question)


def problem_seed(seed: int, problem_id: str) -> int:
    """A request seed per problem, stable across reruns and problem counts (not the problem's position)."""
    return (seed * 1_000_003 + zlib.crc32(problem_id.encode())) % (1 << 31)


def settings_path(output: Path) -> Path:
    return output.with_name(output.name + ".settings.json")


def list_models(base_url: str, api_key: str | None = None, timeout: float = 15.0) -> list[str] | None:
    """The model names the server lists at /models, None when it lists none; a ReasonerError when nothing
    answers at `base_url` (the one-line error a user sees for a wrong URL or a server that is down)."""
    if not re.match(r"https?://", base_url):
        raise ReasonerError(f"--base-url must start with http:// or https://, e.g. http://127.0.0.1:8000/v1; "
                            f"got {base_url!r}")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    request = urllib.request.Request(base_url.rstrip("/") + "/models", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read())
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise ReasonerError(f"{base_url}: HTTP {err.code} {err.reason}: give the key with --api-key "
                                "(or $OPENAI_API_KEY)") from None
        return None  # something answers; it just does not list models
    except (TimeoutError, socket.timeout):
        raise ReasonerError(f"cannot reach {base_url}: no answer within {timeout:g}s") from None
    except urllib.error.URLError as err:
        raise ReasonerError(f"cannot reach {base_url}: {err.reason}; is the server running there?") from None
    except (ValueError, UnicodeDecodeError):
        return None
    except OSError as err:
        raise ReasonerError(f"cannot reach {base_url}: {err}") from None
    data = reply.get("data") if isinstance(reply, dict) else None
    names = [m.get("id") for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)] \
        if isinstance(data, list) else []
    return names or None


def retryable(err: BackendError) -> bool:
    """Transport errors, timeouts, replies that are not JSON, 5xx, 408, 425, 429: yes. Other 4xx: the request
    itself is wrong (a prompt longer than the context, an unknown model) and would fail again."""
    match = re.search(r": HTTP (\d{3}) ", str(err))
    if match is None:
        return True
    code = int(match.group(1))
    return code >= 500 or code in RETRY_HTTP


@dataclass
class EndpointReport:
    metrics: dict[str, Metric]
    n: int                  # problems asked for
    graded: int             # problems with results (this run and earlier ones)
    resumed: int            # of those, found in the output file from an earlier run
    errors: dict[str, str] = field(default_factory=dict)   # problem id -> why its requests failed
    requests: int = 0       # HTTP requests sent this run, retries included
    retries: int = 0        # requests resent after a transport error, 5xx or 429
    stopped: str | None = None   # why the run stopped before every problem was asked, if it did

    @property
    def complete(self) -> bool:
        return self.graded == self.n


class _Stopped(Exception):
    pass


def evaluate_endpoint(backend: Backend, problems: Sequence[Problem], output: Path, *, samples: int = 1,
                      temperature: float = 0.0, max_new_tokens: int = 96, prompt_style: str = "plain",
                      seed: int = 0, settings: dict | None = None, base_url: str | None = None,
                      concurrency: int = 8, retries: int = 4, backoff: float = 0.5, max_backoff: float = 30.0,
                      stop_after: int | None = None, description: str | None = None) -> EndpointReport:
    """K completions per problem from `backend` (an OpenAIBackend), graded and scored as `evaluate` does.

    `settings` (task, split, level) join the sampling settings in the sidecar file that a rerun must match.
    """
    if samples < 1 or concurrency < 1 or retries < 0:
        raise ReasonerError("samples and concurrency must be at least 1, retries at least 0")
    if samples > 1 and temperature == 0:
        temperature = 1.0  # as evaluate(): K identical greedy samples would make maj@K and pass@K meaningless
    output = Path(output)
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise ReasonerError("the problems' ids are not unique; results are keyed by id")
    messages = {p.id: prompt_messages(p.question, prompt_style) for p in problems}
    wanted = {"served_model": getattr(backend, "name", None), "samples": samples, "temperature": temperature,
              "max_new_tokens": max_new_tokens, "prompt_style": prompt_style, "seed": seed,
              "task": None, "split": None, "level": None, **(settings or {})}
    rows = _open_output(output, wanted, base_url)
    finished = {i for i, row in rows.items() if "error" not in row}
    pending = [p for p in problems if p.id not in finished]
    asker = _Asker(backend, messages, Sampling(temperature=temperature, top_p=1.0, max_tokens=max_new_tokens),
                   samples, seed, retries, backoff, max_backoff)
    recorder = _Recorder(output, rows, samples, stop_after or max(5, 2 * concurrency), asker.stop)
    _ask_all(asker, pending, concurrency, recorder, description)
    write_jsonl_atomically(output, [rows[p.id] for p in problems if p.id in rows]
                           + [row for i, row in rows.items() if i not in messages])
    graded = [rows[p.id] for p in problems if p.id in rows and "error" not in rows[p.id]]
    keys = ["pass@1"] + ([f"maj@{samples}", f"pass@{samples}"] if samples > 1 else [])
    return EndpointReport({key: bootstrap([r[key] for r in graded]) for key in keys}, n=len(problems),
                          graded=len(graded), resumed=sum(p.id in finished for p in problems),
                          errors=recorder.errors, requests=asker.requests, retries=asker.retries,
                          stopped=recorder.stopped)


class _Asker:
    """One problem's K completions, in requests of at most MAX_N_PER_REQUEST, each seeded from the problem id;
    transport errors, 5xx and 429 retried with jittered exponential backoff. Asks nothing once `stop` is set."""

    def __init__(self, backend: Backend, messages: dict[str, list[dict]], sampling: Sampling, samples: int,
                 seed: int, retries: int, backoff: float, max_backoff: float):
        self.backend, self.messages, self.sampling, self.samples, self.seed = backend, messages, sampling, samples, seed
        self.attempts, self.backoff, self.max_backoff = retries + 1, backoff, max_backoff
        self.stop, self._lock = threading.Event(), threading.Lock()
        self.requests = self.retries = 0

    def answer(self, problem: Problem) -> tuple[Problem, list[str] | None, str | None]:
        """(problem, texts, None), (problem, None, error), or (problem, None, None) when the run stopped first."""
        try:
            return problem, self.texts(problem), None
        except _Stopped:
            return problem, None, None
        except BackendError as err:
            return problem, None, str(err)
        except Exception as err:  # a bug or an odd reply: this problem's error, not the run's end
            return problem, None, f"{type(err).__name__}: {err}"

    def texts(self, problem: Problem) -> list[str]:
        texts, base = [], problem_seed(self.seed, problem.id)
        for chunk, start in enumerate(range(0, self.samples, MAX_N_PER_REQUEST)):
            n, sampling = min(MAX_N_PER_REQUEST, self.samples - start), replace(self.sampling, seed=base + chunk)
            texts += [g.text for g in self._generate(self.messages[problem.id], n, sampling)]
        return texts

    def _generate(self, messages: list[dict], n: int, sampling: Sampling):
        for attempt in range(self.attempts):
            if self.stop.is_set():
                raise _Stopped
            with self._lock:
                self.requests += 1
            try:
                return self.backend.generate(messages, n, sampling)
            except BackendError as err:
                if attempt == self.attempts - 1 or not retryable(err):
                    raise
                with self._lock:
                    self.retries += 1
                if self.stop.wait(min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2)):
                    raise _Stopped from None


class _Recorder:
    """Each answered problem's row, appended to the output at once (flushed, fsynced); after `stop_after` failed
    problems in a row it sets `stop` and says why."""

    def __init__(self, output: Path, rows: dict[str, dict], samples: int, stop_after: int, stop: threading.Event):
        self.output, self.rows, self.samples, self.stop_after, self.stop = output, rows, samples, stop_after, stop
        self.errors: dict[str, str] = {}
        self.stopped: str | None = None
        self.in_a_row = 0

    def record(self, sink, problem: Problem, texts: list[str] | None, error: str | None) -> None:
        if texts is None and error is None:
            return  # not asked: the run is stopping
        if error is not None:
            self.errors[problem.id] = error
            row = {"id": problem.id, "question": problem.question, "gold": problem.answer, "error": error}
            self.in_a_row += 1
            if self.in_a_row >= self.stop_after and not self.stop.is_set():
                self.stop.set()
                self.stopped = (f"stopped after {self.in_a_row} problems in a row failed; the last: "
                                f"{printable(error, keep_layout=False)[:300]}")
        else:
            self.in_a_row = 0
            row = _row(problem, texts, self.samples)
        self.rows[problem.id] = row
        sink.write(json.dumps(row) + "\n")
        sink.flush()
        os.fsync(sink.fileno())


def _ask_all(asker: _Asker, pending: list[Problem], concurrency: int, recorder: _Recorder, description) -> None:
    """`concurrency` problems in flight; each result recorded as it comes. Ctrl-C (or a stop) lets no worker
    ask anything more, and does not wait for requests in flight (daemon threads): what finished is on disk."""
    todo, done = queue.SimpleQueue(), queue.SimpleQueue()
    for problem in pending:
        todo.put(problem)

    def work():
        while True:
            try:
                problem = todo.get_nowait()
            except queue.Empty:
                return
            done.put(asker.answer(problem))  # after a stop: (problem, None, None) at once

    for i in range(min(concurrency, len(pending))):
        threading.Thread(target=work, daemon=True, name=f"eval-endpoint-{i}").start()
    try:
        with open(recorder.output, "a", encoding="utf-8") as sink:
            for _ in progress(range(len(pending)), description, total=len(pending)):
                recorder.record(sink, *done.get())
    finally:
        asker.stop.set()


def _row(problem: Problem, texts: list[str], samples: int) -> dict:
    """The per-problem row `evaluate` writes, with the same keys and grading."""
    correct = grade_many([problem] * samples, texts)
    voted_right = grade_many([problem], [voted_completion(problem.kind, texts)])[0]
    return {"id": problem.id, "question": problem.question, "gold": problem.answer,
            "completions": texts, "correct": correct, "pass@1": sum(correct) / len(correct),
            f"pass@{samples}": float(any(correct)), f"maj@{samples}": float(voted_right)}


def _open_output(output: Path, wanted: dict, base_url: str | None) -> dict[str, dict]:
    """Rows already in `output` by id (the last row of an id wins), after checking they were made with the
    wanted settings; writes the settings file for a new output. Drops a line torn by a killed run."""
    sidecar = settings_path(output)
    rows: dict[str, dict] = {}
    if output.exists() and output.stat().st_size:
        if not sidecar.exists():
            raise ReasonerError(f"{output} holds results but no {sidecar.name}, so its settings are unknown (a "
                                "local `reasoner eval` writes such files); choose another --output or delete it")
        try:
            stored = json.loads(sidecar.read_text())
        except (ValueError, OSError) as err:
            raise ReasonerError(f"{sidecar} is unreadable ({err}); delete it and {output} to start over") from None
        different = [f"{key} {stored.get(key)!r} there, {wanted.get(key)!r} now" for key in CHECKED
                     if stored.get(key) != wanted.get(key)]
        if different:
            raise ReasonerError(f"{output} holds results made with other settings ({'; '.join(different)}); "
                                "rerun with the same settings to resume, or choose another --output")
        torn = False
        for line in output.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                torn = True
                continue
            if isinstance(row, dict) and isinstance(row.get("id"), str):
                rows[row["id"]] = row
        if torn or not output.read_bytes().endswith(b"\n"):
            write_jsonl_atomically(output, list(rows.values()))
        if base_url and stored.get("base_url") not in (None, base_url):
            stored["base_url_history"] = [*stored.get("base_url_history", []), stored["base_url"]]
            stored["base_url"] = base_url
            write_json_atomically(sidecar, stored)
        return rows
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(sidecar, {**{k: wanted.get(k) for k in CHECKED}, "base_url": base_url})
    output.write_text("")
    return rows


