"""PNG plots of a run from the Trainer's log history: loss and token accuracy (SFT); reward and its parts, accuracy,
completion length and KL when used (GRPO); MaxVio and MTP loss (both)."""
from __future__ import annotations

from pathlib import Path

PANELS = (
    ("loss", "loss", "training loss"),
    ("mean_token_accuracy", "token accuracy", "fraction of next tokens right"),
    ("reward", "reward", "total reward"),
    ("rewards/accuracy_reward/mean", "accuracy", "accuracy reward (fraction correct)"),
    ("completions/mean_length", "completion length", "tokens"),
    ("kl", "KL", "KL(policy || reference)"),
    ("maxvio", "MaxVio", "max load / mean load - 1 (mean over MoE layers)"),
    ("mtp_loss", "MTP loss", "cross-entropy of the next-next token(s)"),
    ("mtp_acceptance", "MTP acceptance", "share of drafts accepted in rollouts"),
)


def series(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(row["step"], row[key]) for row in log_history if row.get(key) is not None and "step" in row]
    return [s for s, _ in points], [v for _, v in points]


def plot_training(log_history: list[dict], path: Path, title: str) -> Path | None:
    """One PNG with a panel per metric that the run logged; None if it logged none of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grpo = bool(series(log_history, "reward")[0])
    skip = {"loss"} if grpo else set()  # GRPO's loss is a clipped surrogate: reward says more
    panels = [(key, name, unit) for key, name, unit in PANELS if key not in skip and series(log_history, key)[0]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (key, name, unit) in zip(axes[0], panels):
        steps, values = series(log_history, key)
        ax.plot(steps, values, color="black" if key == "reward" else "tab:blue", linewidth=1.2,
                label="total" if key == "reward" else None)
        if key == "reward":  # each reward function's mean alongside the (weighted) total
            parts = sorted({k for row in log_history for k in row
                            if k.startswith("rewards/") and k.endswith("/mean")})
            for part in parts:
                part_steps, part_values = series(log_history, part)
                ax.plot(part_steps, part_values, linewidth=0.9, label=part.split("/")[1].removesuffix("_reward"))
            if parts:
                ax.legend(fontsize=7)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel(unit, fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
