"""The solving graph.

    START -> plan -> schedule --Send per ready step--> solve_step -> schedule ... -> answer -> END

`plan` asks for sub-problems (validated JSON, one repair, else the problem is one direct step), then asks
again about the last step until it splits no further (so a planner taught on short problems plans long ones).
`schedule` fans out, with `Send`, every step whose dependencies are solved, their results substituted.
`solve_step` is a subgraph per sub-problem:

    START -> sample -> verify -> vote --failed, budget left--> reflect -> sample
                                     \\-> finish -> END

`sample` draws k answers in one batched call; `verify` records a verdict per answer; `vote` takes the
majority over verified answers; `reflect` feeds the failure back for a bounded retry.

The backend and the deadline come in the run context; everything else is state, so a run checkpointed
by the SQLite saver resumes where it stopped and still yields one complete trace.
"""
from __future__ import annotations

import operator
import time
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from reasoner.pipeline import checks, recording
from reasoner.pipeline.backends import Backend, BackendError, Generation, Sampling
from reasoner.pipeline.options import SolveOptions
from reasoner.pipeline.plans import PlanError, Step, expand, parse_plan, plan_messages, ready_steps, substitute
from reasoner.pipeline.prompts import render, user


def merge(left: dict | None, right: dict | None) -> dict:
    return {**(left or {}), **(right or {})}


@dataclass
class RunContext:
    backend: Backend
    deadline: float  # time.time() after which no new retries or steps start

    def remaining(self) -> float:
        return self.deadline - time.time()


class RunState(TypedDict, total=False):
    problem: str
    task: str                     # "math" or "code"
    reference: str | None         # a known answer to check against, when the caller has one
    tests: list[str]
    entry_point: str | None
    options: dict
    plan: list[dict]
    decomposed: bool
    fallback: bool                # the plan's answer failed the whole-problem check; solving directly
    results: Annotated[dict[str, dict], merge]  # step id -> {question, answer, verified, status, error}
    spans: Annotated[list[dict], operator.add]
    events: Annotated[list[str], operator.add]
    answer: str | None
    verified: bool
    status: str                   # verified | unverified (nothing could check it) | rejected | failed | timeout
    error: str | None


class StepState(TypedDict, total=False):
    step_id: str
    question: str
    task: str
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
    spans: Annotated[list[dict], operator.add]
    events: Annotated[list[str], operator.add]


class StepOutput(TypedDict, total=False):
    results: Annotated[dict[str, dict], merge]
    spans: Annotated[list[dict], operator.add]
    events: Annotated[list[str], operator.add]


def progress(**event: Any) -> None:
    """Live progress for `stream_mode="custom"` (the CLI prints it); a no-op when nobody listens."""
    get_stream_writer()(event)


def _options(state) -> SolveOptions:
    return SolveOptions(**state["options"])


# ---------------------------------------------------------------- plan


def plan(state: RunState, runtime: Runtime[RunContext]) -> dict:
    options, started = _options(state), time.time()
    if not options.decompose or state.get("task") != "math":
        return _direct(state, [], started, "decomposition off" if not options.decompose else "code: solved whole")
    progress(node="plan", problem=state["problem"])
    messages, spans = plan_messages(state["problem"]), []
    for attempt in ("plan", "repair"):
        try:
            text = _ask_planner(runtime, messages, options, spans, attempt)
        except BackendError as err:
            return _direct(state, spans, started, f"planner unavailable: {err}")
        try:
            steps = parse_plan(text)
        except PlanError as err:
            spans.append(recording.event(f"invalid {attempt}", str(err)))
            messages = [*messages, {"role": "assistant", "content": text}, *user(render("repair", error=str(err)))]
            continue
        steps = expand(steps, lambda question: _split(runtime, question, options, spans))
        plan_span = recording.node("plan", spans, started, steps=len(steps))
        return {"plan": [s.to_dict() for s in steps], "decomposed": True, "spans": [plan_span]}
    return _direct(state, spans, started, "no valid plan after one repair")


def _ask_planner(runtime: Runtime[RunContext], messages: list[dict], options: SolveOptions, spans: list[dict],
                 name: str) -> str:
    """One greedy planner call, recorded in `spans`; BackendError when the backend fails."""
    generation = _ask(runtime, messages, 1, Sampling(0.0, 1.0, options.max_tokens, options.seed))[0]
    spans += recording.model_calls([generation], {"temperature": 0.0}, runtime.context.backend.name, name=name)
    return generation.text


def _split(runtime: Runtime[RunContext], question: str, options: SolveOptions, spans: list[dict]) -> str | None:
    """One more planner call, about one step of the plan (see plans.expand); None ends the expansion."""
    try:
        return _ask_planner(runtime, plan_messages(question), options, spans, "split")
    except BackendError as err:
        spans.append(recording.event("split", str(err)))
        return None


def _direct(state: RunState, spans: list[dict], started: float, why: str) -> dict:
    """The whole problem as one step: the fallback for a missing or unusable plan."""
    step = Step(1, state["problem"], ())
    return {"plan": [step.to_dict()], "decomposed": False, "events": [f"solving directly: {why}"],
            "spans": [recording.node("plan", spans, started, direct=True, reason=why)]}


def _ask(runtime: Runtime[RunContext], messages: list[dict], n: int, sampling: Sampling) -> list[Generation]:
    remaining = runtime.context.remaining()
    if remaining <= 0:
        raise BackendError("the time budget is spent")
    return runtime.context.backend.generate(messages, n, sampling, timeout=remaining)


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
        "reference": state.get("reference") if step.q == state["problem"] else None, "tests": state.get("tests") or [],
        "entry_point": state.get("entry_point"), "options": state["options"], "attempt": 0,
        "feedback": None, "started": time.time()}) for step in ready_steps(steps, results)]


# ---------------------------------------------------------------- one sub-problem


def sample(state: StepState, runtime: Runtime[RunContext]) -> dict:
    options = _options(state)
    progress(node="sample", step=state["step_id"], question=state["question"], attempt=state["attempt"])
    feedback = state.get("feedback")
    content = render("reflect", question=state["question"], **feedback) if feedback else \
        render("solve", question=state["question"])
    try:
        generations = _ask(runtime, user(content), options.samples, options.sampling())
    except BackendError as err:
        return {"samples": [], "events": [f"step {state['step_id']}: {err}"],
                "step_spans": [recording.event("sample", str(err), attempt=state["attempt"])]}
    samples = [{"text": g.text, "finish_reason": g.finish_reason, "answer": _answer_of(g.text, state["task"])}
               for g in generations]
    calls = recording.model_calls(generations, options.sampling().to_dict(), runtime.context.backend.name)
    return {"samples": samples, "step_spans": [recording.node("sample", calls, attempt=state["attempt"])]}


def _answer_of(text: str, task: str) -> str | None:
    """The extracted answer; an empty one ("<answer></answer>") is no answer."""
    if task == "code":
        answer = checks.code_of(text)
    else:
        from reasoner.verify import extract_answer

        answer = extract_answer(text)
    return answer if answer and answer.strip() else None


def verify(state: StepState) -> dict:
    options, samples = _options(state), []
    for item in state["samples"]:
        if not options.verify:
            verdict = checks.verdict("unknown", "verification off", "none")
        elif state["task"] == "code":
            verdict = checks.check_code(item["text"], state["tests"], state.get("entry_point"))
        else:
            verdict = checks.check_math(item["answer"], state["question"], state.get("reference"),
                                        item["finish_reason"])
        samples.append({**item, "verdict": verdict})
    spans = [recording.verdict(s["verdict"], sample=i, answer=s["answer"]) for i, s in enumerate(samples)]
    return {"samples": samples, "step_spans": [recording.node("verify", spans, attempt=state["attempt"])]}


def vote(state: StepState) -> dict:
    """Majority over verified answers; over unverifiable ones when nothing could be checked."""
    samples = [s for s in state["samples"] if s["answer"] is not None]
    by_verdict = {v: [s for s in samples if s["verdict"]["verdict"] == v] for v in ("pass", "unknown", "fail")}
    status, pool = next(((status, by_verdict[v]) for v, status in
                         (("pass", "verified"), ("unknown", "unverified"), ("fail", "failed")) if by_verdict[v]),
                        ("failed", []))
    answer, count = majority([s["answer"] for s in pool])
    failure = next((s for s in state["samples"] if s["verdict"]["verdict"] != "pass"), None)
    chosen = {"answer": answer, "status": status, "votes": count,
              "failure": {"answer": failure["answer"] or "(none)", "feedback": failure["verdict"]["detail"]}
              if failure and status == "failed" else None}
    span = recording.node("vote", [], answer=answer, outcome=status, votes=count, samples=len(state["samples"]),
                          verdicts=dict(Counter(s["verdict"]["verdict"] for s in state["samples"])))
    return {"chosen": chosen, "step_spans": [span]}


def majority(answers: list[str]) -> tuple[str | None, int]:
    """The most common answer, equal answers ("0.5", "1/2") counted together; ties go to the first."""
    from reasoner.verify import answers_equal

    groups: list[list[str]] = []
    for answer in answers:
        group = next((g for g in groups if answers_equal(g[0], answer)), None)
        group.append(answer) if group else groups.append([answer])
    best = max(groups, key=len, default=[])
    return (best[0] if best else None), len(best)


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
        events.append(f"step {state['step_id']}: time budget spent, retries stopped")
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


def answer(state: RunState, runtime: Runtime[RunContext]) -> dict:
    steps, results = state["plan"], state.get("results") or {}
    last = results.get(str(steps[-1]["id"]))
    if last is None or last["answer"] is None:
        unsolved = next((r for r in results.values() if r["answer"] is None), None)
        error = unsolved["error"] if unsolved else "the time budget ran out before every step was solved"
        status = "failed" if unsolved else "timeout"
        return {"answer": None, "verified": False, "status": status, "error": error,
                "spans": [recording.event("answer", error)]}
    counted = steps[-1:] if state.get("fallback") else steps  # after a fallback only the direct answer counts
    statuses = {results[str(s["id"])]["status"] for s in counted}
    whole, spans = None, []
    if state.get("decomposed") and _options(state).verify:
        # The steps can each be right and the plan still wrong: check the whole answer where possible.
        check = checks.check_math(last["answer"], state["problem"], state.get("reference"))
        whole = check["verdict"]
        spans.append(recording.verdict(check, name="verify answer"))
    if whole == "fail" and not state.get("fallback") and runtime.context.remaining() > 0:
        return _fall_back(state, last["answer"], spans)
    if whole == "fail" or (whole != "pass" and "failed" in statuses):
        status = "rejected"  # a check failed: the answer is the best remaining guess
    elif whole == "pass" or statuses == {"verified"}:
        status = "verified"
    else:
        status = "unverified"
    verified = status == "verified"
    progress(node="answer", answer=last["answer"], status=status)
    return {"answer": last["answer"], "verified": verified, "status": status, "error": None,
            "spans": [recording.node("answer", spans, answer=last["answer"], outcome=status)]}


def _fall_back(state: RunState, rejected: str, spans: list[dict]) -> dict:
    """The plan's answer failed the whole-problem check: solve the problem directly, as one more step."""
    step = Step(max(s["id"] for s in state["plan"]) + 1, state["problem"], ())
    why = f"the plan's answer {rejected} failed the whole-problem check: solving directly"
    return {"plan": [*state["plan"], step.to_dict()], "fallback": True, "events": [why],
            "spans": [recording.node("answer", spans, answer=rejected, outcome="rejected", fallback=True)]}


def after_answer(state: RunState) -> str:
    direct_pending = str(state["plan"][-1]["id"]) not in (state.get("results") or {})
    return "schedule" if state.get("fallback") and direct_pending else END


def build_graph(checkpointer=None):
    builder = StateGraph(RunState, context_schema=RunContext)
    builder.add_node(plan)
    builder.add_node(schedule)
    builder.add_node("solve_step", build_step_graph())
    builder.add_node(answer)
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "schedule")
    builder.add_conditional_edges("schedule", dispatch, ["solve_step", "answer"])
    builder.add_edge("solve_step", "schedule")
    builder.add_conditional_edges("answer", after_answer, ["schedule", END])
    return builder.compile(checkpointer=checkpointer)
