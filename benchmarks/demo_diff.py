"""Two `reasoner demo` runs side by side: every accuracy figure of their summary.json, its 95% CI, and a 95% CI
of the difference, as a markdown table.

    python benchmarks/demo_diff.py runs/demo/summary.json runs/demo-mtp/summary.json

The difference's interval is Newcombe's hybrid score interval for two independent proportions (method 10 of
Newcombe 1998), from each figure's count of problems. Both runs score the same test problems, so the runs are
paired and this interval is, if anything, too wide. Sampled pass@1 averages several samples per problem, so for it
the two reported CIs' half-widths are combined instead. A difference whose interval excludes 0 is marked.
"""
from __future__ import annotations

import argparse
import json
import math

TASK_FIGURES = ("direct_accuracy", "sampled_pass_at_1", "maj_accuracy", "pipeline_accuracy",
                "blind_direct_accuracy", "blind_pipeline_accuracy")
CHECKPOINT_FIGURES = {"sft_accuracy": "sft", "grpo_accuracy": "grpo", "sft_equal_compute_accuracy": "sft_equal_compute"}
Z95 = 1.96


def wilson(successes: int, n: int) -> tuple[float, float]:
    p = successes / n
    scale = 1 + Z95 ** 2 / n
    centre = (p + Z95 ** 2 / (2 * n)) / scale
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / scale
    return centre - half, centre + half


def newcombe(p1: float, n1: int, p2: float, n2: int) -> tuple[float, float]:
    """95% CI of p2 - p1."""
    low1, high1 = wilson(round(p1 * n1), n1)
    low2, high2 = wilson(round(p2 * n2), n2)
    d = p2 - p1
    return d - math.hypot(p2 - low2, high1 - p1), d + math.hypot(high2 - p2, p1 - low1)


def rows(a: dict, b: dict) -> list[tuple]:
    """(figure, value a, CI a, value b, CI b, difference CI)."""
    out = []
    for task, ta in a["pipeline_tasks"].items():
        tb = b["pipeline_tasks"][task]
        for key in TASK_FIGURES:
            pa, pb, ca, cb = ta[key], tb[key], ta["ci95"][key], tb["ci95"][key]
            if key == "sampled_pass_at_1":
                half = math.hypot((ca[1] - ca[0]) / 2, (cb[1] - cb[0]) / 2)
                diff = (pb - pa - half, pb - pa + half)
            else:
                diff = newcombe(pa, ta["n"], pb, tb["n"])
            out.append((f"{task} {key} (n={ta['n']})", pa, ca, pb, cb, diff))
    for key, ci in CHECKPOINT_FIGURES.items():
        out.append((f"countdown L{a['eval_level']} {key} (n={a['n_eval']})", a[key], a["eval_ci95"][ci], b[key],
                    b["eval_ci95"][ci], newcombe(a[key], a["n_eval"], b[key], b["n_eval"])))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="summary.json of the first run")
    ap.add_argument("b", help="summary.json of the second run")
    args = ap.parse_args(argv)
    a, b = (json.load(open(path)) for path in (args.a, args.b))
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    ci = lambda c: f"[{100 * c[0]:.1f}, {100 * c[1]:.1f}]"  # noqa: E731
    print(f"| figure | {args.a} [95% CI] | {args.b} [95% CI] | difference [95% CI] |")
    print("|---|---:|---:|---:|")
    for name, pa, ca, pb, cb, (low, high) in rows(a, b):
        outside = " **outside noise**" if low > 0 or high < 0 else ""
        print(f"| {name} | {pct(pa)} {ci(ca)} | {pct(pb)} {ci(cb)} | "
              f"{100 * (pb - pa):+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]{outside} |")
    for key in ("maxvio_balanced", "maxvio_unbalanced"):
        print(f"| {key} (no CI) | {a[key]} | {b[key]} | |")
    for task in a["pipeline_tasks"]:
        print(f"| {task}: N, completions per problem | {a['pipeline_tasks'][task]['mean_samples']} | "
              f"{b['pipeline_tasks'][task]['mean_samples']} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
