"""Train gamma-MoD's shared router on the reference model (CPU, resumable): the sibling of ``train_reference``.

Only the router ``Linear(hidden, 2)`` is trained; the reference model (trained projector + LoRA merged) stays
frozen. Data, packing and the vision-feature cache are ``train_reference``'s (:class:`~tokred.eval.train_reference.
Packer`, ``_qa_segments``, ``_load_features``): each step packs the ``shapes`` questions of ``--batch`` training images
after the shared ``[system + user header + image]`` prefix. The model runs patched with ``gamma-mod``: at every MoD
layer the router's top ``capacity`` share of the routable tokens (the prefix: instruction and image tokens; the
question segments are never routable) runs the layer, the rest skip it, and each processed routable token's MLP
output is multiplied by its "process" probability, so the LM loss on the answers reaches the router. The loss is
the answer cross-entropy plus ``--aux`` (0.01, as in the paper) times the router's cross-entropy against its own
top-k labels at every MoD layer.

Seeded; ``OUT/checkpoint.pt`` every ``--ckpt-every`` steps and at the end, ``--resume`` continues, ``--max-minutes``
stops with a checkpoint. ``--export`` writes ``tokred/eval/weights/gamma_mod_router.safetensors`` (weight (2, C),
bias (2,), metadata) and ``gamma_mod_router.json`` / ``GAMMA_MOD_TRAINING.md`` (command, seed, steps, wall time,
learning curve).

Example::

    OMP_NUM_THREADS=1 nice -n 10 python -m tokred.eval.train_router --out runs/gamma-mod --steps 120 \\
        --max-minutes 30 --export
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tokred.eval import shapes
from tokred.eval.train_reference import Packer, _load_features, _log, _lr_factor, _qa_segments, _save, packed_logits

__all__ = ["build_parser", "main", "router_loss"]

WEIGHTS = Path(__file__).with_name("weights")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(
        prog="python -m tokred.eval.train_router",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("runs/gamma-mod"), help="run directory (checkpoint, init)")
    p.add_argument("--features", type=Path, default=None, help="feature cache dir (default OUT/features)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--bench-seed", type=int, default=shapes.DEFAULT_SEED, help="shapes benchmark seed")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--train-images", type=int, default=200, help="training images (feature cache size)")
    p.add_argument("--steps", type=int, default=120, help="optimiser steps")
    p.add_argument("--batch", type=int, default=1, help="images per step")
    p.add_argument("--per-type", type=int, default=2, help="questions per type per image")
    p.add_argument("--count-per-type", type=int, default=2, help="count questions per image")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate")
    p.add_argument("--warmup", type=int, default=5, help="warm-up steps")
    p.add_argument("--aux", type=float, default=0.01, help="weight of the router cross-entropy (paper: 0.01)")
    p.add_argument("--capacity", type=float, default=0.5, help="share of routable tokens a MoD layer processes")
    p.add_argument("--skip-first", type=int, default=3, help="leading layers that are never MoD layers")
    p.add_argument("--skip-last", type=int, default=1, help="trailing layers that are never MoD layers")
    p.add_argument("--init-bias", type=float, default=3.0, help="initial process-minus-skip bias (p ~ 0.95)")
    p.add_argument("--val-items", type=int, default=8, help="validation images for the learning curve")
    p.add_argument("--val-cache", type=int, default=50, help="validation images in the feature cache (>= val-items)")
    p.add_argument("--eval-every", type=int, default=50, help="validation every N steps (0: never)")
    p.add_argument("--ckpt-every", type=int, default=10, help="checkpoint every N steps")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop (with a checkpoint) after this many")
    p.add_argument("--export", action="store_true", help="write the router to tokred/eval/weights when done")
    p.add_argument("--export-dir", type=Path, default=WEIGHTS, help="where --export writes")
    return p


def _init_router(path: Path, hidden: int, bias: float, seed: int) -> None:
    """A small random weight and a bias that starts every token near "process" (the unreduced model's outputs)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(2, hidden, generator=g) * hidden**-0.5 * 0.1
    save_file({"weight": weight, "bias": torch.tensor([0.0, bias])}, str(path))


def router_loss(
    record: list[tuple[int, torch.Tensor]], routed: dict[int, torch.Tensor], routable: torch.Tensor
) -> torch.Tensor:
    """gamma-MoD's auxiliary loss: the router's cross-entropy against its top-k labels (1 = processed), over the
    routable tokens of every MoD layer, averaged over the layers.

    Args:
        record: ``(layer, logits (B, N, 2))`` of each MoD layer of the last prefill.
        routed: Layer -> processed original indices (B, K) (``handle.stats.routed_indices``).
        routable: Routable tokens, shape (B, N) bool.
    """
    losses = []
    for layer, logits in record:
        label = torch.zeros(routable.shape, dtype=torch.long).scatter(1, routed[layer], 1)  # (B, N)
        losses.append(F.cross_entropy(logits[routable], label[routable]))
    return torch.stack(losses).mean()


def _step(model: Any, handle: Any, router: Any, packer: Packer, items: list, feats: torch.Tensor) -> dict[str, Any]:
    """One forward/backward on a packed batch; returns the losses."""
    from tokred.ops.routing import routable_mask

    batch = packer.pack(items)
    visual = batch.input_ids == packer.image_token_id  # (B, L)
    real = batch.position_ids > 0  # right padding has position 0; so has the first token
    real[:, 0] = True
    handle.mark_prompt(visual, real)
    router.record = []
    logits = packed_logits(model, batch, feats)
    lm = F.cross_entropy(logits.float(), batch.sup_tgt)
    routable = routable_mask(visual, real)
    aux = router_loss(router.record, handle.stats.routed_indices, routable)
    with torch.no_grad():
        p = torch.stack([lg.softmax(-1)[..., 1][routable].mean() for _, lg in router.record]).mean()
    router.record = None
    return {"lm": lm, "aux": aux, "p": float(p)}


@torch.no_grad()
def _val_ce(model: Any, handle: Any, router: Any, packer: Packer, val: tuple[list, torch.Tensor]) -> float:
    """Answer cross-entropy on the validation images, routed when ``handle`` is given, else on the plain model."""
    items, feats = val
    total = 0.0
    for i in range(len(items)):
        if handle is None:
            batch = packer.pack(items[i : i + 1])
            total += F.cross_entropy(packed_logits(model, batch, feats[i : i + 1]).float(), batch.sup_tgt).item()
        else:
            total += _step(model, handle, router, packer, items[i : i + 1], feats[i : i + 1])["lm"].item()
    return total / len(items)


def _export(router: Any, args: argparse.Namespace, state: dict[str, Any], hidden: int) -> None:
    from safetensors.torch import save_file

    d: Path = args.export_dir
    d.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": "tokred reference (LlavaForConditionalGeneration, SmolLM2-135M + DINOv2-S)",
        "hidden_size": str(hidden),
        "capacity": str(args.capacity),
        "skip_first": str(args.skip_first),
        "skip_last": str(args.skip_last),
        "steps": str(state["step"]),
    }
    w = router.linear
    save_file(
        {"weight": w.weight.detach().contiguous(), "bias": w.bias.detach().contiguous()},
        str(d / "gamma_mod_router.safetensors"),
        metadata=meta,
    )
    keys = ("step", "curve", "val", "val_unrouted", "wall_s", "commands")
    record = {k: state[k] for k in keys} | {"seed": args.seed, "meta": meta}
    (d / "gamma_mod_router.json").write_text(json.dumps(record, indent=1) + "\n")
    (d / "GAMMA_MOD_TRAINING.md").write_text(_record_md(record))
    _log(f"exported the router to {d}")


def _record_md(rec: dict[str, Any]) -> str:
    curve = rec["curve"]
    every = max(1, len(curve) // 12)
    rows = [c for i, c in enumerate(curve) if i % every == 0 or i == len(curve) - 1]
    lines = [
        f"Trained with `{rec['commands'][-1]}`"
        + (f" (resumed {len(rec['commands']) - 1} times)" if len(rec["commands"]) > 1 else "")
        + f": {rec['step']} steps, seed {rec['seed']}, {rec['wall_s'] / 60:.1f} min wall on a shared 2-core CPU.",
        "",
        "| step | answer CE (mean of the last 10 steps) | router CE | mean p(process) of routable tokens | s/step |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {c['step']} | {c['lm_avg']:.4f} | {c['aux']:.4f} | {c['p']:.3f} | {c['s']:.1f} |" for c in rows]
    lines += [
        "",
        f"Validation answer cross-entropy ({len(rec['val'])} evaluations on the first validation images of `shapes`; "
        f"the unreduced model: {rec['val_unrouted']:.4f}):",
        "",
        "| step | routed answer CE |",
        "|---|---|",
    ]
    lines += [f"| {v['step']} | {v['ce']:.4f} |" for v in rec["val"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or resume) router training; see ``--help``."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"

    import tokred
    from tokred.eval.reference import load_reference_model

    model, processor = load_reference_model()
    model.requires_grad_(False)
    hidden = int(model.config.text_config.hidden_size)
    init = out / "router_init.safetensors"
    if not init.is_file():
        _init_router(init, hidden, args.init_bias, args.seed)
    packer = Packer(processor, model.config.image_token_id)
    root = args.features or out / "features"
    feats = _load_features(model, processor, 0, args.train_images, args.bench_seed, root)
    start = shapes.SPLITS["val"][0]
    val_feats = _load_features(model, processor, start, args.val_cache, args.bench_seed, root)[: args.val_items]
    val_items = [
        _qa_segments(shapes.item(start + i, args.bench_seed)[0], args.per_type, args.count_per_type)
        for i in range(args.val_items)
    ]
    val = (val_items, val_feats)
    unrouted = _val_ce(model, None, None, packer, val)
    options = dict(capacity=args.capacity, skip_first=args.skip_first, skip_last=args.skip_last)
    handle = tokred.patch(model, "gamma-mod", router=str(init), **options)
    router: Any = handle.strategy.router
    router.linear.requires_grad_(True)
    opt = torch.optim.AdamW(router.linear.parameters(), lr=args.lr, weight_decay=0.0)
    state: dict[str, Any] = {"step": 0, "curve": [], "wall_s": 0.0, "commands": [], "val": []}
    if args.resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        router.linear.load_state_dict(state["router"])
        opt.load_state_dict(state["opt"])
        _log(f"resumed at step {state['step']}")
    state["commands"].append("python -m tokred.eval.train_router " + shlex.join(sys.argv[1:] if argv is None else argv))
    state["val_unrouted"] = unrouted
    if not state["val"]:
        state["val"].append({"step": 0, "ce": _val_ce(model, handle, router, packer, val)})
    last = state["val"][-1]
    _log(f"validation answer CE at step {last['step']}: {last['ce']:.4f} (unrouted {unrouted:.4f})")
    perm = torch.randperm(args.train_images, generator=torch.Generator().manual_seed(args.seed))
    t0, wall0 = time.perf_counter(), state["wall_s"]
    while state["step"] < args.steps:
        s = state["step"]
        idx = [int(perm[(s * args.batch + j) % args.train_images]) for j in range(args.batch)]
        items = [_qa_segments(shapes.item(i, args.bench_seed)[0], args.per_type, args.count_per_type) for i in idx]
        for g in opt.param_groups:
            g["lr"] = args.lr * _lr_factor(s, args.steps, args.warmup, 0.3)
        t = time.perf_counter()
        loss = _step(model, handle, router, packer, items, feats[idx])
        opt.zero_grad()
        (loss["lm"] + args.aux * loss["aux"]).backward()
        opt.step()
        lm_hist = [c["lm"] for c in state["curve"][-9:]] + [loss["lm"].item()]
        p = loss["p"]
        state["curve"].append(
            {"step": s + 1, "lm": lm_hist[-1], "lm_avg": sum(lm_hist) / len(lm_hist), "aux": loss["aux"].item(),
             "p": p, "s": time.perf_counter() - t}
        )  # fmt: skip
        state["step"] = s + 1
        state["wall_s"] = wall0 + time.perf_counter() - t0
        c = state["curve"][-1]
        _log(f"step {s + 1}/{args.steps} lm {c['lm']:.4f} aux {c['aux']:.4f} p {c['p']:.3f} ({c['s']:.1f} s)")
        if args.eval_every and state["step"] % args.eval_every == 0:
            state["val"].append({"step": state["step"], "ce": _val_ce(model, handle, router, packer, val)})
            _log(f"validation answer CE {state['val'][-1]['ce']:.4f} (unrouted {state['val_unrouted']:.4f})")
        stop = args.max_minutes > 0 and (time.perf_counter() - t0) / 60 >= args.max_minutes
        if state["step"] % args.ckpt_every == 0 or state["step"] == args.steps or stop:
            _save(ckpt, state | {"router": router.linear.state_dict(), "opt": opt.state_dict()})
        if stop:
            _log(f"--max-minutes {args.max_minutes} reached at step {state['step']}")
            break
    handle.remove()
    if args.export:
        _export(router, args, state, hidden)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
