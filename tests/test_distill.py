"""Rejection sampling and distillation (issue 17) on the real tiny model: R1's four stages end to end, a teacher
over real HTTP (`reasoner serve` on 127.0.0.1), and SIGKILL in the middle of a distill, then the same command."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from reasoner.cli import main
from reasoner.evaluation.grading import grade_many
from reasoner.model import is_checkpoint
from reasoner.rl.distill import (HTTPTeacher, MajorityVoteTeacher, collect, read_journal, read_rows, sha256_file,
                                  voted_draw)
from reasoner.rl.recipe import Recipe
from reasoner.rl.train import train
from reasoner.sampling import Sampling
from reasoner.tasks import get_task
from reasoner.traces.store import TraceStore
from reasoner.verify import answer_of

# Tiny scale: 40 cold-start steps on one-digit sums are enough for a few of 4 samples to pass the grader.
FOUR_STAGES = ["threads=1", "sft.max_steps=40", "sft.batch_size=16", "sft.warmup_steps=2", "task.per_level=200",
               "task.train_levels=[1]", "task.eval_level=1", "grpo.max_steps=1", "grpo.levels=[1]", "grpo.n_prompts=4",
               "grpo.prompts_per_step=2", "grpo.num_generations=2", "grpo.max_completion_length=24",
               "grpo.overlong_buffer=8", "rejection.levels=[1]", "rejection.n_problems=16", "rejection.samples=4",
               "rejection.max_new_tokens=24", "rejection.chunk_size=4", "rejection.sft_max_steps=2"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def four_stage_run(tmp_path_factory, one_thread):
    recipe = Recipe.load("r1-four-stage", [f"output_dir={tmp_path_factory.mktemp('r1')}", *FOUR_STAGES])
    return recipe, train(recipe, log=print)


@pytest.fixture(scope="module")
def teacher_checkpoint(four_stage_run):
    """The cold start of the four-stage run: it solves some one-digit sums."""
    return four_stage_run[1].checkpoints["sft"]


def test_four_stage_recipe_runs_end_to_end_and_records_lineage(four_stage_run, capsys):
    recipe, result = four_stage_run
    out = Path(recipe.output_dir)
    assert list(result.checkpoints) == ["sft", "grpo", "sft-2", "grpo-2"]
    assert all(is_checkpoint(path) for path in result.checkpoints.values())
    started = {stage: json.loads((out / stage / "final" / "reasoner.json").read_text())["started_from"]
               for stage in ("grpo", "sft-2", "grpo-2")}
    assert started == {"grpo": str(out / "sft" / "final"), "sft-2": str(out / "grpo" / "final"),
                       "grpo-2": str(out / "sft-2" / "final")}

    rows = read_rows(out / "rejection" / "dataset.jsonl")
    problems = {p.id: p for p in get_task("arithmetic").problems("train", 16, level=1, seed=recipe.seed + 1)}
    assert rows and all(grade_many([problems[r["problem_id"]] for r in rows], [r["completion"] for r in rows]))
    assert len({(r["problem_id"], r["completion"]) for r in rows}) == len(rows)

    lineage = json.loads((out / "sft-2" / "final" / "lineage.json").read_text())
    assert lineage["dataset_sha256"] == sha256_file(out / "rejection" / "dataset.jsonl")
    assert lineage["trace_ids"] == [r["trace_id"] for r in rows]
    with TraceStore.open(out / "traces.db") as store:
        traces = [store.get(r["trace_id"]) for r in rows]
    assert {t.source for t in traces} == {"distill"} and all(t.correct for t in traces)
    capsys.readouterr()
    assert main(["traces", "--store", str(out / "traces.db"), "list", "--source", "distill", "--limit", "100"]) == 0
    listed = capsys.readouterr().out
    assert all(r["trace_id"][:8] in listed for r in rows)

    rerun = train(recipe, log=print)  # every stage finished: the rerun only finds them
    assert rerun.checkpoints == result.checkpoints
    assert "already finished" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def served_teacher(teacher_checkpoint):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "reasoner", "serve", "--model", str(teacher_checkpoint),
                               "--port", str(port), "--name", "teacher"], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(base_url + "/models", timeout=2).read()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "reasoner serve did not start"
            time.sleep(0.2)
    yield base_url
    server.kill()
    server.wait()


def test_http_teacher_through_reasoner_serve(served_teacher, teacher_checkpoint, tmp_path, capsys):
    out = tmp_path / "http"
    assert main(["distill", "--teacher", served_teacher, "--teacher-model", "teacher", "--task", "arithmetic",
                 "--level", "1", "--n", "12", "--samples", "4", "--max-new-tokens", "24", "--chunk-size", "4",
                 "--student", str(teacher_checkpoint), "--output", str(out), "--steps", "1", "--threads", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = read_rows(out / "dataset.jsonl")
    assert report["drawn"] == 48 and report["teacher_errors"] == 0 and report["rows"] == len(rows) > 0
    assert all(r["teacher"].startswith(served_teacher) and r["kept_by"] == "grader" for r in rows)
    lineage = json.loads((out / "student" / "final" / "lineage.json").read_text())
    assert lineage["trace_ids"] == [r["trace_id"] for r in rows] and is_checkpoint(out / "student" / "final")


def test_unreachable_teacher_is_retried_counted_and_left_for_the_next_run(tmp_path):
    problems = get_task("arithmetic").problems("train", 3, level=1)
    teacher = HTTPTeacher(f"http://127.0.0.1:{_free_port()}/v1", "nobody", 2, Sampling(1.0, max_tokens=8),
                          attempts=3, backoff_s=0.01, timeout=2)
    result = collect(teacher, problems, tmp_path, chunk_size=2, log=print)
    assert result.rows == [] and result.report["teacher_errors"] == 3 and result.report["retries"] == 6
    assert sorted(result.report["unanswered"]) == sorted(p.id for p in problems)
    assert all("cannot connect" in e["error"] for e in result.report["error_examples"])
    assert not (tmp_path / "journal.jsonl").exists()  # nothing journaled: a rerun asks every chunk again


def _distill_command(checkpoint, out) -> list[str]:
    return [sys.executable, "-m", "reasoner", "distill", "--teacher", str(checkpoint), "--task", "arithmetic",
            "--level", "1", "--n", "60", "--samples", "4", "--max-new-tokens", "24", "--chunk-size", "2",
            "--student", str(checkpoint), "--output", str(out), "--no-train", "--threads", "1"]


def test_sigkill_mid_distill_then_rerun_gives_the_same_dataset_without_duplicates(teacher_checkpoint, tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    process = subprocess.Popen(_distill_command(teacher_checkpoint, killed), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = killed / "journal.jsonl"
    while process.poll() is None and not (journal.exists() and journal.stat().st_size):
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    chunks_at_kill = len(read_journal(journal))
    assert 0 < chunks_at_kill < 30 and not (killed / "dataset.jsonl").exists()  # killed mid-run

    for out in (killed, clean):
        subprocess.run(_distill_command(teacher_checkpoint, out), cwd=REPO, check=True, capture_output=True)
    rows = read_rows(killed / "dataset.jsonl")
    pairs = [(r["problem_id"], r["completion"]) for r in rows]
    assert rows and len(set(pairs)) == len(pairs)
    assert pairs == [(r["problem_id"], r["completion"]) for r in read_rows(clean / "dataset.jsonl")]
    with TraceStore.open(killed / "traces.db") as store:
        assert store.count(source="distill") == len(rows)


def test_pipeline_teacher_keeps_answers_on_its_own_verdict(teacher_checkpoint, tmp_path, capsys):
    out = tmp_path / "pipeline"
    assert main(["distill", "--teacher", str(teacher_checkpoint), "--teacher-pipeline", "--task", "arithmetic",
                 "--level", "1", "--n", "4", "--samples", "2", "--retries", "0", "--max-new-tokens", "24",
                 "--student", str(teacher_checkpoint), "--output", str(out), "--no-train", "--threads", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    dropped = sum(report[k] for k in ("failed_check", "unparseable", "no_answer", "too_long", "duplicates", "over_cap"))
    assert report["drawn"] == 4 and report["kept"] + dropped == 4 and report["rows"] == report["kept"]
    with TraceStore.open(out / "traces.db") as store:
        assert store.count(source="pipeline") == 4  # every solve is a pipeline trace; kept ones point at theirs
        for row in read_rows(out / "dataset.jsonl"):
            trace = store.get(row["trace_id"])
            assert row["kept_by"] in ("pipeline:verified", "pipeline:unverified") and trace.correct is None
            assert store.get(trace.metadata["pipeline_trace"]).source == "pipeline"


def test_majority_vote_keeps_the_most_common_answer_even_when_it_is_wrong():
    problem = get_task("arithmetic").problems("train", 1, level=1)[0]
    wrong, right = str(int(problem.answer) + 1), problem.answer
    texts = [f"<answer>{right}</answer>", f"<think>a</think><answer>{wrong}</answer>", "no answer",
             f"<think>b</think><answer>{wrong}</answer>"]
    draw = voted_draw(problem, texts)
    assert draw.completion == texts[1] and draw.passed and draw.meta == {"samples_drawn": 4, "votes": 2}
    assert grade_many([problem], [draw.completion]) == [False]  # kept on the vote, not on gold
    tie = voted_draw(problem, [texts[1], texts[0]])
    assert tie.completion == texts[1]  # a tie goes to the answer drawn first
    assert voted_draw(problem, ["no answer", "<answer></answer>"]).completion is None


def test_majority_vote_teacher_never_reads_gold_and_resumes_like_the_others(teacher_checkpoint, tmp_path, capsys):
    problems = get_task("arithmetic").problems("train", 8, level=1, seed=5)
    drawn: dict[str, list[str]] = {}

    def run(out, problems):
        teacher = MajorityVoteTeacher(teacher_checkpoint, samples=3, sampling=Sampling(1.0, max_tokens=24),
                                      budget={problems[0].id: 5})
        texts = teacher.sampler.texts

        def recording(chunk, seed, n):  # what the teacher drew, to check its vote against
            out_texts = texts(chunk, seed, n)
            drawn.update({p.id: t for p, t in zip(chunk, out_texts)})
            return out_texts
        teacher.sampler.texts = recording
        return collect(teacher, problems, out, chunk_size=4, log=print)

    result = run(tmp_path / "gold", problems)
    assert len(drawn[problems[0].id]) == 5 and all(len(drawn[p.id]) == 3 for p in problems[1:])
    assert result.rows and all(r["kept_by"] == "majority" for r in result.rows)
    for row in result.rows:
        answers = Counter(a for a in (answer_of(t, "math") for t in drawn[row["problem_id"]]) if a is not None)
        assert row["completion"] in drawn[row["problem_id"]]
        assert answers[answer_of(row["completion"], "math")] == max(answers.values())

    nonsense = [replace(p, answer="-12345") for p in problems]  # gold answers the teacher could not match
    assert _pairs(run(tmp_path / "nonsense", nonsense).rows) == _pairs(result.rows)

    journal = tmp_path / "gold" / "journal.jsonl"  # as if killed after the first chunk
    journal.write_text(journal.read_text().splitlines(keepends=True)[0])
    (tmp_path / "gold" / "dataset.jsonl").unlink()
    resumed = run(tmp_path / "gold", problems)
    assert "resuming: 1 of 2 chunks" in capsys.readouterr().out and _pairs(resumed.rows) == _pairs(result.rows)
    with TraceStore.open(tmp_path / "gold" / "traces.db") as store:
        assert store.count(source="distill") == len(result.rows)


def _pairs(rows) -> list[tuple[str, str]]:
    return [(r["problem_id"], r["completion"]) for r in rows]


def test_the_cli_takes_a_majority_teacher_and_refuses_it_with_a_url(teacher_checkpoint, tmp_path, capsys):
    out = tmp_path / "majority"
    assert main(["distill", "--teacher", str(teacher_checkpoint), "--teacher-majority", "--task", "arithmetic",
                 "--level", "1", "--n", "4", "--samples", "3", "--max-new-tokens", "24",
                 "--student", str(teacher_checkpoint), "--output", str(out), "--no-train", "--threads", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["teacher"].startswith("majority(") and report["problems"] == 4
    assert all(row["kept_by"] == "majority" for row in read_rows(out / "dataset.jsonl"))
    capsys.readouterr()
    assert main(["distill", "--teacher", "http://127.0.0.1:9/v1", "--teacher-majority", "--task", "arithmetic",
                 "--student", "tiny", "--output", str(tmp_path / "url"), "--no-train"]) == 2
    assert "--teacher-majority takes a local checkpoint" in capsys.readouterr().err
