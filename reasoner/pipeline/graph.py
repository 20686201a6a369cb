"""The solving graph.

The rule (also in the README): at solve time the pipeline uses only what a user has: the problem's text,
the examples the problem itself shows, and tools applied to what the model wrote (the calculator on a
plan step the model wrote, the sandbox running the model's program on the shown examples, the certificate
checker on a proposed countdown expression). It never uses a gold answer, hidden tests, or an evaluation
of the user's own question. `reference=` is checked only when a caller passes one.

    START -> plan -> schedule --Send per ready step--> solve_step -> schedule ... -> answer -> END

`plan` (math) draws k plans in one batched call: JSON lists of steps, e.g. `["7+5","{}-4","{}+3*2"]`.
Plans whose steps are all arithmetic are computed by the calculator, and the answer is the majority over
plans (self-consistency); with no clear majority another k are drawn, up to `retries` times. A plan with
steps in words goes to `solve_step` per step. Countdown and code are solved whole.
`schedule` fans out, with `Send`, every step whose dependencies are solved, their results substituted.
`solve_step` is a subgraph per sub-problem:

    START -> sample -> verify -> vote --failed, budget left--> reflect -> sample
                                     \\-> finish -> END

`sample` draws k answers in one batched call; `verify` records a verdict per answer (pipeline/checks.py);
`vote` takes the majority over the answers that passed; `reflect` retries, with the failure fed back
when `feedback` is on.

The backend and the deadline come in the run context; everything else is state, so a run checkpointed
by the SQLite saver resumes where it stopped and still yields one complete trace.

The graph declares what goes in and what comes out (`RunInput`, `RunOutput`): `run_input` makes a run's
input from a Question and its options, and `read_result` reads a run's output into a `RunResult`. Callers
(the Python API, the trace recorder) use those two and nothing else of the state.
"""
from __future__ import annotations

import operator
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any, Mapping, TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send
from typing_extensions import TypedDict as SchemaDict  # pydantic's JSON schema needs it before Python 3.12

from reasoner.pipeline import checks, recording
from reasoner.pipeline.options import SolveOptions
from reasoner.pipeline.plans import PlanError, Step, parse_plan, ready_steps, substitute
from reasoner.prompts import render
from reasoner.serving.backends import Backend, BackendError, Generation
from reasoner.tasks.base import Question
from reasoner.verify import answer_of, answers_equal, calculate, majority, same_text


def merge(left: dict | None, right: dict | None) -> dict:
    return {**(left or {}), **(right or {})}


@dataclass
class RunContext:
    backend: Backend
    deadline: float  # time.time() after which no new retries or steps start
    cancel: threading.Event | None = None  # set by the caller (e.g. a client that went away): spent at once

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def remaining(self) -> float:
        """Seconds left; none once cancelled, so the run winds up as at its deadline: no new model calls,
        the answer from what it has, one complete trace."""
        return 0.0 if self.cancelled() else self.deadline - time.time()


class RunInput(SchemaDict):
    """What a run starts from (run_input makes it): the question as a user has it, and the options."""
    problem: str
    task: str                     # "math", "countdown" or "code" (a Question's kind)
    reference: str | None         # a known answer to check against, when the caller has one
    tests: list[str]              # code: the examples the problem shows, as asserts
    entry_point: str | None
    options: dict                 # SolveOptions.to_dict(): in the state, so a resume uses the same


class RunOutput(SchemaDict, total=False):
    """What a run yields (read_result reads it)."""
    problem: str
    task: str
    options: dict
    plan: list[dict]
    results: dict[str, dict]
    decomposed: bool
    answer: str | None
    verified: bool
    status: str
    error: str | None
    events: list[str]
    drawn: int
    spans: list[dict]


class RunState(TypedDict, total=False):
    problem: str
    task: str
    reference: str | None
    tests: list[str]
    entry_point: str | None
    options: dict
    plan: list[dict]
    decomposed: bool
    votes: dict                   # plan voting: {"answer", "votes", "plans"} when plans were computed
    results: Annotated[dict[str, dict], merge]  # step id -> {question, answer, verified, status, error}
    drawn: Annotated[int, operator.add]         # model completions drawn, planner calls included
    spans: Annotated[list[dict], operator.add]
    events: Annotated[list[str], operator.add]
    answer: str | None
    verified: bool
    status: str                   # verified | unverified (nothing could check it) | rejected | failed | timeout
    error: str | None


@dataclass(frozen=True)
class RunResult:
    """A run's output, as its callers need it."""
    problem: str
    task: str
    options: SolveOptions
    planned: int                  # steps in the plan
    steps: list[dict]             # the solved ones: {id, question (results written in), answer, verified, status, attempts}
    answer: str | None
    verified: bool
    status: str | None            # verified | unverified | rejected | failed | timeout; None: not finished
    error: str | None
    decomposed: bool
    events: list[str]
    drawn: int                    # model completions drawn, planner calls included
    spans: list[dict]             # the trace's spans, as plain dicts (pipeline/recording.py)


def run_input(question: Question, options: SolveOptions, reference: str | None = None) -> RunInput:
    return {"problem": question.text.strip(), "task": question.kind, "reference": reference,
            "tests": list(question.examples), "entry_point": question.entry_point, "options": options.to_dict()}


def read_result(values: Mapping[str, Any]) -> RunResult | None:
    """The run's output from its saved state (graph.get_state(config).values); None when there is no run."""
    if not values:
        return None
    out: RunOutput = {key: values[key] for key in RunOutput.__annotations__ if key in values}
    plan, results = out.get("plan") or [], out.get("results") or {}
    steps = [{"id": step["id"], **{k: r[k] for k in ("question", "answer", "verified", "status", "attempts")}}
             for step in plan if (r := results.get(str(step["id"])))]
    return RunResult(problem=out["problem"], task=out.get("task", "math"), options=SolveOptions(**out["options"]),
                     planned=len(plan), steps=steps, answer=out.get("answer"), verified=bool(out.get("verified")),
                     status=out.get("status"), error=out.get("error"), decomposed=bool(out.get("decomposed")),
                     events=list(out.get("events") or ()), drawn=int(out.get("drawn") or 0),
                     spans=list(out.get("spans") or ()))


class StepState(TypedDict, total=False):
    step_id: str
    question: str
    task: str
    model_written: bool           # a plan step: the calculator may check answers to it
    reference: str | None
    tests: list[str]
    entry_point: str | None
    options: dict
    attempt: int
    feedback: dict | None         # the failed answer and why, for reflect
    samples: list[dict]           # this attempt's answers: text, answer, finish_reason, verdict
    chosen: dict
    started: float
    step_spans: Annotated[list[dict], operator.add]
    results: Annotated[dict[str, dict], merge]
    drawn: Annotated[int, operator.add]
    spans: Annotated[list[dict], operator.add]
    events: Annotated[list[str], operator.add]


class StepOutput(TypedDict, total=False):
    results: Annotated[dict[str, dict], merge]
    drawn: Annotated[int, operator.add]
    spans: Annotated[list[dict], operator.add]
    events: Annotated[list[str], operator.add]


def progress(**event: Any) -> None:
    """Live progress for `stream_mode="custom"` (the CLI prints it); a no-op when nobody listens."""
    get_stream_writer()(event)


def _options(state) -> SolveOptions:
    return SolveOptions(**state["options"])


def _ask(runtime: Runtime[RunContext], messages: list[dict], n: int, sampling) -> list[Generation]:
    remaining = runtime.context.remaining()
    if remaining <= 0:
        raise BackendError("the run was cancelled" if runtime.context.cancelled() else "the time budget is spent")
    return runtime.context.backend.generate(messages, n, sampling, timeout=remaining)


# ---------------------------------------------------------------- plan


def plan(state: RunState, runtime: Runtime[RunContext]) -> dict:
    options, started = _options(state), time.time()
    if state.get("task") != "math":
        return _direct(state, [], started, f"{state.get('task')}: solved whole")
    if not options.decompose:
        return _direct(state, [], started, "decomposition off")
    progress(node="plan", problem=state["problem"])
    spans, plans, drawn = [], [], 0
    for attempt in range(options.retries + 1):
        try:
            messages = render("plan", options.prompt_style, problem=state["problem"])
            generations = _ask(runtime, messages, options.samples, options.sampling(attempt))
        except BackendError as err:
            spans.append(recording.event("plan", str(err), attempt=attempt))
            break
        drawn += len(generations)
        spans += recording.model_calls(generations, options.sampling(attempt).to_dict(),
                                       runtime.context.backend.name, name="plan")
        plans += [_read_plan(g.text) for g in generations]
        if _settled(plans) or runtime.context.remaining() <= 0:
            break
        progress(node="replan", problem=state["problem"], attempt=attempt + 1)
    return _choose_plan(state, plans, spans, started, drawn)


def _read_plan(text: str) -> dict:
    """A sampled plan: its steps, and each step's value when the calculator can compute them all."""
    try:
        steps = parse_plan(text)
    except PlanError as err:
        return {"steps": None, "error": str(err)}
    values: dict[str, str] = {}
    for step in steps:
        value = calculate(substitute(step.q, values))
        if value is None:
            return {"steps": steps, "values": None}
        values[str(step.id)] = value
    return {"steps": steps, "values": values, "answer": values[str(steps[-1].id)]}


def _settled(plans: list[dict]) -> bool:
    """A strict majority of the computed plans agree on the answer (or no plan could be computed)."""
    answers = [p["answer"] for p in plans if p.get("values")]
    if not answers:
        return False
    return Counter(answers).most_common(1)[0][1] * 2 > len(answers)


def _choose_plan(state: RunState, plans: list[dict], spans: list[dict], started: float, drawn: int) -> dict:
    computed = [p for p in plans if p.get("values")]
    if computed:
        answer, votes = majority([p["answer"] for p in computed])
        chosen = next(p for p in computed if p["answer"] == answer)
        results = {sid: {"question": substitute(step.q, chosen["values"]), "answer": chosen["values"][sid],
                         "status": "computed", "verified": False, "attempts": 0, "error": None}
                   for step in chosen["steps"] if (sid := str(step.id))}
        vote = {"answer": answer, "votes": votes, "plans": len(plans), "computed": len(computed)}
        span = recording.node("plan", spans, started, steps=len(chosen["steps"]), **vote)
        progress(node="vote", answer=answer, votes=votes, samples=len(plans))
        return {"plan": [s.to_dict() for s in chosen["steps"]], "decomposed": True, "results": results,
                "votes": vote, "drawn": drawn, "spans": [span]}
    valid = [p for p in plans if p["steps"]]
    if valid:  # steps in words: the model solves each (the most common plan, by its text)
        texts = [str([s.q for s in p["steps"]]) for p in valid]
        chosen = valid[texts.index(Counter(texts).most_common(1)[0][0])]
        span = recording.node("plan", spans, started, steps=len(chosen["steps"]), plans=len(plans))
        return {"plan": [s.to_dict() for s in chosen["steps"]], "decomposed": True, "drawn": drawn, "spans": [span]}
    errors = Counter(p["error"] for p in plans).most_common(1)
    why = f"no valid plan in {len(plans)} samples" + (f" ({errors[0][0]})" if errors else "")
    return {**_direct(state, spans, started, why), "drawn": drawn}


def _direct(state: RunState, spans: list[dict], started: float, why: str) -> dict:
    """The whole problem as one step: for countdown and code, and when no plan is usable."""
    step = Step(1, state["problem"], ())
    return {"plan": [step.to_dict()], "decomposed": False, "events": [f"solving directly: {why}"],
            "spans": [recording.node("plan", spans, started, direct=True, reason=why)]}


# ---------------------------------------------------------------- fan-out


def schedule(state: RunState) -> dict:
    return {}


def dispatch(state: RunState, runtime: Runtime[RunContext]) -> list[Send] | str:
    """The next wave: every unsolved step whose inputs are known, with those inputs written in."""
    steps = [Step.from_dict(s) for s in state["plan"]]
    results = state.get("results") or {}
    if any(r["answer"] is None for r in results.values()) or len(results) == len(steps):
        return "answer"
    if runtime.context.remaining() <= 0:
        return "answer"
    values = {key: r["answer"] for key, r in results.items()}
    return [Send("solve_step", {
        "step_id": str(step.id), "question": substitute(step.q, values), "task": state["task"],
        "model_written": bool(state.get("decomposed")),
        "reference": state.get("reference") if not state.get("decomposed") else None,
        "tests": state.get("tests") or [], "entry_point": state.get("entry_point"), "options": state["options"],
        "attempt": 0, "feedback": None, "started": time.time()}) for step in ready_steps(steps, results)]


# ---------------------------------------------------------------- one sub-problem


def sample(state: StepState, runtime: Runtime[RunContext]) -> dict:
    options, attempt = _options(state), state["attempt"]
    progress(node="sample", step=state["step_id"], question=state["question"], attempt=attempt)
    feedback = state.get("feedback") if options.feedback else None
    messages = render("reflect", options.prompt_style, question=state["question"], **feedback) if feedback else \
        render("solve", options.prompt_style, question=state["question"])
    sampling = options.sampling(attempt)
    try:
        generations = _ask(runtime, messages, options.samples, sampling)
    except BackendError as err:
        return {"samples": [], "events": [f"step {state['step_id']}: {err}"],
                "step_spans": [recording.event("sample", str(err), attempt=attempt)]}
    samples = [{"text": g.text, "finish_reason": g.finish_reason, "answer": answer_of(g.text, state["task"])}
               for g in generations]
    calls = recording.model_calls(generations, sampling.to_dict(), runtime.context.backend.name)
    return {"samples": samples, "drawn": len(generations),
            "step_spans": [recording.node("sample", calls, attempt=attempt)]}


def verify(state: StepState) -> dict:
    options, samples = _options(state), []
    for item in state["samples"]:
        if options.verify:
            verdict = checks.check(state["task"], item["text"], item["answer"], state["question"],
                                   model_written=state.get("model_written", False), reference=state.get("reference"),
                                   tests=state.get("tests") or [], entry_point=state.get("entry_point"),
                                   finish_reason=item["finish_reason"])
        else:
            verdict = checks.verdict("unknown", "verification off", "none")
        samples.append({**item, "verdict": verdict})
    spans = [recording.verdict(s["verdict"], sample=i, answer=s["answer"]) for i, s in enumerate(samples)]
    return {"samples": samples, "step_spans": [recording.node("verify", spans, attempt=state["attempt"])]}


def vote(state: StepState) -> dict:
    """Majority over the answers that passed; over unverifiable ones when nothing could check them."""
    samples = [s for s in state["samples"] if s["answer"] is not None]
    by_verdict = {v: [s for s in samples if s["verdict"]["verdict"] == v] for v in ("pass", "unknown", "fail")}
    status, pool = next(((status, by_verdict[v]) for v, status in
                         (("pass", "verified"), ("unknown", "unverified"), ("fail", "failed")) if by_verdict[v]),
                        ("failed", []))
    same = answers_equal if state["task"] == "math" else same_text  # programs and expressions: as written
    answer, count = majority([s["answer"] for s in pool], same)
    failure = next((s for s in state["samples"] if s["verdict"]["verdict"] != "pass"), None)
    chosen = {"answer": answer, "status": status, "votes": count,
              "failure": {"answer": failure["answer"] or "(none)", "feedback": failure["verdict"]["detail"]}
              if failure and status == "failed" else None}
    span = recording.node("vote", [], answer=answer, outcome=status, votes=count, samples=len(state["samples"]),
                          verdicts=dict(Counter(s["verdict"]["verdict"] for s in state["samples"])))
    return {"chosen": chosen, "step_spans": [span]}


def after_vote(state: StepState, runtime: Runtime[RunContext]) -> str:
    failed = state["chosen"]["status"] == "failed"
    can_retry = state["attempt"] < _options(state).retries and runtime.context.remaining() > 0
    return "reflect" if failed and can_retry else "finish"


def reflect(state: StepState) -> dict:
    failure = state["chosen"]["failure"] or {"answer": "(none)", "feedback": "the model could not be asked"}
    progress(node="reflect", step=state["step_id"], question=state["question"], attempt=state["attempt"] + 1)
    span = recording.node("reflect", [], attempt=state["attempt"] + 1, **failure)
    return {"attempt": state["attempt"] + 1, "feedback": failure, "step_spans": [span]}


def finish(state: StepState, runtime: Runtime[RunContext]) -> dict:
    chosen = state["chosen"]
    events = []
    if chosen["status"] == "failed" and state["attempt"] < _options(state).retries:
        why = "the run was cancelled" if runtime.context.cancelled() else "time budget spent"
        events.append(f"step {state['step_id']}: {why}, retries stopped")
    error = None if chosen["answer"] is not None else _last_error(state)
    result = {"question": state["question"], "answer": chosen["answer"], "status": chosen["status"],
              "verified": chosen["status"] == "verified", "attempts": state["attempt"] + 1, "error": error}
    progress(node="solved", step=state["step_id"], question=state["question"], answer=chosen["answer"],
             status=chosen["status"])
    span = recording.node(f"step {state['step_id']}", state["step_spans"], state["started"], kind="step",
                          question=state["question"], answer=chosen["answer"], outcome=chosen["status"])
    return {"results": {state["step_id"]: result}, "spans": [span], "events": events}


def _last_error(state: StepState) -> str:
    errors = [s.get("error") for s in state["step_spans"] if s.get("error")]
    if errors:
        return errors[-1]
    failure = state["chosen"].get("failure")
    return failure["feedback"] if failure else "no answer"


def build_step_graph():
    builder = StateGraph(StepState, context_schema=RunContext, output_schema=StepOutput)
    for node in (sample, verify, vote, reflect, finish):
        builder.add_node(node)
    builder.add_edge(START, "sample")
    builder.add_edge("sample", "verify")
    builder.add_edge("verify", "vote")
    builder.add_conditional_edges("vote", after_vote, ["reflect", "finish"])
    builder.add_edge("reflect", "sample")
    builder.add_edge("finish", END)
    return builder.compile()


# ---------------------------------------------------------------- answer


def answer(state: RunState) -> dict:
    steps, results = state["plan"], state.get("results") or {}
    last = results.get(str(steps[-1]["id"]))
    if last is None or last["answer"] is None:
        unsolved = next((r for r in results.values() if r["answer"] is None), None)
        error = unsolved["error"] if unsolved else "the time budget ran out before every step was solved"
        status = "failed" if unsolved else "timeout"
        return {"answer": None, "verified": False, "status": status, "error": error,
                "spans": [recording.event("answer", error)]}
    status, spans = _status(state, last, [results[str(s["id"])]["status"] for s in steps]), []
    if state.get("decomposed") and state.get("reference") is not None:
        spans.append(recording.verdict(checks.check("math", "", last["answer"], state["problem"],
                                                    reference=state["reference"]), name="verify answer"))
    progress(node="answer", answer=last["answer"], status=status)
    return {"answer": last["answer"], "verified": status == "verified", "status": status, "error": None,
            "spans": [recording.node("answer", spans, answer=last["answer"], outcome=status)]}


def _status(state: RunState, last: dict, statuses: list[str]) -> str:
    """verified: a check of the whole problem passed (the shown examples, the certificate, the caller's
    reference). A plan's steps can each be right and the plan still wrong, so computed steps alone leave the
    answer unverified. rejected: a check failed, and the answer is the best remaining guess."""
    if "failed" in statuses:
        return "rejected"
    if state.get("decomposed"):
        if state.get("reference") is None:
            return "unverified"
        return "verified" if answers_equal(state["reference"], last["answer"]) else "rejected"
    return "verified" if last["status"] == "verified" else "unverified"


def build_graph(checkpointer=None):
    builder = StateGraph(RunState, context_schema=RunContext, input_schema=RunInput, output_schema=RunOutput)
    builder.add_node(plan)
    builder.add_node(schedule)
    builder.add_node("solve_step", build_step_graph())
    builder.add_node(answer)
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "schedule")
    builder.add_conditional_edges("schedule", dispatch, ["solve_step", "answer"])
    builder.add_edge("solve_step", "schedule")
    builder.add_edge("answer", END)
    return builder.compile(checkpointer=checkpointer)
