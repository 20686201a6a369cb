"""PNG plots of a run's reward, accuracy, completion length, MaxVio and MTP loss, from the Trainer's log history."""
from __future__ import annotations

from pathlib import Path

PANELS = (
    ("reward", "reward", "total reward"),
    ("rewards/accuracy_reward/mean", "accuracy", "accuracy reward (fraction correct)"),
    ("completions/mean_length", "completion length", "tokens"),
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

    panels = [(key, name, unit) for key, name, unit in PANELS if series(log_history, key)[0]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (key, name, unit) in zip(axes[0], panels):
        steps, values = series(log_history, key)
        ax.plot(steps, values, color="tab:blue", linewidth=1.2)
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
