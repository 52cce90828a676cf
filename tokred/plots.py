"""Plots of comparison results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pareto_plot(rows: list[dict[str, Any]], path: Path, *, title: str = "") -> Path:
    """Accuracy against relative prefill FLOPs and against measured prefill latency, one point per strategy.

    Args:
        rows: Summary rows of ``tokred compare`` (``accuracy``, ``accuracy_ci_low/high``, ``relative_flops``,
            ``prefill_latency_s``, ``strategy``).
        path: PNG file to write.
        title: Figure title.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in (
        (axes[0], "relative_flops", "prefill FLOPs relative to unreduced"),
        (axes[1], "prefill_latency_s", "measured prefill latency (ms)"),
    ):
        _scatter(ax, rows, key, 1000.0 if key.endswith("_s") else 1.0)
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(title or "tokred compare: accuracy vs cost (95 % bootstrap intervals)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _scatter(ax: Any, rows: list[dict[str, Any]], key: str, scale: float) -> None:
    for row in rows:
        if row.get(key) is None:
            continue
        x, acc = row[key] * scale, row["accuracy"] * 100
        err = [[acc - row["accuracy_ci_low"] * 100], [row["accuracy_ci_high"] * 100 - acc]]
        ax.errorbar([x], [acc], yerr=err, fmt="o", capsize=4, label=row["strategy"])
        ax.annotate(row["strategy"], (x, acc), textcoords="offset points", xytext=(6, 6))
    ax.legend(loc="lower right", fontsize="small")
