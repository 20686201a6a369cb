"""Choose the pipeline's settings on the validation split: the pipeline against direct answering and
majority voting at the same sample budget, over a grid of k, retries and temperature (and levels).

    python benchmarks/pipeline.py --model runs/demo/grpo/final --task countdown --levels 1 2 \\
        --samples 4 8 --retries 1 3 --temperatures 0.7 1.0 --n 100

Runs on `--split validation` by default and prints one row per setting and the chosen one: the highest
pipeline accuracy, ties to the smaller budget. The demo then reports the test split once with it
(reasoner/demo.py PIPELINE_TASKS). Choosing on `--split heldout` is refused.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--task", required=True, choices=("word", "countdown", "code"))
    parser.add_argument("--levels", type=int, nargs="+", default=[1])
    parser.add_argument("--samples", type=int, nargs="+", default=[8], help="k per attempt")
    parser.add_argument("--retries", type=int, nargs="+", default=[3])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--n", type=int, default=100, help="validation problems per level")
    parser.add_argument("--split", default="validation", choices=("validation",),
                        help="settings are chosen on validation only; the test split is the demo's, reported once")
    args = parser.parse_args(argv)

    from reasoner.evaluation.compare import PipelineSettings, compare_task
    from reasoner.serving.backends import LocalBackend
    from reasoner.tasks import get_task

    backend = LocalBackend.from_pretrained(args.model)
    rows = []
    print("level  k  retries  T     direct  maj@N   pipeline  N     blind d/p", flush=True)
    for level, k, retries, temperature in itertools.product(args.levels, args.samples, args.retries,
                                                            args.temperatures):
        problems = get_task(args.task).problems(args.split, args.n, level=level)
        settings = PipelineSettings(samples=k, retries=retries, temperature=temperature, max_tokens=args.max_tokens)
        with tempfile.TemporaryDirectory() as workdir:
            result = compare_task(backend, problems, settings, workdir=workdir, traces=f"{workdir}/traces.db")
        rows.append((level, settings, result))
        print(f"{level:>5}  {k:>1}  {retries:>7}  {temperature:<4}  {result['direct_accuracy']:.3f}   "
              f"{result['maj_accuracy']:.3f}   {result['pipeline_accuracy']:.3f}     {result['maj_samples']:<4}  "
              f"{result['blind_direct_accuracy']:.3f}/{result['blind_pipeline_accuracy']:.3f}", flush=True)
    level, settings, result = max(rows, key=lambda row: (row[2]["pipeline_accuracy"], -row[2]["mean_samples"]))
    print(f"chosen on {args.split}: level {level}, {settings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
