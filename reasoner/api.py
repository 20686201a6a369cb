"""The Python API: `Reasoner.from_pretrained(path).solve("37+48*3-25")`.

A Reasoner holds a backend and a compiled solving graph checkpointed to SQLite. Each solve is one
run (its id is also its trace id): interrupted runs can be resumed and their history listed. A run's
input is made by the graph's `run_input` and its result read by `read_result`; nothing here knows the
graph's state.

Prompts are rendered in the style the model reads (reasoner.prompts): a checkpoint of ours in its recipe's
style (compact, or r1), a server behind `from_openai` in the chat style; `prompt_style=` overrides either.
"""
from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from langgraph.checkpoint.sqlite import SqliteSaver

from reasoner.errors import ReasonerError
from reasoner.model import is_checkpoint, read_run_metadata
from reasoner.pipeline import recording
from reasoner.pipeline.graph import RunContext, RunResult, build_graph, read_result, run_input
from reasoner.pipeline.options import SolveOptions
from reasoner.prompts import recipe_style
from reasoner.serving.backends import LocalBackend, OpenAIBackend
from reasoner.tasks.base import Question
from reasoner.traces.store import default_store_path

KINDS = ("math", "countdown", "code")  # what the pipeline solves: an answer, a certified proposal, a program
MAX_PROBLEM_CHARS = 50_000
CHECKPOINT_FILENAME = "pipeline.db"


@dataclass
class SolutionStep:
    id: int
    question: str       # with earlier results substituted
    answer: str | None
    verified: bool
    status: str
    attempts: int


@dataclass
class Solution:
    problem: str
    answer: str | None
    verified: bool
    steps: list[SolutionStep]
    trace_id: str
    status: str  # verified | unverified (nothing could check it) | rejected (a check failed) | failed | timeout
    error: str | None = None         # why there is no answer, when there is none
    decomposed: bool = False
    events: list[str] = field(default_factory=list)  # fallbacks taken: repair failed, backend errors
    elapsed_s: float = 0.0
    samples_drawn: int = 0           # model completions the run drew, planner calls included

    @property
    def run_id(self) -> str:
        return self.trace_id

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        """`26  (verified)`; a multi-line answer (code) gets its status on a line of its own."""
        if self.answer is None:
            return f"(no answer: {self.error})  ({self.status})"
        return f"{self.answer}{chr(10) if chr(10) in self.answer else '  '}({self.status})"

    def __repr__(self) -> str:
        return (f"Solution(answer={self.answer!r}, status={self.status!r}, verified={self.verified}, "
                f"steps={len(self.steps)}, trace_id={self.trace_id!r}, elapsed_s={self.elapsed_s})")


def default_checkpoint_path() -> Path:
    return default_store_path().with_name(CHECKPOINT_FILENAME)


class Reasoner:
    def __init__(self, backend, *, checkpoints: str | Path | None = None, traces: str | Path | None = None,
                 **options: Any):
        self.backend = backend
        self.defaults = SolveOptions.of(**options)
        self.checkpoint_path = Path(checkpoints) if checkpoints else default_checkpoint_path()
        self.traces = traces
        self._graph = None

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> "Reasoner":
        """A local checkpoint directory (save_pretrained layout), asked in its recipe's prompt style."""
        if not is_checkpoint(path):
            raise ReasonerError(f"{path}: not a checkpoint directory (no config.json)")
        kwargs.setdefault("prompt_style", checkpoint_prompt_style(path))
        return cls(LocalBackend.from_pretrained(path), **kwargs)

    @classmethod
    def from_openai(cls, base_url: str, model: str, api_key: str | None = None, *, timeout: float = 120.0,
                    **kwargs: Any) -> "Reasoner":
        """Any OpenAI-compatible chat-completions server, e.g. http://127.0.0.1:8000/v1; an instruction-tuned
        model behind it is told in words what plan and answer to write (the chat prompt style)."""
        kwargs.setdefault("prompt_style", "chat")
        if not base_url.startswith(("http://", "https://")):
            raise ReasonerError(f"base_url {base_url!r}: expected http://host:port/v1")
        return cls(OpenAIBackend(base_url, model, api_key, timeout), **kwargs)

    # ------------------------------------------------------------ solving

    def solve(self, problem: str | Question, *, task: str | None = None, reference: str | None = None,
              tests: list[str] | str | None = None, entry_point: str | None = None, run_id: str | None = None,
              progress: Callable[[dict], None] | None = None, cancel: threading.Event | None = None,
              **options: Any) -> Solution:
        """Solve one problem. `reference`: a known answer to verify against (leave it out when
        measuring); `tests`/`entry_point`: for code (one test may be given as a string; tests imply
        task='code'); `progress`: called with each progress event; `cancel`: once set (from any thread),
        the run starts no new model call and ends with what it has, as at its time budget. A `Question`
        (what a task's `Problem.for_solver()` gives) brings its own kind, shown examples and entry point."""
        if isinstance(problem, Question):
            problem, task, tests, entry_point = problem.text, problem.kind, list(problem.examples), problem.entry_point
        task, reference, tests = _check_arguments(task, reference, tests, entry_point, run_id, progress, cancel)
        _check_problem(problem, task)
        opts = self.defaults.of(**{**self.defaults.to_dict(), **options})
        inputs = run_input(Question(problem, task, tuple(tests), entry_point), opts, reference)
        return self._run(inputs, run_id or uuid.uuid4().hex, opts.time_budget, progress, cancel)

    def solve_many(self, problems: Iterable[Any], **options: Any) -> list[Solution]:
        """Problems are strings, Questions, or task Problems, of which the solver gets only `for_solver()`:
        the text and the examples it shows, never the answer or the hidden tests."""
        return [self.solve(p if isinstance(p, (str, Question)) else p.for_solver(), **options) for p in problems]

    def resume(self, run_id: str, progress: Callable[[dict], None] | None = None,
               cancel: threading.Event | None = None) -> Solution:
        """Continue an interrupted run from its last checkpoint (a finished run is just returned)."""
        saved = self._result(run_id)
        if saved is None:
            raise ReasonerError(f"no run {run_id!r} in {self.checkpoint_path}")
        return self._run(None, run_id, saved.options.time_budget, progress, cancel)

    def finished(self, run_id: str, elapsed_s: float = 0.0) -> Solution | None:
        """A finished run's solution, read without running or recording anything; None if it has not finished."""
        result = self._result(run_id)
        return None if result is None or result.status is None else _solution(result, run_id, elapsed_s)

    def history(self, run_id: str) -> list[dict]:
        """The run's checkpoints, oldest first: step, the nodes due next, time."""
        snapshots = list(self.graph.get_state_history(self._config(run_id)))
        if not snapshots:
            raise ReasonerError(f"no run {run_id!r} in {self.checkpoint_path}")
        return [{"step": s.metadata.get("step"), "next": list(s.next), "created": s.created_at,
                 "checkpoint_id": s.config["configurable"]["checkpoint_id"]} for s in reversed(snapshots)]

    def runs(self) -> list[str]:
        """Ids of every run in the checkpoint file, most recent first."""
        latest: dict[str, str] = {}
        for saved in self.graph.checkpointer.list(None):
            run_id = saved.config["configurable"]["thread_id"]
            latest[run_id] = max(latest.get(run_id, ""), saved.checkpoint["ts"])
        return sorted(latest, key=latest.get, reverse=True)

    # ------------------------------------------------------------ internals

    @property
    def graph(self):
        if self._graph is None:
            self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(str(self.checkpoint_path), check_same_thread=False)
            self._graph = build_graph(SqliteSaver(connection))
        return self._graph

    @staticmethod
    def _config(run_id: str) -> dict:
        return {"configurable": {"thread_id": run_id}, "recursion_limit": 1000}

    def _result(self, run_id: str) -> RunResult | None:
        return read_result(self.graph.get_state(self._config(run_id)).values)

    def _run(self, inputs: dict | None, run_id: str, time_budget: float, progress, cancel=None) -> Solution:
        config, started = self._config(run_id), time.perf_counter()
        context = RunContext(self.backend, deadline=time.time() + time_budget, cancel=cancel)
        for _, event in self.graph.stream(inputs, config, context=context, stream_mode="custom", subgraphs=True,
                                          durability="sync"):
            if progress:
                progress(event)
        result = self._result(run_id)
        elapsed = time.perf_counter() - started
        trace_id = recording.write_trace(result, run_id=run_id, model=self.backend.name, store_path=self.traces,
                                         elapsed_s=elapsed)
        return _solution(result, trace_id, elapsed)

    def close(self) -> None:
        if self._graph is not None:
            self._graph.checkpointer.conn.close()
            self._graph = None

    def __enter__(self) -> "Reasoner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_arguments(task, reference, tests, entry_point, run_id, progress,
                     cancel=None) -> tuple[str, str | None, list[str]]:
    """Reasoner.solve's arguments, checked before anything runs: (task, reference, tests)."""
    if isinstance(tests, str):
        tests = [tests]  # one test, not a sequence of one-character tests
    elif tests is None:
        tests = []
    elif isinstance(tests, (list, tuple)):
        tests = list(tests)
    else:
        raise ReasonerError(f"tests: expected a list of assert statements, got {type(tests).__name__}")
    for i, test in enumerate(tests):
        if not isinstance(test, str):
            raise ReasonerError(f"tests[{i}]: expected an assert statement as text, got {type(test).__name__}")
        _check_text(test, f"tests[{i}]")
    if task is None:
        task = "code" if tests else "math"
    elif task == "math" and tests:
        raise ReasonerError("tests are for code problems: pass task='code' (or leave task out)")
    if isinstance(reference, (int, float)) and not isinstance(reference, bool):
        reference = str(reference)
    for name, value in (("reference", reference), ("entry_point", entry_point), ("run_id", run_id)):
        if value is not None and not isinstance(value, str):
            raise ReasonerError(f"{name}: expected text, got {type(value).__name__}")
        if value is not None:
            _check_text(value, name)
    if entry_point and not all(part.isidentifier() for part in entry_point.split(".")):
        raise ReasonerError(f"entry_point {entry_point!r}: expected a Python function name")
    if run_id is not None and not run_id.strip():
        raise ReasonerError("run_id is empty")
    if progress is not None and not callable(progress):
        raise ReasonerError(f"progress: expected a function, got {type(progress).__name__}")
    if cancel is not None and not callable(getattr(cancel, "is_set", None)):
        raise ReasonerError(f"cancel: expected a threading.Event, got {type(cancel).__name__}")
    return task, reference, tests


def _check_text(text: str, what: str) -> None:
    """Text that can be stored and sent on: lone surrogates (what Python makes of bytes that are not UTF-8,
    in argv or a file read with surrogateescape) are rejected here rather than failing mid-run."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ReasonerError(f"{what} is not valid UTF-8 text: undecodable character {text[err.start]!r} at "
                            f"position {err.start}") from None


def _check_problem(problem: Any, task: str) -> None:
    if not isinstance(problem, str):
        raise ReasonerError(f"a problem is text, got {type(problem).__name__}")
    _check_text(problem, "the problem")
    if not problem.strip():
        raise ReasonerError("the problem is empty")
    if len(problem) > MAX_PROBLEM_CHARS:
        raise ReasonerError(f"the problem is {len(problem):,} characters; the limit is {MAX_PROBLEM_CHARS:,}")
    if task not in KINDS:
        raise ReasonerError(f"task {task!r}: expected one of {', '.join(KINDS)}")


def checkpoint_prompt_style(path: str | Path) -> str:
    """The prompt style a checkpoint was trained with (its recipe's, saved beside it); compact when none was saved."""
    recipe = read_run_metadata(path).get("recipe") or {}
    return recipe_style((recipe.get("task") or {}).get("prompt_style", "plain"))


def _solution(result: RunResult, trace_id: str, elapsed: float) -> Solution:
    steps = [SolutionStep(s["id"], s["question"], s["answer"], s["verified"], s["status"], s["attempts"])
             for s in result.steps]
    return Solution(problem=result.problem, answer=result.answer, verified=result.verified, steps=steps,
                    trace_id=trace_id, status=result.status or "failed", error=result.error,
                    decomposed=result.decomposed, events=result.events, elapsed_s=round(elapsed, 3),
                    samples_drawn=result.drawn)
