"""`reasoner traces ui`: a local web app over the trace store (FastAPI + uvicorn, bound to 127.0.0.1).

One page (ui.html) and a JSON API; every list is one indexed SQL query with LIMIT/OFFSET, so a store of
100,000 traces lists as fast as one of 100 (benchmarks/traces.py times it over HTTP).

    GET /api/facets                         sources, tasks, models and runs for the filter menus
    GET /api/traces?source&run&task&correct&min_reward&max_reward&q&page&page_size
    GET /api/traces/{id}                    the trace, its final answer, waterfall and GRPO group (if any)
    GET /api/traces/{id}/group              the k rollouts of its prompt in that step, side by side
    GET /api/traces/{id}/same-problem       other traces of the same prompt (other checkpoints, other runs)
    GET /api/compare?a=ID&b=ID              two traces with their differing text marked
"""
from __future__ import annotations

import threading
from importlib import resources
from typing import Any

from reasoner.traces.model import Trace
from reasoner.traces.store import RUN_EXPR, TraceFilter, TraceNotFound, TraceStore, TraceStoreError
from reasoner.traces.views import diff_segments, final_answer, question_text, trace_text, waterfall

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
GROUP_LIMIT = 64


def open_for_ui(path) -> TraceStore:
    """Writable when it can be (so the run/group indexes get created on older stores), else read-only."""
    try:
        return TraceStore.open(path, create=False)
    except TraceStoreError as err:
        if "read-only" in str(err) or "cannot be written" in str(err) or "readonly" in str(err):
            return TraceStore.open(path, read_only=True)
        raise


def _summary(row) -> dict:
    meta = row.metadata or {}
    return {"id": row.id, "source": row.source, "task": row.task, "model": row.model,
            "created": row.created.isoformat(timespec="seconds"), "correct": row.correct, "reward": row.reward,
            "tokens": row.completion_tokens, "question": question_text(row.preview)[:200],
            "run": meta.get("run"), "step": meta.get("step"), "group": meta.get("group")}


def _rollout_parts(trace: Trace) -> dict:
    """A rollout's completion, think, answer, reward parts and advantage (from its reward span)."""
    calls = trace.model_calls()
    call = calls[-1] if calls else None
    reward = next((span.reward for _, span in trace.walk() if span.reward), None)
    answer, status = final_answer(trace)
    return {"id": trace.id, "correct": trace.correct, "reward": trace.reward,
            "advantage": reward.advantage if reward else None,
            "components": dict(reward.components) if reward else {},
            "completion": call.completion if call else "", "think": call.think if call else None,
            "answer": answer, "status": status, "tokens": trace.completion_tokens,
            "index": trace.metadata.get("index")}


def _group_filter(trace: Trace) -> dict | None:
    """Metadata that picks out this rollout's GRPO group: the recorded group id, else (older rollouts)
    the step and problem of a training trace."""
    meta = trace.metadata or {}
    if meta.get("group") is not None:
        found = {"group": meta["group"]}
        if meta.get("run") is not None:
            found["run"] = meta["run"]
        return found
    if trace.source == "train" and meta.get("step") is not None and meta.get("problem_id") is not None:
        return {"step": meta["step"], "problem_id": meta["problem_id"]}
    return None


def create_app(store_path=None):
    from fastapi import FastAPI, HTTPException, Query
    from fastapi.responses import HTMLResponse

    store = open_for_ui(store_path)
    lock = threading.Lock()  # one SQLite connection: queries take turns (each is milliseconds)
    page = resources.files(__package__).joinpath("ui.html").read_text("utf-8")
    app = FastAPI(title="reasoner traces", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store

    def get(trace_id: str) -> Trace:
        try:
            with lock:
                return store.get(trace_id)
        except TraceNotFound as err:
            raise HTTPException(404, str(err)) from None

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page.replace("__STORE__", _html_escape(str(store.path)))

    @app.get("/api/facets")
    def facets() -> dict:
        with lock:
            return {"store": str(store.path), "total": store.count(),
                    "sources": store.distinct("source"), "tasks": store.distinct("task"),
                    "models": store.distinct("model"), "runs": store.distinct(RUN_EXPR)}

    @app.get("/api/traces")
    def list_traces(source: str | None = None, run: str | None = None, task: str | None = None,
                    model: str | None = None, correct: str | None = None,
                    min_reward: float | None = None, max_reward: float | None = None, q: str | None = None,
                    sort: str = "created", asc: bool = False, page: int = Query(1, ge=1),
                    page_size: int = Query(PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)) -> dict:
        verdict = {"true": True, "1": True, "correct": True, "false": False, "0": False, "wrong": False}
        trace_filter = TraceFilter(
            source=source or None, run=run or None, task=task or None, model=model or None,
            correct=verdict.get((correct or "").lower()), min_reward=min_reward, max_reward=max_reward,
            text=q or None, sort=sort, descending=not asc, limit=page_size, offset=(page - 1) * page_size)
        try:
            with lock:
                total = store.count(trace_filter)
                rows = store.summaries(trace_filter)
        except Exception as err:  # a bad sort key
            raise HTTPException(400, str(err)) from None
        return {"total": total, "page": page, "page_size": page_size, "items": [_summary(r) for r in rows]}

    @app.get("/api/traces/{trace_id}")
    def detail(trace_id: str) -> dict:
        trace = get(trace_id)
        answer, status = final_answer(trace)
        group = _group_filter(trace)
        size = None
        if group:
            with lock:
                size = store.count(metadata=group)
        return {"trace": trace.to_dict(), "question": question_text(trace.prompt), "answer": answer,
                "status": status, "waterfall": waterfall(trace), "group": group, "group_size": size}

    @app.get("/api/traces/{trace_id}/group")
    def group(trace_id: str) -> dict:
        trace = get(trace_id)
        found = _group_filter(trace)
        if not found:
            raise HTTPException(404, f"trace {trace.id} is not a GRPO rollout with a recorded group")
        with lock:
            members = store.query(metadata=found, limit=GROUP_LIMIT, sort="created", descending=False)
        members.sort(key=lambda t: (t.metadata.get("index") is None, t.metadata.get("index") or 0, t.created))
        return {"group": found, "question": question_text(trace.prompt), "prompt": trace.prompt,
                "step": trace.metadata.get("step"), "run": trace.metadata.get("run"),
                "gold": trace.metadata.get("gold"), "rollouts": [_rollout_parts(t) for t in members]}

    @app.get("/api/traces/{trace_id}/same-problem")
    def same_problem(trace_id: str) -> dict:
        trace = get(trace_id)
        with lock:
            rows = store._fetch(  # noqa: SLF001 - preview is the indexed one-line prompt
                "SELECT id, model, source, correct, reward, created FROM traces WHERE preview = "
                "(SELECT preview FROM traces WHERE id = ?) AND id != ? ORDER BY created DESC LIMIT 50",
                [trace.id, trace.id])
        return {"items": [{"id": r[0], "model": r[1], "source": r[2], "correct": None if r[3] is None else bool(r[3]),
                           "reward": r[4]} for r in rows]}

    @app.get("/api/compare")
    def compare(a: str, b: str) -> dict:
        first, second = get(a), get(b)
        sides = []
        for trace in (first, second):
            answer, status = final_answer(trace)
            sides.append({"id": trace.id, "model": trace.model, "source": trace.source, "task": trace.task,
                          "correct": trace.correct, "reward": trace.reward, "answer": answer, "status": status,
                          "question": question_text(trace.prompt), "run": trace.metadata.get("run")})
        return {"a": sides[0], "b": sides[1], "same_prompt": first.prompt == second.prompt,
                "answer_diff": diff_segments(sides[0]["answer"], sides[1]["answer"]),
                "text_diff": diff_segments(trace_text(first), trace_text(second))}

    return app


def _html_escape(text: str) -> str:
    from html import escape

    return escape(text)


def serve(store_path=None, *, host: str = "127.0.0.1", port: int = 8765, log=print) -> None:
    import uvicorn

    app = create_app(store_path)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    original = server.startup

    async def startup(*args: Any, **kwargs: Any) -> None:
        await original(*args, **kwargs)
        for listener in server.servers:
            for sock in listener.sockets:
                bound_host, bound_port = sock.getsockname()[:2]
                log(f"trace UI for {app.state.store.path}: http://{bound_host}:{bound_port}/  (Ctrl-C stops it)")

    server.startup = startup
    server.run()
