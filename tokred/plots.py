"""Plots of comparison results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pareto_plot(rows: list[dict[str, Any]], path: Path, *, title: str = "") -> Path:
    """Accuracy against relative prefill FLOPs and against measured prefill latency: one curve per strategy (its
    points at the budgets of a ``--match`` sweep, or one point), 95 % bootstrap intervals, the unreduced model as a
    star, and the Pareto frontier across all methods (the most accurate point at or below each cost).

    Off-target points (a budget the strategy could not reach, evaluated at the nearest one) are drawn hollow at their
    measured cost.

    Args:
        rows: Summary rows of ``tokred compare`` (``strategy``, ``accuracy``, ``accuracy_ci_low/high``,
            ``relative_flops``, ``prefill_latency_s``, optionally ``on_target``).
        path: PNG file to write.
        title: Figure title.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, label in (
        (axes[0], "relative_flops", "prefill FLOPs relative to unreduced"),
        (axes[1], "prefill_latency_s", "measured prefill latency, batch 1 (ms)"),
    ):
        scale = 1000.0 if key.endswith("_s") else 1.0
        _curves(ax, rows, key, scale)
        _frontier(ax, pareto_front(rows, key), key, scale)
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
    fig.suptitle(title or "tokred compare: accuracy vs cost (95 % bootstrap intervals)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pareto_front(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The rows no other row beats: none is at most as costly (``key``) and more accurate, or cheaper and at least
    as accurate. Sorted by cost; rows without ``key`` are ignored.

    Args:
        rows: Summary rows (``accuracy`` and ``key``).
        key: The cost column, e.g. ``relative_flops``.
    """
    usable = sorted((r for r in rows if r.get(key) is not None), key=lambda r: (r[key], -r["accuracy"]))
    front: list[dict[str, Any]] = []
    for row in usable:
        if not front or row["accuracy"] > front[-1]["accuracy"]:
            front.append(row)
    return front


def _curves(ax: Any, rows: list[dict[str, Any]], key: str, scale: float) -> None:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get(key) is not None:
            groups.setdefault(row["strategy"], []).append(row)
    for name, group in groups.items():
        group = sorted(group, key=lambda r: (r.get("relative_flops") or 0.0, r[key]))  # along the budget
        xs = [r[key] * scale for r in group]
        ys = [r["accuracy"] * 100 for r in group]
        err = [[y - r["accuracy_ci_low"] * 100 for y, r in zip(ys, group)],
               [r["accuracy_ci_high"] * 100 - y for y, r in zip(ys, group)]]  # fmt: skip
        if name == "none":
            ax.errorbar(xs, ys, yerr=err, fmt="*", color="black", markersize=12, capsize=4, label="none (unreduced)")
            continue
        line = ax.errorbar(xs, ys, yerr=err, fmt="-o", capsize=3, alpha=0.85, label=name)
        off = [(x, y) for x, y, r in zip(xs, ys, group) if not r.get("on_target", True)]
        if off:
            colour = line[0].get_color()
            ax.plot(*zip(*off), "o", markersize=9, markerfacecolor="white", markeredgecolor=colour)


def _frontier(ax: Any, front: list[dict[str, Any]], key: str, scale: float) -> None:
    if len(front) < 2:
        return
    xs = [r[key] * scale for r in front]
    ys = [r["accuracy"] * 100 for r in front]
    ax.step(xs, ys, where="post", color="grey", linestyle="--", linewidth=1.2, label="Pareto frontier", zorder=0)


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


def token_groups(stats: Any, image_token_id: int, input_ids: Any, sample: int) -> list[int] | None:
    """For each original visual token of one single-image sample: the sequence position of the token it went into
    (-1: dropped before the LLM), when a merger recorded it; ``None`` otherwise (nothing merged, or no record).

    Args:
        stats: ``handle.stats`` of the prefill (``None``: unpatched).
        image_token_id: Placeholder id of visual tokens.
        input_ids: The prompt as given to the model, shape (B, N).
        sample: Row of the batch.
    """
    if stats is None:
        return None
    provenance = [pos for s, pos in stats.visual_provenance if s == sample]
    if not provenance or int((input_ids[sample] == image_token_id).sum()) != len(provenance[0]):
        return None
    return [int(p) for p in provenance[0].tolist()]


def kept_patch_figure(
    images: list[Any],
    depths: dict[str, list[list[float] | None]],
    grid: tuple[int, int],
    path: Path,
    groups: dict[str, list[list[int] | None]] | None = None,
) -> Path:
    """Which patches survived, on the model's real image grid: one row per sample, one column per strategy.

    Each patch is shaded by how deep into the decoder its (possibly merged) token survives: clear = all layers,
    dark = dropped before the LLM.

    Args:
        images: The samples' images (PIL), already at the model's input resolution or resized here.
        depths: ``{strategy: [per-sample survival depths (rows * cols values) or None]}``.
        grid: (rows, cols) of the visual tokens.
        path: PNG to write.
        groups: ``{strategy: [per-sample token each patch went into (see `token_groups`) or None]}``; where patches
            were merged, white lines outline the patches that share a token.
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
            owner = (groups or {}).get(name, [None] * len(images))[r]
            if owner is not None and len(owner) == grid[0] * grid[1]:
                _merge_outlines(ax, np.asarray(owner).reshape(grid))
    fig.suptitle(
        "surviving patches (brightness = share of decoder layers that keep the patch's token; white lines outline "
        "patches merged into one token)",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _merge_outlines(ax: Any, owner: Any) -> None:
    """White segments between neighbouring patches that went into different tokens, drawn only when some token
    holds several patches (a 14-pixel cell per patch)."""
    import numpy as np

    kept = owner[owner >= 0]
    if kept.size == 0 or np.unique(kept).size == kept.size:
        return
    rows, cols = owner.shape
    segments = []
    for i in range(rows):
        for j in range(cols):
            if j + 1 < cols and owner[i, j] != owner[i, j + 1]:
                segments.append(([(j + 1) * 14 - 0.5] * 2, [i * 14 - 0.5, (i + 1) * 14 - 0.5]))
            if i + 1 < rows and owner[i, j] != owner[i + 1, j]:
                segments.append(([j * 14 - 0.5, (j + 1) * 14 - 0.5], [(i + 1) * 14 - 0.5] * 2))
    for xs, ys in segments:
        ax.plot(xs, ys, color="white", linewidth=0.6)
