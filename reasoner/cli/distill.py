"""`reasoner distill`: a teacher answers train problems, what passes is kept as an SFT dataset, a student learns it."""
from __future__ import annotations

import argparse


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "distill", help="teacher samples that pass become a dataset; SFT a student on it",
        description="Distillation (R1's small dense models) and expert iteration. The teacher answers train\n"
                    "problems of a task: a local checkpoint (sampled on the rollout engine), an OpenAI-compatible\n"
                    "URL (vLLM, SGLang, `reasoner serve`; reasoning in `reasoning_content` is kept in <think>), or,\n"
                    "with --teacher-pipeline, the solving pipeline with its honest verifiers. A model teacher's\n"
                    "samples are kept when the grader passes them (train split: gold answers allowed, as in R1);\n"
                    "the pipeline's answers when its own verdict is verified or unverified (never a gold answer);\n"
                    "with --teacher-majority, a local checkpoint's most common answer over K samples (no gold).\n"
                    "Kept samples are deduplicated, filtered by length and format, stored as traces (source\n"
                    "distill) and written to DIR/dataset.jsonl with their trace ids; the student is then SFT'd on\n"
                    "them into DIR/student/final, with lineage.json beside config.json.",
        epilog="examples:\n"
               "  reasoner distill --teacher runs/demo/grpo/final --task word --level 2 --student tiny --output runs/d\n"
               "  reasoner distill --teacher runs/demo/grpo/final --teacher-pipeline --task word --level 2 \\\n"
               "      --student runs/demo/grpo/final --output runs/expert-iteration\n"
               "  reasoner distill --teacher http://127.0.0.1:8000/v1 --task gsm8k --student ckpt --output runs/r1d\n"
               "Interrupt it at any time: the same command resumes without duplicating rows. A problem the teacher\n"
               "could not answer after --attempts is reported and asked again on the next run.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, metavar="CHECKPOINT_OR_URL",
                        help="checkpoint directory, or an OpenAI-compatible base URL (http://host:port/v1)")
    parser.add_argument("--task", required=True, help="task whose train split the teacher answers")
    parser.add_argument("--student", required=True, metavar="MODEL_OR_CHECKPOINT",
                        help="checkpoint directory or model YAML name (e.g. tiny) to train")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--teacher-pipeline", action="store_true",
                        help="the teacher solves through the pipeline (plans, votes, retries, honest checks)")
    parser.add_argument("--teacher-majority", action="store_true",
                        help="keep a local teacher's majority answer over K samples per problem (self-consistency: "
                             "no gold read; a wrong majority is kept too)")
    parser.add_argument("--level", type=int, default=None, help="task level (default: all levels mixed)")
    parser.add_argument("--n", type=int, default=1000, help="train problems (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=4, metavar="K",
                        help="completions per problem; the pipeline's k per attempt (default: %(default)s)")
    parser.add_argument("--retries", type=int, default=3, help="pipeline: further attempts (default: %(default)s)")
    parser.add_argument("--max-drawn", type=int, default=None, metavar="N",
                        help="pipeline: keep only solves that settled within N completions (its own confidence: "
                             "it draws again when its plans have no clear majority; default: any)")
    parser.add_argument("--temperature", type=float, default=1.0, help="(default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="per completion (default: per task)")
    parser.add_argument("--seed", type=int, default=0)
    keep = parser.add_argument_group("keeping")
    keep.add_argument("--max-chars", type=int, default=512, help="drop longer completions (default: %(default)s)")
    keep.add_argument("--per-problem", type=int, default=4, help="distinct kept completions per problem")
    keep.add_argument("--no-format-check", action="store_true", help="keep completions whose answer does not parse")
    keep.add_argument("--chunk-size", type=int, default=32, help="problems per journaled chunk (the resume unit)")
    keep.add_argument("--traces", default=None, metavar="STORE", help="trace store (default: DIR/traces.db)")
    http = parser.add_argument_group("with a URL teacher")
    http.add_argument("--teacher-model", default=None, help="served model name (default: the only one /models lists)")
    http.add_argument("--api-key", default=None, help="bearer token (default: $OPENAI_API_KEY when set)")
    http.add_argument("--attempts", type=int, default=4, help="tries per problem, with exponential backoff")
    http.add_argument("--backoff", type=float, default=0.5, metavar="SECONDS", help="first wait between tries")
    http.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS", help="per request")
    train = parser.add_argument_group("the student's SFT")
    train.add_argument("--steps", type=int, default=300, help="optimizer steps (default: %(default)s)")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--max-length", type=int, default=256, help="tokens per training row")
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    train.add_argument("--no-train", action="store_true", help="write the dataset only")
    parser.set_defaults(func=run)


def run(args) -> int:
    import json
    import os
    from pathlib import Path

    from reasoner.errors import ReasonerError
    from reasoner.tasks import get_task

    task = get_task(args.task)  # a typo in the task name should not wait for a model to load
    if args.level is not None and args.level not in task.levels:
        raise ReasonerError(f"task {task.name} has no level {args.level}; levels: {', '.join(map(str, task.levels))}")
    for name in ("n", "samples", "steps", "batch_size", "per_problem", "chunk_size", "attempts", "max_chars"):
        if getattr(args, name) < 1:
            raise ReasonerError(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.output)
    problems = task.problems("train", args.n, level=args.level, seed=args.seed)
    if not problems:
        raise ReasonerError(f"task {task.name} has no train split here (real data ships test sets only)")
    teacher = _teacher(args, task, out, args.api_key or os.environ.get("OPENAI_API_KEY"))
    collected = _collect(args, teacher, problems, out)
    _print_report(collected.report)
    if args.no_train:
        return 0
    student = _train_student(args, task, collected.dataset, out)
    print(f"student: {student} (lineage: {student / 'lineage.json'})")
    print(json.dumps({"dataset": str(collected.dataset), "rows": len(collected.rows), "student": str(student)}))
    return 0


def _teacher(args, task, out, api_key):
    from reasoner.api import Reasoner
    from reasoner.errors import ReasonerError
    from reasoner.model import is_checkpoint
    from reasoner.rl.distill import CheckpointTeacher, HTTPTeacher, MajorityVoteTeacher, PipelineTeacher
    from reasoner.sampling import Sampling

    url = args.teacher.startswith(("http://", "https://"))
    if not url and not is_checkpoint(args.teacher):
        raise ReasonerError(f"--teacher {args.teacher}: neither a checkpoint directory nor an http(s) URL")
    if args.teacher_majority and (url or args.teacher_pipeline):
        raise ReasonerError("--teacher-majority takes a local checkpoint teacher (not a URL, not --teacher-pipeline)")
    max_tokens = args.max_new_tokens or getattr(task, "max_new_tokens", 96)
    model_name = _served_model(args, api_key) if url else None
    if args.teacher_pipeline:
        reasoner = (Reasoner.from_openai(args.teacher, model_name, api_key, timeout=args.timeout,
                                         checkpoints=out / "pipeline.db", traces=args.traces or out / "traces.db")
                    if url else Reasoner.from_pretrained(args.teacher, checkpoints=out / "pipeline.db",
                                                         traces=args.traces or out / "traces.db"))
        options = {"samples": args.samples, "retries": args.retries, "temperature": args.temperature,
                   "max_tokens": max_tokens}
        return PipelineTeacher(reasoner, f"pipeline({args.teacher})", options, max_drawn=args.max_drawn)
    sampling = Sampling(args.temperature, max_tokens=max_tokens)
    if url:
        return HTTPTeacher(args.teacher, model_name, args.samples, sampling, api_key=api_key, timeout=args.timeout,
                           attempts=args.attempts, backoff_s=args.backoff)
    if args.teacher_majority:
        return MajorityVoteTeacher(args.teacher, args.samples, sampling, _prompt_style(task))
    return CheckpointTeacher(args.teacher, args.samples, sampling, _prompt_style(task))


def _prompt_style(task) -> str:
    return getattr(task, "prompt_style", "plain")  # generated tasks without one use the plain prompt


def _served_model(args, api_key) -> str:
    from reasoner.errors import ReasonerError
    from reasoner.evaluation.endpoint import list_models

    if args.teacher_model:
        return args.teacher_model
    names = list_models(args.teacher, api_key)
    if not names or len(names) > 1:
        raise ReasonerError(f"{args.teacher} serves {', '.join(names) if names else 'no listed model'}: "
                            "name one with --teacher-model")
    return names[0]


def _collect(args, teacher, problems, out):
    from reasoner.rl.distill import Filters, collect

    filters = Filters(max_chars=args.max_chars, require_format=not args.no_format_check,
                      per_problem=args.per_problem)
    try:
        return collect(teacher, problems, out, filters=filters, chunk_size=args.chunk_size, seed=args.seed,
                       store_path=args.traces)
    finally:
        if hasattr(teacher, "reasoner"):
            teacher.reasoner.close()


def _print_report(report: dict) -> None:
    print(f"kept {report['rows']} rows for {report['problems_with_rows']} of {report['problems']} problems "
          f"(drawn {report.get('drawn', 0)}: failed the check {report.get('failed_check', 0)}, unparseable "
          f"{report.get('unparseable', 0)}, no answer {report.get('no_answer', 0)}, too long {report.get('too_long', 0)}, "
          f"duplicates {report.get('duplicates', 0)}); teacher errors {report.get('teacher_errors', 0)} "
          f"after {report['retries']} retries")
    for example in report["unparseable_examples"]:
        print(f"  no parseable answer ({example['problem_id']}): {example.get('completion') or example.get('why')!r}")
    for example in report["error_examples"]:
        print(f"  teacher error ({example['problem_id']}): {example['error']}")
    if report["unanswered"]:
        print(f"  {len(report['unanswered'])} problems unanswered: rerun the same command to ask again")
    print(f"dataset: {report['dataset']}   report: {report['dataset'].rsplit('/', 1)[0]}/report.json   traces: "
          f"reasoner traces --store {report['trace_store']} list --source distill")


def _train_student(args, task, dataset, out):
    from reasoner.rl.recipe import Recipe, SFTStage, TaskConfig, GRPOStage
    from reasoner.rl.train import train_on_dataset

    recipe = Recipe(name="distill", model=args.student, output_dir=str(out), seed=args.seed, threads=args.threads,
                    traces=args.traces or str(out / "traces.db"),
                    task=TaskConfig(name=task.name, prompt_style=_prompt_style(task)),
                    sft=SFTStage(max_steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                                 warmup_steps=min(10, args.steps // 10), max_length=args.max_length),
                    grpo=GRPOStage(enabled=False))
    return train_on_dataset(recipe, args.student, dataset, stage="student")
