"""Direct single-shot answering vs the verified pipeline, on held-out multi-step arithmetic.

    python benchmarks/pipeline.py --model runs/demo/checkpoint --n 200 --out runs/demo/summary.json

Writes direct_accuracy, pipeline_accuracy, n_pipeline, pass_at_1, maj_at_k (and the plans-only
ablation) into the summary JSON, keeping its other keys. `make demo` calls the same function,
reasoner.pipeline.evaluate.compare.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--n", type=int, default=200, help="held-out problems")
    parser.add_argument("--level", type=int, default=6, help="arithmetic level (6: 8 terms, as make demo)")
    parser.add_argument("--k", type=int, default=8, help="samples per attempt, for voting and maj@k")
    parser.add_argument("--retries", type=int, default=3, help="retries after a failed verification")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--code", type=int, default=0, help="also solve this many held-out code tasks (level 1)")
    parser.add_argument("--no-ablation", dest="ablation", action="store_false", help="skip the plans-only run")
    parser.add_argument("--out", default="runs/demo/summary.json", help="summary JSON to update")
    args = parser.parse_args(argv)

    from reasoner.errors import ReasonerError
    from reasoner.pipeline.evaluate import compare, heldout_code, write_summary

    try:
        results = compare(args.model, n=args.n, level=args.level, k=args.k, retries=args.retries,
                          max_tokens=args.max_tokens, temperature=args.temperature, ablation=args.ablation,
                          code_problems=heldout_code(args.code) if args.code else ())
    except ReasonerError as err:
        print(f"benchmarks/pipeline.py: error: {err}", file=sys.stderr)
        return 2
    write_summary(results, args.out)
    print(json.dumps(results, indent=2))
    gain = results["pipeline_accuracy"] - results["direct_accuracy"]
    print(f"pipeline - direct = {gain * 100:+.1f} points (target >= +20); "
          f"maj@{args.k} {results['maj_at_k']:.3f} vs pass@1 {results['pass_at_1']:.3f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
