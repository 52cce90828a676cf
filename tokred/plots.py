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


def survival_depth(stats: Any, input_ids: Any, image_token_id: int, sample: int, num_layers: int) -> list[float] | None:
    """For each original visual token of one single-image sample: the share of decoder layers that still process
    the token it went into (0 when it was dropped before the LLM).

    Args:
        stats: ``handle.stats`` of the prefill (``None``: unpatched, everything survives everywhere).
        input_ids: The prompt as given to the model, shape (B, N).
        image_token_id: Placeholder id of visual tokens.
        sample: Row of the batch.
        num_layers: Decoder depth.

    Returns:
        One value in [0, 1] per original visual token, or ``None`` when the vision tower merged (no per-patch map).
    """
    import torch

    n_patches = int((input_ids[sample] == image_token_id).sum())
    if stats is None:
        return [1.0] * n_patches
    provenance = [pos for s, pos in stats.visual_provenance if s == sample]
    if provenance:
        positions = provenance[0]
    elif stats.tokens_per_layer and stats.tokens_per_layer[0] != input_ids.shape[1]:
        return None  # the vision tower merged: the decoder's tokens no longer map to single patches
    else:
        positions = torch.nonzero(input_ids[sample] == image_token_id)[:, 0]
    alive = torch.zeros(positions.shape[0])
    keep = None
    for layer in range(num_layers):
        if layer in stats.kept_indices:
            keep = set(stats.kept_indices[layer][sample].tolist())
        alive += torch.tensor([p >= 0 and (keep is None or int(p) in keep) for p in positions.tolist()]).float()
    return (alive / num_layers).tolist()


def kept_patch_figure(
    images: list[Any], depths: dict[str, list[list[float] | None]], grid: tuple[int, int], path: Path
) -> Path:
    """Which patches survived, on the model's real image grid: one row per sample, one column per strategy.

    Each patch is shaded by how deep into the decoder its (possibly merged) token survives: clear = all layers,
    dark = dropped before the LLM.

    Args:
        images: The samples' images (PIL), already at the model's input resolution or resized here.
        depths: ``{strategy: [per-sample survival depths (rows * cols values) or None]}``.
        grid: (rows, cols) of the visual tokens.
        path: PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(depths)
    fig, axes = plt.subplots(len(images), len(names), figsize=(2.6 * len(names), 2.6 * len(images)), squeeze=False)
    for r, image in enumerate(images):
        base = np.asarray(image.convert("RGB").resize((grid[1] * 14, grid[0] * 14))).astype(float) / 255
        for c, name in enumerate(names):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            depth = depths[name][r]
            if depth is None or len(depth) != grid[0] * grid[1]:
                ax.imshow(base)
                ax.text(0.5, 0.5, "no per-patch map", ha="center", transform=ax.transAxes, fontsize=8)
                continue
            shade = np.kron(np.asarray(depth).reshape(grid), np.ones((14, 14)))[..., None]
            ax.imshow(base * (0.15 + 0.85 * shade))
    fig.suptitle("surviving patches (brightness = share of decoder layers that keep the patch's token)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
