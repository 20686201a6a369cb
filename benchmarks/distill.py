"""Pipeline into model (issue 17): expert iteration, the slow thinker teaching the fast one.

The teacher is the demo's GRPO checkpoint solving train problems through the pipeline, with only what a
user has (plans computed by the calculator and voted; never a gold answer). Its answers become direct-answer
SFT data, and the same checkpoint trained on them (the student) answers directly. Both are scored greedily on
the held-out (test) split by the grader, with 95% bootstrap CIs. Chosen on the validation split, never on
test: the level (teacher's direct accuracy below 30%, the pipeline's largest lead over it), which kept answers
to learn from (all, or only solves that settled within N completions: the pipeline draws again when its plans
have no clear majority, so this is its own confidence, known at solve time), the student's learning rate and
steps. The grader also reports, on the train split, how many kept labels were right (never used to keep them).

With --alternatives, the same student start is also trained (same batch, rate and step grid, chosen on
validation) on two other teachers' rows over the same train problems:
- majority: self-consistency at equal compute, the teacher checkpoint answering each problem directly at T=1 as
  many times as the pipeline drew completions on it, keeping the majority answer's completion (no gold);
- blind: the question-blind backend as the pipeline's model, same keep rule; its student must gain nothing.
Each is scored on validation and test, paired with the method's student on the same problems.

    python benchmarks/distill.py            # the measurement: ends with distill_gain=X (points, test split)
    python benchmarks/distill.py --quick    # a smaller round (fewer train problems and steps), same output
    python benchmarks/distill.py --alternatives majority blind [--test-seed 1]

Resumable: the kept samples (journal), each trained student and the choices are reused on a rerun.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from reasoner.api import Reasoner
from reasoner.evaluation.checkpoints import evaluate_checkpoint
from reasoner.evaluation.compare import PipelineSettings, solve_through_pipeline
from reasoner.evaluation.controls import BlindBackend
from reasoner.evaluation.grading import grade_many
from reasoner.evaluation.metrics import Metric, bootstrap
from reasoner.progress import quiet_libraries
from reasoner.rl.distill import (Filters, MajorityVoteTeacher, PipelineTeacher, collect, drawn_by_problem, read_rows,
                                  rows_settled_within, write_rows_atomically)
from reasoner.rl.recipe import Recipe
from reasoner.rl.train import train_on_dataset
from reasoner.sampling import Sampling
from reasoner.serving.backends import LocalBackend
from reasoner.tasks import get_task

DIRECT_CEILING = 0.30   # the issue: a level where the teacher's direct accuracy is below 30%


def main() -> None:
    args = parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    task = get_task(args.task)
    settings = PipelineSettings(samples=args.samples, retries=args.retries, temperature=1.0, max_tokens=96)
    level, choice = choose_level(args, task, settings, out)
    problems = {split: task.problems(split, n, level=level, seed=args.seed) for split, n in
                (("train", args.train_problems), ("validation", args.n_validation))}
    problems["heldout"] = test_problems(task, level, args)
    suffix = "" if args.test_seed is None else f"-test-seed{args.test_seed}"
    kept = distill_round(args, problems["train"], settings, out)
    datasets = {drawn: settled_dataset(kept, drawn, out) for drawn in args.max_drawn}
    students = {(drawn, lr, steps): train_student(args, datasets[drawn], lr, steps, out, student_name(drawn, lr, steps))
                for drawn in args.max_drawn for lr in args.learning_rates for steps in args.steps}
    validation = {key: direct(path, problems["validation"], task, out / "validation" / f"{student_name(*key)}.jsonl")
                  for key, path in students.items()}
    best = max(validation, key=lambda key: validation[key].value)
    teacher_validation = direct(args.teacher, problems["validation"], task, out / "validation" / "teacher.jsonl")
    teacher_test = direct(args.teacher, problems["heldout"], task, out / f"teacher-test{suffix}.jsonl")
    student_test = direct(students[best], problems["heldout"], task, out / f"student-test{suffix}.jsonl")
    method = {"validation": out / "validation" / f"{student_name(*best)}.jsonl", "test": out / f"student-test{suffix}.jsonl"}
    alternatives = {name: alternative(name, args, problems, settings, kept, best, method, suffix, out)
                    for name in args.alternatives}
    summary = {"teacher": args.teacher, "task": args.task, "level": level, "level_choice": choice,
               "pipeline_settings": settings.options(), "train_problems": len(problems["train"]),
               "kept_rows": len(kept.rows), "distill_report": kept_report(kept.report),
               "rows_by_max_drawn": {str(d): len(read_rows(path)) for d, path in datasets.items()},
               "label_accuracy_train_by_max_drawn": {str(d): label_accuracy(read_rows(path), problems["train"])
                                                     for d, path in datasets.items()},
               "student_validation": {student_name(*key): v.value for key, v in validation.items()},
               "student_name": student_name(*best),
               "student_max_drawn": best[0], "student_learning_rate": best[1], "student_steps": best[2],
               "student": str(students[best]), "n_validation": len(problems["validation"]),
               "teacher_direct_validation": teacher_validation.to_dict(),
               "student_direct_validation": validation[best].to_dict(),
               "n_test": len(problems["heldout"]), "test_seed": args.test_seed,
               "teacher_direct_test": teacher_test.to_dict(), "student_direct_test": student_test.to_dict(),
               "distill_gain_points": round(100 * (student_test.value - teacher_test.value), 1),
               "completions_drawn": sum(drawn_by_problem(kept.rows, out / "traces.db").values()),
               "alternatives": alternatives, "seconds": round(time.perf_counter() - started, 1)}
    (out / f"summary{suffix}.json").write_text(json.dumps(summary, indent=1))
    print_report(summary, {"teacher_validation": teacher_validation, "teacher_test": teacher_test,
                           "student_validation": validation[best], "student_test": student_test})


def print_report(summary: dict, metrics: dict) -> None:
    """The summary in words; the last line is `distill_gain=X`."""
    print(f"level {summary['level']} ({summary['task']}), chosen on validation: {summary['level_choice']}")
    print(f"kept {summary['kept_rows']} rows from {summary['train_problems']} train problems; by max_drawn: "
          f"{summary['rows_by_max_drawn']} rows, right on train (grader, reported only): "
          f"{summary['label_accuracy_train_by_max_drawn']}")
    print(f"student: {summary['student_name']} (validation direct: {summary['student_validation']})")
    print(f"validation, greedy, n={summary['n_validation']}: teacher direct {metrics['teacher_validation']}, "
          f"student direct {metrics['student_validation']}")
    print(f"test split, greedy, n={summary['n_test']}: teacher direct {metrics['teacher_test']}, "
          f"student direct {metrics['student_test']}")
    for name, figures in summary["alternatives"].items():
        print(f"{name}: {figures['completions_drawn']} completions, {figures['kept_rows']} rows "
              f"({100 * figures['label_accuracy_train']:.1f}% right on train, grader, reported only); "
              f"{figures['student']} (validation {figures['validation']}: {figures['validation_chosen_str']}); "
              f"test direct {figures['test_str']}; "
              f"method minus {name}: validation {figures['method_minus_this_validation_str']}, "
              f"test {figures['method_minus_this_test_str']}; {name} minus teacher direct: validation "
              f"{figures['this_minus_teacher_validation_str']}, test {figures['this_minus_teacher_test_str']}")
    print(f"distill_gain={summary['distill_gain_points']}")


def test_problems(task, level: int, args) -> list:
    """The test split's problems. With --test-seed, a fresh draw from the same split that leaves out every problem
    the --seed draw holds: a second report on problems no earlier run has looked at."""
    if args.test_seed is None:
        return task.problems("heldout", args.n_test, level=level, seed=args.seed)
    used = {p.question for p in task.problems("heldout", args.n_test, level=level, seed=args.seed)}
    fresh = task.problems("heldout", 3 * args.n_test, level=level, seed=args.test_seed)
    return [p for p in fresh if p.question not in used][:args.n_test]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="runs/demo/grpo/final", help="checkpoint: the teacher and the student's start")
    parser.add_argument("--task", default="word")
    parser.add_argument("--levels", type=int, nargs="+", default=[2, 3], help="candidate levels (chosen on validation)")
    parser.add_argument("--train-problems", type=int, default=2400)
    parser.add_argument("--samples", type=int, default=4, help="the pipeline's k (the demo's word setting)")
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--steps", type=int, nargs="+", default=[400, 800], help="student SFT steps to try")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[3e-3])
    parser.add_argument("--max-drawn", type=lambda v: None if v == "any" else int(v), nargs="+", default=[None, 8],
                        help="kept sets to try: solves that settled within N completions ('any': all)")
    parser.add_argument("--n-validation", type=int, default=200)
    parser.add_argument("--n-choice", type=int, default=80, help="validation problems for the level's pipeline figure")
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-seed", type=int, default=None,
                        help="score on a fresh draw of the test split, none of --seed's (summary-test-seedN.json)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more only fight other jobs on a shared box)")
    parser.add_argument("--output", default="runs/distill")
    parser.add_argument("--alternatives", nargs="*", default=[], choices=ALTERNATIVES,
                        help="also train students on these teachers' rows: majority (equal compute), blind (control)")
    parser.add_argument("--quick", action="store_true", help="600 train problems; one student: settled solves, lr 3e-3, 150 steps")
    args = parser.parse_args()
    if args.quick:
        args.train_problems, args.steps, args.learning_rates, args.max_drawn = 600, [150], [3e-3], [8]
        args.output = args.output if args.output != "runs/distill" else "runs/distill-quick"
    return args


def choose_level(args, task, settings: PipelineSettings, out: Path) -> tuple[int, dict]:
    """On validation: the teacher's direct accuracy, and the pipeline's on a smaller sample; the level with the
    pipeline's largest lead among those where direct is below the ceiling."""
    cached = out / "level_choice.json"
    if cached.exists():
        choice = json.loads(cached.read_text())
        return choice["level"], choice["levels"]
    figures, backend = {}, LocalBackend.from_pretrained(args.teacher)
    for level in args.levels:
        problems = task.problems("validation", args.n_validation, level=level, seed=args.seed)
        pipeline, _ = solve_through_pipeline(backend, problems[:args.n_choice],
                                             settings, out / "choice" / f"level{level}.db", out / "choice" / "traces.db",
                                             args.seed, f"validation level {level} pipeline")
        figures[level] = {"direct": direct(args.teacher, problems, task).value, "n": len(problems),
                          "pipeline": sum(pipeline) / len(pipeline), "n_pipeline": len(pipeline)}
    eligible = {lv: f for lv, f in figures.items() if f["direct"] < DIRECT_CEILING} or figures
    level = max(eligible, key=lambda lv: eligible[lv]["pipeline"] - eligible[lv]["direct"])
    cached.write_text(json.dumps({"level": level, "levels": figures}, indent=1))
    return level, figures


def distill_round(args, problems, settings: PipelineSettings, out: Path):
    """The pipeline solves the train problems; what it keeps (its own verdict) becomes the dataset."""
    reasoner = Reasoner.from_pretrained(args.teacher, checkpoints=out / "teacher-pipeline.db",
                                        traces=out / "traces.db")
    teacher = PipelineTeacher(reasoner, f"pipeline({args.teacher})", settings.options())
    with reasoner:
        return collect(teacher, problems, out / "round1", filters=Filters(per_problem=1), chunk_size=50,
                       seed=args.seed, store_path=out / "traces.db")


ALTERNATIVES = ("majority", "blind")


def alternative(name: str, args, problems: dict, settings: PipelineSettings, kept, best: tuple, method: dict,
                suffix: str, out: Path) -> dict:
    """Another teacher's rows over the same train problems; the same student start, batch and rate trained on
    them (the blind control: the method's chosen steps; the majority: the whole step grid, chosen on validation),
    scored on validation and test and paired with the method's student on the same problems."""
    task, lr = get_task(args.task), best[1]
    rows = majority_round(args, problems["train"], settings, kept, out) if name == "majority" else \
        blind_round(args, problems["train"], settings, out)
    steps_grid = sorted(args.steps, reverse=True) if name == "majority" else [best[2]]
    students = {steps: train_student(args, rows.dataset, lr, steps, out, f"{name}-student-lr{lr:g}-steps{steps}",
                                     traces=rows.report["trace_store"]) for steps in steps_grid}
    validation_files = {steps: out / "validation" / f"{path.parent.name}.jsonl" for steps, path in students.items()}
    validation = {steps: direct(students[steps], problems["validation"], task, validation_files[steps])
                  for steps in students}
    steps = max(validation, key=lambda k: validation[k].value)
    chosen = validation[steps]
    test_file = out / f"{name}-student-test{suffix}.jsonl"
    test = direct(students[steps], problems["heldout"], task, test_file)
    teacher_file = out / f"teacher-test{suffix}.jsonl"
    paired = {"method_minus_this_validation": difference(method["validation"], validation_files[steps]),
              "method_minus_this_test": difference(method["test"], test_file),
              "this_minus_teacher_validation": difference(validation_files[steps], out / "validation" / "teacher.jsonl"),
              "this_minus_teacher_test": difference(test_file, teacher_file)}
    return {"teacher": rows.report["teacher"], "completions_drawn": rows.completions, "kept_rows": len(rows.rows),
            "label_accuracy_train": label_accuracy(rows.rows, problems["train"]),
            "validation": {f"steps{k}": v.value for k, v in validation.items()}, "steps": steps,
            "validation_chosen": chosen.to_dict(), "validation_chosen_str": str(chosen),
            "student": str(students[steps]), "test": test.to_dict(), "test_str": str(test),
            **{k: v.to_dict() for k, v in paired.items()}, **{f"{k}_str": signed(v) for k, v in paired.items()}}


@dataclass
class Rows:
    dataset: Path
    rows: list
    report: dict
    completions: int   # model completions drawn over the train problems (planner calls included)


def majority_round(args, problems, settings: PipelineSettings, kept, out: Path) -> Rows:
    """Self-consistency at equal compute: on each train problem as many direct T=1 completions as the pipeline
    drew there (its traces say), the majority answer's first completion kept; no gold answer is read."""
    budget = drawn_by_problem(kept.rows, out / "traces.db")
    teacher = MajorityVoteTeacher(args.teacher, samples=1, budget=budget,
                                  sampling=Sampling(temperature=1.0, max_tokens=settings.max_tokens))
    voted = collect(teacher, problems, out / "majority", filters=Filters(per_problem=1), chunk_size=50,
                    seed=args.seed, store_path=out / "traces.db")
    return Rows(voted.dataset, voted.rows, voted.report, sum(budget[p.id] for p in problems))


def blind_round(args, problems, settings: PipelineSettings, out: Path) -> Rows:
    """The pipeline with the question-blind backend as its model, the method's keep rule; its own trace store."""
    store = out / "blind" / "traces.db"
    reasoner = Reasoner(BlindBackend(problems[0].kind, args.seed), checkpoints=out / "blind" / "pipeline.db",
                        traces=store)
    teacher = PipelineTeacher(reasoner, "pipeline(question-blind)", settings.options())
    with reasoner:
        blind = collect(teacher, problems, out / "blind" / "round1", filters=Filters(per_problem=1), chunk_size=50,
                        seed=args.seed, store_path=store)
    return Rows(blind.dataset, blind.rows, blind.report, sum(drawn_by_problem(blind.rows, store).values()))


def difference(first: Path, second: Path) -> Metric:
    """Paired: first's accuracy minus second's on the same problems, bootstrapped over problems."""
    a, b = (dict((r["id"], r["pass@1"]) for r in read_rows(path)) for path in (first, second))
    assert a.keys() == b.keys(), f"{first} and {second} scored different problems"
    return bootstrap([a[k] - b[k] for k in a])


def signed(metric: Metric) -> str:
    return f"{100 * metric.value:+.1f} points [{100 * metric.low:+.1f}, {100 * metric.high:+.1f}]"


def settled_dataset(kept, max_drawn: int | None, out: Path) -> Path:
    """The kept rows whose solve settled within max_drawn completions (the pipeline's own confidence)."""
    if max_drawn is None:
        return kept.dataset
    rows = rows_settled_within(kept.rows, out / "traces.db", max_drawn)
    return write_rows_atomically(kept.dataset.with_name(f"dataset-drawn{max_drawn}.jsonl"), rows)


def student_name(max_drawn: int | None, learning_rate: float, steps: int) -> str:
    return f"student-{'any' if max_drawn is None else f'drawn{max_drawn}'}-lr{learning_rate:g}-steps{steps}"


def train_student(args, dataset: Path, learning_rate: float, steps: int, out: Path, stage: str,
                  traces: str | Path | None = None) -> Path:
    recipe = Recipe.load("demo", [f"output_dir={out}", f"threads={args.threads}", f"seed={args.seed}",
                                  f"sft.max_steps={steps}", f"sft.batch_size={args.batch_size}",
                                  f"sft.learning_rate={learning_rate}", "sft.warmup_steps=10", "traces=" +
                                  str(traces or out / "traces.db")])
    return train_on_dataset(recipe, args.teacher, dataset, stage=stage)


def direct(checkpoint, problems, task, output: Path | None = None):
    """Greedy direct answering, one completion per problem, graded; the pass@1 Metric (value, 95% CI)."""
    greedy = Sampling(temperature=0.0, max_tokens=task.max_new_tokens, seed=0)
    return evaluate_checkpoint(checkpoint, problems, sampling=greedy, output=output)["pass@1"]


def label_accuracy(rows: list[dict], problems) -> float:
    by_id = {p.id: p for p in problems}
    right = grade_many([by_id[r["problem_id"]] for r in rows], [r["completion"] for r in rows])
    return bootstrap(right).value if rows else 0.0


def kept_report(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("unanswered",)}


if __name__ == "__main__":
    main()
