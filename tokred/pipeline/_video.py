"""Video in the pre-LLM stage: frames as the batch axis of per-frame mergers, whole clips for temporal ones.

A video's projected features (from the stock ``get_video_features``, asked of the seam) are split by the
adapter's `VideoLayout` into ``frames`` groups of ``per_frame`` rows, frame-major, plus trailing structural rows
(LLaVA-OneVision's one ``image_newline`` row per video), which are never reduced and stay text-like. Every frame
becomes one placeholder slot of the prompt (its rows must be contiguous there; Qwen3-VL separates frames by
timestamp text, the others do not) with one `ImagePlan`, so the layout, the M-RoPE positions (every survivor keeps
its first source's), the provenance and the in-LLM visual mask treat frames like images. A per-frame merger reduces
each frame on its own (never across frames); a ``temporal`` merger gets the whole clip ``(1, T * n_frame, C)`` with
``MergeContext.frames = T`` and must keep or merge every row within its own frame. Multi-image prompts (the generic
path, e.g. the reference model) are already one slot per image; a temporal merger takes the images of each sample
as the frames of one clip.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tokred._components import BaseMerger, MergeContext
from tokred.adapters import hf
from tokred.errors import ConfigError, PluginOutputError, UnsupportedModeError
from tokred.pipeline._checks import check_merge
from tokred.pipeline._prellm import ImagePlan, plan_image, reduce_like
from tokred.pipeline._prellm import _first_source as first_source

Slot = tuple[int, int, int]  # (sample, first position, rows)


@dataclass
class VideoPart:
    """The videos of one call: encoder output and inputs, per-video features, and after planning their frame plans.

    Attributes:
        out: The ``get_video_features`` result (its pooled features are replaced by the reduced ones).
        enc: The video-encoder inputs (popped from the call).
        feats: Per video, its features (n, C).
        pack: Packs per-video (m, C) features back the way the model reads them.
        layouts: Per video, its frame structure.
        groups: Per video, the range of its plans (frames, then trailing rows) in the plan list.
    """

    out: Any
    enc: dict[str, Any]
    feats: list[torch.Tensor]
    pack: Callable[[list[torch.Tensor]], Any]
    layouts: list[Any]
    groups: list[range] = field(default_factory=list)


def split_videos(pooler: Any) -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], Any]]:
    """Per-video (n, C) features of a video ``pooler_output`` and a function that packs reduced ones back alike.

    A tensor (n_video, n, C) packs back to one (stacked when every video keeps the same count, else (1, sum m, C):
    the models scatter numel-wise); a tuple or list of per-video tensors packs to a list of (m, C) tensors.
    """
    if torch.is_tensor(pooler):
        flat = list(pooler.unbind(0)) if pooler.dim() == 3 else [pooler]

        def pack(items: list[torch.Tensor]) -> Any:
            if len({t.shape[0] for t in items}) == 1:
                return torch.stack(items, 0)  # (n_video, m, C)
            return torch.cat(items, 0)[None]  # (1, sum m, C)

        return flat, pack
    return [x.reshape(-1, x.shape[-1]) for x in pooler], lambda items: list(items)


def encode_videos(adapter: Any, kwargs: dict[str, Any], pop_all: bool = True) -> VideoPart | None:
    """Run the stock video encoder on the call's frames, or ``None`` without video.

    Pops the video-encoder inputs from ``kwargs`` (only the frames with ``pop_all=False``, when the sequence is not
    shortened and the model still numbers its own positions from the video grid)."""
    if not hf.CallArgs((), kwargs).has_video_pixels():
        return None
    enc = hf.video_encoder_kwargs(adapter.base, kwargs)
    if not enc:
        raise UnsupportedModeError(
            f"the call passes {hf.VIDEO_PIXELS} but {type(adapter.model).__name__} has no get_video_features; pass the "
            "frames as a sequence of images"
        )
    with torch.no_grad():
        out = hf.video_features(adapter.base, enc)
    for key in enc if pop_all else [hf.VIDEO_PIXELS]:
        kwargs.pop(key, None)
    feats, pack = split_videos(hf.pooled(out))
    layouts = adapter.video_layouts(enc, [int(f.shape[0]) for f in feats])
    for f, lay in zip(feats, layouts):
        if lay.frames * lay.per_frame > f.shape[0]:
            raise UnsupportedModeError(
                f"a video has {f.shape[0]} feature rows, fewer than its {lay.frames} frames x {lay.per_frame} rows"
            )
    return VideoPart(out, enc, feats, pack, layouts)


def _runs(mask: torch.Tensor, counts: list[int]) -> list[tuple[int, torch.Tensor]]:
    """(sample, positions (n,)) of each video's placeholders, in order, from the placeholder mask (B, N)."""
    b_idx, pos = mask.nonzero(as_tuple=True)
    if int(b_idx.numel()) != sum(counts):
        raise UnsupportedModeError(
            f"the prompt has {int(b_idx.numel())} video placeholders but the videos produce {sum(counts)} features"
        )
    out, c = [], 0
    for n in counts:
        if int(b_idx[c]) != int(b_idx[c + n - 1]):
            raise UnsupportedModeError("a video's placeholder tokens span two samples")
        out.append((int(b_idx[c]), pos[c : c + n]))
        c += n
    return out


def _slot(sample: int, positions: torch.Tensor) -> Slot:
    n = int(positions.numel())
    if int(positions[-1] - positions[0]) != n - 1:
        raise UnsupportedModeError("a video frame's placeholder tokens are not contiguous in the prompt")
    return sample, int(positions[0]), n


def plan_frames(
    frames: list[torch.Tensor], grid: tuple[int, int] | None, merger: BaseMerger | None, text: torch.Tensor | None
) -> list[ImagePlan]:
    """Reduce the frames (each (n_frame, C)) of one clip: each on its own, or as one clip by a temporal merger."""
    if merger is None or not merger.temporal or len(frames) == 1:
        return [plan_image(f, None, grid, merger, None, text) for f in frames]
    t, per = len(frames), int(frames[0].shape[0])
    if any(int(f.shape[0]) != per for f in frames):
        raise UnsupportedModeError(
            f"temporal merger '{merger.name}' needs frames of equal size; got {[int(f.shape[0]) for f in frames]} rows"
        )
    x = torch.cat(frames, 0)[None]  # (1, T * n_frame, C)
    frame_grid = grid if grid is not None else (1, per)  # one frame's grid: a row when the frame has no 2-D one
    ctx = MergeContext(grid=frame_grid, frames=t, text_embedding=None if text is None else text[None])
    res = check_merge(merger.merge(x, ctx), x, merger, frame_grid)
    merged, source = res.x[0], res.source[0].long()  # (m, C), (T * n_frame,)
    rep = first_source(source, merged.shape[0])  # (m,) clip row each output stands for
    frame_of = rep // per  # (m,)
    ok = source >= 0
    if bool((frame_of[source[ok]] != torch.arange(t * per, device=x.device)[ok] // per).any()):
        raise PluginOutputError(
            f"temporal merger '{merger.name}' merged rows of different frames into one output; the pre-LLM stage keeps "
            "every output in its own frame's place"
        )
    plans = []
    for f in range(t):
        outs = (frame_of == f).nonzero(as_tuple=True)[0]  # (m_f,) this frame's outputs, in the merger's order
        local = torch.full((merged.shape[0],), -1, dtype=torch.long, device=x.device)
        local[outs] = torch.arange(outs.numel(), device=x.device)
        src = source[f * per : (f + 1) * per]
        src = torch.where(src >= 0, local[src.clamp_min(0)], -1)
        vis = torch.ones(outs.numel(), dtype=torch.bool, device=x.device)
        plans.append(ImagePlan(merged[outs], rep[outs] - f * per, vis, grid, src))
    return plans


def plan_videos(
    part: VideoPart, adapter: Any, merger: BaseMerger | None, ids: torch.Tensor, texts: list[torch.Tensor | None]
) -> tuple[list[Slot], list[ImagePlan]]:
    """Slots and plans of every frame (then trailing rows) of every video; records each video's plan range."""
    runs = _runs(adapter.video_placeholder_mask(ids), [int(f.shape[0]) for f in part.feats])
    merger = merger.for_video() if merger is not None else None  # e.g. AIM variant="auto": its video keep ratio
    slots: list[Slot] = []
    plans: list[ImagePlan] = []
    for feat, lay, (s, pos), text in zip(part.feats, part.layouts, runs, texts):
        first = len(plans)
        per, t = lay.per_frame, lay.frames
        frames = [feat[f * per : (f + 1) * per] for f in range(t)]
        plans += plan_frames(frames, lay.grid, merger, text)
        slots += [_slot(s, pos[f * per : (f + 1) * per]) for f in range(t)]
        if feat.shape[0] > t * per:  # trailing structural rows: untouched
            extra = feat[t * per :]
            like = adapter.text_like_rows(extra)
            visual = ~like if like is not None else torch.ones(extra.shape[0], dtype=torch.bool, device=feat.device)
            rows = torch.arange(extra.shape[0], device=feat.device)
            plans.append(ImagePlan(extra, rows, visual, None, rows))
            slots.append(_slot(s, pos[t * per :]))
        part.groups.append(range(first, len(plans)))
    return slots, plans


def video_texts(stage: Any, kwargs: dict[str, Any], part: VideoPart, ids: torch.Tensor) -> list[torch.Tensor | None]:
    """Per video, the mean text embedding of its sample, for mergers that read the prompt; else ``None`` each."""
    if stage.merger is None or not stage.merger.uses_text:
        return [None] * len(part.feats)
    call = hf.CallArgs((), kwargs)
    text = ~stage.adapter.visual_mask(ids)  # (B, N)
    if call.attention_mask is not None:
        text &= call.attention_mask.bool()
    with torch.no_grad():
        emb = stage.adapter.text_embeddings(torch.where(text, ids, stage.adapter.pad_token_id))  # (B, N, C)
    weight = text.to(emb.dtype)[..., None]
    mean = (emb * weight).sum(1) / weight.sum(1).clamp_min(1)  # (B, C)
    runs = _runs(stage.adapter.video_placeholder_mask(ids), [int(f.shape[0]) for f in part.feats])
    return [mean[s] for s, _ in runs]


def finish_videos(part: VideoPart, plans: list[ImagePlan]) -> None:
    """Put each video's reduced features (its plans' features, in order) and DeepStack features into its output."""
    feats, sources = [], []
    for group in part.groups:
        chunk = [plans[i] for i in group]
        offsets = torch.tensor([0] + [int(p.features.shape[0]) for p in chunk]).cumsum(0).tolist()
        feats.append(torch.cat([p.features for p in chunk], 0))
        sources.append(
            torch.cat(
                [
                    torch.where(p.source >= 0, p.source + off, -1)
                    for p, off in zip(chunk, offsets)
                    if p.source is not None
                ]
            )
        )
    hf.set_pooled(part.out, part.pack(feats))
    injected = hf.injected_features(part.out)
    if injected is None:
        return
    reduced = []
    for level in injected:  # per injection layer: a tuple of per-video (n_v, C) tensors
        if len(level) != len(feats):
            raise UnsupportedModeError(f"DeepStack features cover {len(level)} videos but the prompt has {len(feats)}")
        reduced.append(tuple(reduce_like(x, src, f.shape[0]) for x, src, f in zip(level, sources, feats)))
    hf.set_injected_features(part.out, reduced)


def images_as_clips(
    slots: list[Slot], plans: list[ImagePlan], feats: list[torch.Tensor], grids: list[Any], merger: BaseMerger
) -> list[ImagePlan]:
    """A temporal merger on a prompt of images: re-plan each sample's images as the frames of one clip."""
    if any(bool((~p.visual).any()) for p in plans):
        raise ConfigError(
            f"temporal merger '{merger.name}' takes a sample's images as frames, but these images carry structural "
            "rows (newlines or tiles); pass the clip as a video"
        )
    out = list(plans)
    for s in sorted({slot[0] for slot in slots}):
        idx = [i for i, slot in enumerate(slots) if slot[0] == s]
        for i, plan in zip(idx, plan_frames([feats[i] for i in idx], grids[idx[0]], merger, None)):
            out[i] = plan
    return out


def video_text_like(adapter: Any, out: Any) -> torch.Tensor | None:
    """Structural rows (LLaVA-OneVision's newline) among all videos' feature rows in prompt order, shape (sum n,)
    bool, or ``None`` when there are none."""
    feats, _ = split_videos(hf.pooled(out))
    flags = [adapter.text_like_rows(f) for f in feats]
    if all(f is None for f in flags):
        return None
    return torch.cat([f if f is not None else torch.zeros(x.shape[0], dtype=torch.bool) for f, x in zip(flags, feats)])
