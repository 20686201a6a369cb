"""The pipeline against its baselines and its control, on one task's problems, at the same sample budget.

For each problem the pipeline solves `Problem.for_solver()` (no answer, no hidden tests); then:
- direct: one greedy completion of the same question;
- sampled pass@1 and maj@N: N sampled completions at the pipeline's temperature, N the mean number of
  completions the pipeline drew per problem (planner calls included), so both spend the same samples;
- the question-blind control (controls.BlindBackend), direct and through the same pipeline.
Only the grader (grading.py) ever reads the gold answers and hidden tests.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from reasoner.api import Reasoner
from reasoner.evaluation.controls import BlindBackend
from reasoner.evaluation.grading import as_completion, grade_many
from reasoner.evaluation.metrics import bootstrap, mean, voted_completion
from reasoner.serving.backends import Backend, Sampling
from reasoner.progress import progress
from reasoner.prompts import render
from reasoner.tasks.base import Problem


@dataclass(frozen=True)
class PipelineSettings:
    """What the pipeline may spend per problem; chosen on the validation split (benchmarks/pipeline.py)."""
    samples: int = 8          # k completions per attempt
    retries: int = 3          # further attempts: after a failed check, or (plans) without a majority
    temperature: float = 1.0
    max_tokens: int = 128
    feedback: bool = False    # show a failed answer on retry (models trained only on questions ignore it)

    def options(self) -> dict:
        return asdict(self)


def compare_task(backend: Backend, problems: Sequence[Problem], settings: PipelineSettings, *,
                 workdir: str | Path, traces: str | Path | None = None, seed: int = 0,
                 label: str = "") -> dict:
    """{n, direct_accuracy, sampled_pass_at_1, maj_accuracy, mean_samples, pipeline_accuracy,
    blind_direct_accuracy, blind_pipeline_accuracy} (fractions), with 95% CIs under `ci95`."""
    workdir = Path(workdir)
    pipeline, drawn = solve_through_pipeline(backend, problems, settings, workdir / "pipeline.db", traces, seed,
                                             f"{label} pipeline")
    n_samples = max(1, round(mean(drawn)))
    direct = grade_many(problems, first_texts(backend, problems, 1, 0.0, settings.max_tokens, seed,
                                              f"{label} direct"))
    sampled = many_texts(backend, problems, n_samples, settings.temperature, settings.max_tokens, seed,
                         f"{label} {n_samples} samples")
    flat = grade_many([p for p in problems for _ in range(n_samples)], [t for texts in sampled for t in texts])
    pass_at_1 = [sum(flat[i * n_samples:(i + 1) * n_samples]) / n_samples for i in range(len(problems))]
    maj = grade_many(problems, [voted_completion(p.kind, texts) for p, texts in zip(problems, sampled)])
    kind = problems[0].kind if problems else "math"
    blind = BlindBackend(kind, seed)
    blind_direct = grade_many(problems, first_texts(blind, problems, 1, 0.0, settings.max_tokens, seed, None))
    blind_pipeline, _ = solve_through_pipeline(BlindBackend(kind, seed + 1), problems, settings,
                                               workdir / "blind-pipeline.db", workdir / "blind-traces.db", seed,
                                               f"{label} blind control")
    figures = {"direct_accuracy": direct, "sampled_pass_at_1": pass_at_1, "maj_accuracy": maj,
               "pipeline_accuracy": pipeline, "blind_direct_accuracy": blind_direct,
               "blind_pipeline_accuracy": blind_pipeline}
    return {"n": len(problems), **{k: mean(v) for k, v in figures.items()}, "mean_samples": mean(drawn),
            "maj_samples": n_samples, "settings": settings.options(),
            "ci95": {k: bootstrap(v).to_dict()["ci95"] for k, v in figures.items()}}


def solve_through_pipeline(backend: Backend, problems: Sequence[Problem], settings: PipelineSettings,
                           checkpoints: Path, traces, seed: int, description: str | None
                           ) -> tuple[list[bool], list[int]]:
    """(right or wrong per problem, completions drawn per problem)."""
    checkpoints.parent.mkdir(parents=True, exist_ok=True)
    with Reasoner(backend, checkpoints=checkpoints, traces=traces) as reasoner:
        solutions = [reasoner.solve(p.for_solver(), seed=seed + i, **settings.options())
                     for i, p in enumerate(progress(problems, description, total=len(problems)))]
    right = grade_many(problems, [as_completion(s.answer) for s in solutions])
    return right, [s.samples_drawn for s in solutions]


def many_texts(backend: Backend, problems: Sequence[Problem], n: int, temperature: float, max_tokens: int,
               seed: int, description: str | None) -> list[list[str]]:
    """n completions of each problem's plain question (the direct prompt), one batched call per problem."""
    return [[g.text for g in backend.generate(render("solve", "compact", question=p.question), n,
                                              Sampling(temperature, max_tokens=max_tokens, seed=seed + i))]
            for i, p in enumerate(progress(problems, description, total=len(problems)))]


def first_texts(backend, problems, n, temperature, max_tokens, seed, description) -> list[str]:
    return [texts[0] for texts in many_texts(backend, problems, n, temperature, max_tokens, seed, description)]
