"""Teacher samples that become training data: R1's rejection sampling, distillation, expert iteration.

A teacher answers train problems. What passes its keep rule is deduplicated, filtered by length and format,
stored as a trace (source "distill") and written as an SFT dataset whose rows carry those trace ids.

Teachers:
- CheckpointTeacher: a local checkpoint on the rollout engine (`reasoner.generation.sample`);
- HTTPTeacher: any OpenAI-compatible server (vLLM, SGLang, `reasoner serve`); reasoning returned in a separate
  `reasoning_content` field comes back inside `<think>` (the backend puts it there);
- PipelineTeacher: the solving pipeline with its honest verifiers. What it solves with plans, votes and
  retries becomes direct-answer data: the slow thinker teaches the fast one.
- MajorityVoteTeacher: self-consistency, a local checkpoint sampled N times per problem; the completion with
  the most common answer is kept. The simplest teacher that needs no gold answer and no verifier.

Keep rules: a model teacher's samples are graded against the train split's gold answers, as R1 does. The
pipeline's answers are kept on the pipeline's own verdict (what a user has at solve time), and the majority
teacher's on the vote alone: neither reads a gold answer.

Work goes in chunks. Each finished chunk is one fsynced line of journal.jsonl, so a killed run resumes at the
next chunk and draws exactly what it would have drawn (seeds are per chunk). dataset.jsonl is written once,
atomically, from the journal. A chunk in which the teacher failed on a problem (errors after retries) is not
journaled, so a rerun asks that chunk again.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

from datasets import Dataset

from reasoner.api import Reasoner
from reasoner.errors import ReasonerError
from reasoner.evaluation.grading import grade_many
from reasoner.files import write_json_atomically, write_jsonl_atomically
from reasoner.generation import sample
from reasoner.model import load_model
from reasoner.rl.checkpoints import sha256_file
from reasoner.rl.data import render_prompt
from reasoner.sampling import Sampling
from reasoner.serving.backends import BackendError, OpenAIBackend
from reasoner.tasks.base import Problem
from reasoner.traces.build import model_call_span, node_span, verification_span
from reasoner.traces.model import Trace
from reasoner.traces.store import TraceStore
from reasoner.verify import answer_of, majority_completion

JOURNAL, DATASET, REPORT, LINEAGE = "journal.jsonl", "dataset.jsonl", "report.json", "lineage.json"
EXAMPLES_SHOWN = 5                      # unparseable answers and errors quoted in the report
TRACE_NAMESPACE = uuid.UUID("6f1d2c0e-17a1-4d57-9e8b-5d4b1f0c1a17")
KEEP_STATUSES = ("verified", "unverified")  # the pipeline's own verdicts worth learning from


@dataclass(frozen=True)
class Filters:
    max_chars: int = 512          # longer completions are dropped (R1 filters long, mixed-language output)
    require_format: bool = True   # an answer must parse: <answer>...</answer> (a program for code)
    per_problem: int = 4          # distinct kept completions per problem, at most


@dataclass
class Draw:
    """One teacher answer and the keep rule's verdict on it."""
    completion: str | None        # None: the teacher gave nothing (an error after retries, or no answer)
    passed: bool
    kept_by: str                  # "grader", "pipeline:verified", "pipeline:unverified", ...
    meta: dict = field(default_factory=dict)


@dataclass
class Counters:
    """What happened, for report.json: every drop has a reason and a count."""
    retries: int = 0
    error_examples: list = field(default_factory=list)

    def error(self, problem: Problem, err: Exception) -> None:
        if len(self.error_examples) < EXAMPLES_SHOWN:
            self.error_examples.append({"problem_id": problem.id, "error": str(err)[:300]})


# ---------------------------------------------------------------- teachers


class CheckpointTeacher:
    """A local checkpoint sampled on the rollout engine; samples graded against train gold answers (R1)."""

    def __init__(self, checkpoint: str | Path, samples: int, sampling: Sampling, prompt_style: str = "plain",
                 model=None, tokenizer=None):
        self.name = str(checkpoint)
        self.model, self.tokenizer = (model, tokenizer) if model is not None else load_model(checkpoint)
        self.samples, self.sampling, self.style = samples, sampling, prompt_style
        self.counters = Counters()

    def answer(self, problems: Sequence[Problem], seed: int) -> list[list[Draw]]:
        return graded(problems, self.texts(problems, seed, self.samples))

    def texts(self, problems: Sequence[Problem], seed: int, samples: int) -> list[list[str]]:
        prompts = [render_prompt(p.question, self.tokenizer, self.style) for p in problems]
        return sample(self.model, self.tokenizer, prompts, replace(self.sampling, seed=seed), samples)


class MajorityVoteTeacher:
    """Self-consistency as a teacher: a local checkpoint samples each problem, and the first completion whose
    answer is the most common is kept (maj@N's vote: equal values for math, the same text otherwise; ties go to
    the answer drawn first). No gold answer is read, so a wrong majority is kept too. `budget` gives problems
    their own number of samples by id, e.g. as many completions as another teacher drew on each: equal compute."""

    def __init__(self, checkpoint: str | Path, samples: int, sampling: Sampling, prompt_style: str = "plain",
                 model=None, tokenizer=None, budget: Mapping[str, int] | None = None):
        self.sampler = CheckpointTeacher(checkpoint, samples, sampling, prompt_style, model, tokenizer)
        self.name, self.samples, self.budget = f"majority({checkpoint})", samples, dict(budget or {})
        self.counters = self.sampler.counters

    def answer(self, problems: Sequence[Problem], seed: int) -> list[list[Draw]]:
        counts = [self.budget.get(p.id, self.samples) for p in problems]
        texts: list[list[str]] = [[] for _ in problems]
        for n in sorted(set(counts)):  # one batched call per sample count
            group = [i for i, c in enumerate(counts) if c == n]
            for i, drawn in zip(group, self.sampler.texts([problems[i] for i in group], seed + n, n)):
                texts[i] = drawn
        return [[voted_draw(p, t)] for p, t in zip(problems, texts)]


def voted_draw(problem: Problem, texts: Sequence[str]) -> Draw:
    """The majority answer's first completion; no answer among the samples: nothing to keep."""
    chosen, votes = majority_completion(texts, problem.kind)
    return Draw(chosen, chosen is not None, "majority", {"samples_drawn": len(texts), "votes": votes})


class HTTPTeacher:
    """An OpenAI-compatible endpoint. Errors and timeouts are retried with exponential backoff and counted;
    a problem still failing after `attempts` is reported and left for the next run."""

    def __init__(self, base_url: str, model: str, samples: int, sampling: Sampling, *, api_key: str | None = None,
                 timeout: float = 120.0, attempts: int = 4, backoff_s: float = 0.5, backend=None):
        self.name = f"{base_url} ({model})"
        self.backend = backend or OpenAIBackend(base_url, model, api_key, timeout)
        self.samples, self.sampling, self.attempts, self.backoff_s = samples, sampling, attempts, backoff_s
        self.counters = Counters()

    def answer(self, problems: Sequence[Problem], seed: int) -> list[list[Draw]]:
        texts = [self._ask(p, seed + i) for i, p in enumerate(problems)]
        answered = [i for i, t in enumerate(texts) if t is not None]
        out = [[Draw(None, False, "teacher_error")] for _ in problems]
        for i, problem_draws in zip(answered, graded([problems[i] for i in answered], [texts[i] for i in answered])):
            out[i] = problem_draws
        return out

    def _ask(self, problem: Problem, seed: int) -> list[str] | None:
        sampling = replace(self.sampling, seed=seed)
        messages = [{"role": "user", "content": problem.question}]  # the direct prompt: the question alone
        for attempt in range(self.attempts):
            try:
                return [g.text for g in self.backend.generate(messages, self.samples, sampling)]
            except (BackendError, OSError) as err:
                if attempt + 1 == self.attempts:
                    self.counters.error(problem, err)
                    return None
                self.counters.retries += 1
                time.sleep(self.backoff_s * 2 ** attempt)
        return None


class PipelineTeacher:
    """The pipeline (plans, calculator, votes, certificate, sandbox on shown examples) through the public
    API. It sees `Problem.for_solver()` only; its answer is kept when its own verdict is in KEEP_STATUSES."""

    def __init__(self, reasoner: Reasoner, name: str, options: dict, keep_statuses: Sequence[str] = KEEP_STATUSES,
                 max_drawn: int | None = None):
        self.reasoner, self.name, self.options = reasoner, name, dict(options)
        self.keep_statuses, self.max_drawn = tuple(keep_statuses), max_drawn
        self.counters = Counters()

    def answer(self, problems: Sequence[Problem], seed: int) -> list[list[Draw]]:
        out = []
        for i, problem in enumerate(problems):
            try:
                solution = self.reasoner.solve(problem.for_solver(), seed=seed + i, **self.options)
            except ReasonerError as err:  # reported and asked again on the next run, never a crash
                self.counters.error(problem, err)
                out.append([Draw(None, False, "teacher_error")])
                continue
            passed = solution.answer is not None and solution.status in self.keep_statuses and \
                settled(solution.samples_drawn, self.max_drawn)
            meta = {"pipeline_trace": solution.trace_id, "status": solution.status,
                    "samples_drawn": solution.samples_drawn}
            if solution.answer is None:
                meta["error"] = solution.error
            out.append([Draw(direct_target(solution), passed, f"pipeline:{solution.status}", meta)])
        return out


def settled(samples_drawn: int, max_drawn: int | None) -> bool:
    """The pipeline's own confidence, known at solve time: it draws again when its plans have no clear
    majority, so a solve that settled within `max_drawn` completions had one early (None: any)."""
    return max_drawn is None or samples_drawn <= max_drawn


def rows_settled_within(rows: Sequence[dict], store_path: str | Path, max_drawn: int | None) -> list[dict]:
    """Kept pipeline rows whose solve settled within `max_drawn` completions, read from their traces."""
    if max_drawn is None:
        return list(rows)
    drawn = drawn_by_problem(rows, store_path)
    return [r for r in rows if settled(drawn[r["problem_id"]], max_drawn)]


def drawn_by_problem(rows: Sequence[dict], store_path: str | Path) -> dict[str, int]:
    """Completions the teacher drew on each kept row's problem (planner calls included), from their traces."""
    with TraceStore.open(store_path, read_only=True) as store:
        return {r["problem_id"]: store.get(r["trace_id"]).metadata["samples_drawn"] for r in rows}


def direct_target(solution) -> str | None:
    """The pipeline's answer as a direct completion. A plan whose steps the calculator computed becomes the
    worked `<think>` of the cold start (`9+5=14`, one line per step) when its last step is the answer."""
    if solution.answer is None:
        return None
    steps = [s for s in solution.steps if s.answer is not None]
    worked = steps and len(steps) == len(solution.steps) and steps[-1].answer == solution.answer
    think = "\n".join(f"{s.question}={s.answer}" for s in steps) if worked else ""
    return f"<think>{think}</think><answer>{solution.answer}</answer>"


def graded(problems: Sequence[Problem], texts: Sequence[Sequence[str]]) -> list[list[Draw]]:
    """Train-split samples against gold answers and hidden tests, through the one grader."""
    flat = grade_many([p for p, group in zip(problems, texts) for _ in group], [t for group in texts for t in group])
    out, i = [], 0
    for group in texts:
        out.append([Draw(text, flat[i + j], "grader") for j, text in enumerate(group)])
        i += len(group)
    return out


# ---------------------------------------------------------------- the collection loop


@dataclass
class Collected:
    dataset: Path
    rows: list[dict]
    report: dict


def collect(teacher, problems: Sequence[Problem], output_dir: str | Path, *, filters: Filters = Filters(),
            chunk_size: int = 32, seed: int = 0, store_path: str | Path | None = None,
            log: Callable[[str], None] = print) -> Collected:
    """Ask the teacher about every problem, keep, dedupe, filter; write traces, the journal, the dataset."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    store_path = Path(store_path) if store_path else out / "traces.db"
    journal = out / JOURNAL
    done = read_journal(journal)
    chunks = [problems[i:i + chunk_size] for i in range(0, len(problems), chunk_size)]
    if done:
        log(f"[distill] resuming: {len(done)} of {len(chunks)} chunks already in {journal}")
    unanswered: list[str] = []
    with TraceStore.open(store_path) as store:
        for index, chunk in enumerate(chunks):
            if index in done:
                continue
            entry = _chunk_entry(teacher, chunk, index, seed + 1000 * index, filters, out)
            store.add_many(entry.pop("traces"), on_conflict="ignore")  # a rerun of a killed chunk: same ids
            if entry["unanswered"]:  # not journaled: the next run asks this chunk again, with the same seed
                unanswered += entry["unanswered"]
                log(f"[distill] chunk {index + 1}/{len(chunks)}: the teacher failed on {len(entry['unanswered'])} "
                    "problems after retries; rerun to ask again")
                continue
            _append_line(journal, entry)
            done[index] = entry
            log(f"[distill] chunk {index + 1}/{len(chunks)}: kept {len(entry['rows'])} rows "
                f"({sum(len(e['rows']) for e in done.values())} so far)")
    entries = [done[i] for i in sorted(done)]
    rows = unique_rows(row for e in entries for row in e["rows"])
    dataset = write_rows_atomically(out / DATASET, rows)
    report = summarize(entries, rows, teacher, problems, store_path, dataset)
    report.update(chunks_total=len(chunks), unanswered=unanswered, teacher_errors=len(unanswered))
    write_json_atomically(out / REPORT, report)
    return Collected(dataset, rows, report)


def _chunk_entry(teacher, chunk: Sequence[Problem], index: int, seed: int, filters: Filters, out: Path) -> dict:
    draws = teacher.answer(chunk, seed)
    stats = {"problems": len(chunk), "drawn": 0, "passed": 0, "kept": 0, "unparseable": 0, "too_long": 0,
             "duplicates": 0, "over_cap": 0, "failed_check": 0, "teacher_errors": 0, "no_answer": 0}
    rows, traces, unparseable, unanswered = [], [], [], []
    for problem, problem_draws in zip(chunk, draws):
        if any(d.kept_by == "teacher_error" for d in problem_draws):
            stats["teacher_errors"] += 1
            unanswered.append(problem.id)
            continue
        kept_texts: list[str] = []
        for draw in problem_draws:
            stats["drawn"] += 1
            reason = drop_reason(draw, problem, filters, kept_texts)
            if reason == "unparseable" and len(unparseable) < EXAMPLES_SHOWN:
                unparseable.append({"problem_id": problem.id, "completion": (draw.completion or "")[:300]})
            if reason == "no_answer" and len(unparseable) < EXAMPLES_SHOWN:
                unparseable.append({"problem_id": problem.id, "completion": None, "why": draw.meta.get("error")})
            stats[reason or "kept"] += 1
            stats["passed"] += draw.passed
            if reason is None:
                kept_texts.append(draw.completion)
                trace = distill_trace(problem, draw, teacher.name, out)
                traces.append(trace)
                rows.append({"problem_id": problem.id, "task": problem.task, "question": problem.question,
                             "completion": draw.completion, "trace_id": trace.id, "teacher": teacher.name,
                             "kept_by": draw.kept_by})
    return {"chunk": index, "stats": stats, "rows": rows, "unparseable_examples": unparseable,
            "unanswered": unanswered, "traces": traces}


def drop_reason(draw: Draw, problem: Problem, filters: Filters, kept: list[str]) -> str | None:
    """Why a draw is not kept (None: kept). Format first: an unparseable answer is reported, not just failed."""
    if draw.completion is None:
        return "no_answer"
    if filters.require_format and answer_of(draw.completion, problem.kind) is None:
        return "unparseable"
    if not draw.passed:
        return "failed_check"
    if len(draw.completion) > filters.max_chars:
        return "too_long"
    if draw.completion in kept:
        return "duplicates"
    if len(kept) >= filters.per_problem:
        return "over_cap"
    return None


def distill_trace(problem: Problem, draw: Draw, teacher: str, out: Path) -> Trace:
    """The kept sample as a trace. Its id is a function of the dataset, problem and text, so a rerun after a
    kill writes the same trace again (ignored by the store), never a second one."""
    key = f"{out.resolve()}|{problem.id}|{draw.completion}"
    verdict = True if draw.kept_by == "grader" else "pass" if draw.kept_by == "pipeline:verified" else "unknown"
    spans = [node_span("distill sample",
                       model_call_span(problem.question, draw.completion, model=teacher),
                       verification_span(verdict, draw.kept_by, verifier=draw.kept_by.split(":")[0]))]
    return Trace(source="distill", task=problem.task, model=teacher, prompt=problem.question,
                 correct=True if draw.kept_by == "grader" else None,
                 metadata={"problem_id": problem.id, "teacher": teacher, "kept_by": draw.kept_by,
                           "dataset": str(out.resolve() / DATASET), **draw.meta},
                 spans=spans, id=uuid.uuid5(TRACE_NAMESPACE, key).hex)


def unique_rows(rows) -> list[dict]:
    """First occurrence of each (problem, completion): the journal may hold a chunk twice after a kill."""
    seen, out = set(), []
    for row in rows:
        key = (row["problem_id"], row["completion"])
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def summarize(entries: list[dict], rows: list[dict], teacher, problems, store_path: Path, dataset: Path) -> dict:
    totals: dict[str, int] = {}
    for entry in entries:
        for key, value in entry["stats"].items():
            totals[key] = totals.get(key, 0) + value
    counters = teacher.counters
    return {"teacher": teacher.name, "problems": len(problems), "chunks_done": len(entries),
            "rows": len(rows), "problems_with_rows": len({r["problem_id"] for r in rows}), **totals,
            "retries": counters.retries,
            "error_examples": counters.error_examples,
            "unparseable_examples": [x for e in entries for x in e["unparseable_examples"]][:EXAMPLES_SHOWN],
            "dataset": str(dataset), "dataset_sha256": sha256_file(dataset), "trace_store": str(store_path)}


# ---------------------------------------------------------------- files: journal, dataset, lineage


def read_journal(path: Path) -> dict[int, dict]:
    """Finished chunks by index. A torn last line (killed mid-write) is cut off so appends start clean."""
    if not path.exists():
        return {}
    done, good_bytes = {}, 0
    with open(path, "rb") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except ValueError:
                break
            if not line.endswith(b"\n"):
                break
            done[entry["chunk"]] = entry
            good_bytes += len(line)
    if good_bytes != path.stat().st_size:
        os.truncate(path, good_bytes)
    return done


def _append_line(path: Path, entry: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(entry) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def write_rows_atomically(path: Path, rows: Sequence[dict]) -> Path:
    return write_jsonl_atomically(path, rows, sort_keys=True)


def read_rows(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def sft_rows_dataset(path: str | Path, tokenizer, style: str = "plain") -> Dataset:
    """dataset.jsonl as TRL prompt/completion rows, prompts rendered with the student's own chat template."""
    rows = [{"prompt": render_prompt(r["question"], tokenizer, style), "completion": r["completion"] + tokenizer.eos_token}
            for r in read_rows(path)]
    if not rows:
        raise ValueError(f"{path}: no kept samples to train on")
    return Dataset.from_list(rows).shuffle(seed=0)


def write_lineage(checkpoint: str | Path, dataset: str | Path, trace_store: str | Path | None) -> Path:
    """lineage.json beside config.json: the dataset (path and SHA-256) and the trace ids it learned from."""
    rows = read_rows(dataset)
    lineage = {"dataset": str(Path(dataset).resolve()), "dataset_sha256": sha256_file(Path(dataset)),
               "rows": len(rows), "trace_store": str(Path(trace_store).resolve()) if trace_store else None,
               "trace_source": "distill", "trace_ids": [r["trace_id"] for r in rows]}
    return write_json_atomically(Path(checkpoint) / LINEAGE, lineage)
