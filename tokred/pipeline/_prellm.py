"""Pre-LLM stage: reduce each image's projected features and shorten the token inputs to match.

Works on the forward kwargs of the model's base model (``LlavaModel.forward`` and its siblings, which accept
precomputed encoder outputs; ``generate()`` computes the features the same way): the features come from the stock
``get_image_features`` (with the kwargs its signature names, as ``generate()`` does), the merger reduces each image on
its own, and the token ids, attention mask, token-type inputs and (M-RoPE) positions are rebuilt consistently. The
reduced features go to the model as its precomputed image-encoder outputs. Samples whose shortened lengths differ are
re-padded on the left. Every transformers name is asked of the seam (`tokred.adapters.hf`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tokred._components import BaseMerger, MergeContext, TowerContext
from tokred.adapters import hf
from tokred.errors import ConfigError, UnsupportedModeError
from tokred.pipeline._checks import check_merge
from tokred.pipeline._tower import TowerCapture


@dataclass
class ImagePlan:
    """One image after the merger: its features, the original row each output stands for, and its kind."""

    features: torch.Tensor  # (m, C)
    rep: torch.Tensor  # (m,) original row of each output (its first source)
    visual: torch.Tensor  # (m,) bool: reducible visual content (False: text-like rows such as newlines)
    grid: tuple[int, int] | None
    source: torch.Tensor | None = None  # (n,) output row each input row went into, -1 if dropped


def flatten_features(pooler: Any) -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], Any]]:
    """Split ``pooler_output`` into per-image (n_i, C) tensors and return a function that packs them back alike."""
    if isinstance(pooler, (list, tuple)):
        flat = [t for x in pooler for t in (x if x.dim() == 3 else [x])]
        return flat, lambda items: list(items)
    if pooler.dim() == 2:
        return [pooler], lambda items: torch.cat(items, 0)
    flat = list(pooler.unbind(0))

    def pack(items: list[torch.Tensor]) -> torch.Tensor:
        if len({t.shape[0] for t in items}) == 1:
            return torch.stack(items, 0)  # (n_img, m, C)
        return torch.cat(items, 0)[None]  # (1, sum m, C): the models only scatter numel-wise

    return flat, pack


def _first_source(source: torch.Tensor, m: int) -> torch.Tensor:
    """For each of ``m`` outputs the smallest input index that went into it, shape (m,)."""
    n = source.shape[0]
    rep = torch.full((m,), n, dtype=torch.long, device=source.device)
    ok = source >= 0
    return rep.scatter_reduce(0, source[ok].long(), torch.arange(n, device=source.device)[ok], reduce="amin")


def plan_image(
    x: torch.Tensor,
    text_like: torch.Tensor | None,
    grid: tuple[int, int] | None,
    merger: BaseMerger | None,
    metric: torch.Tensor | None = None,
    text: torch.Tensor | None = None,
    tower: TowerContext | None = None,
    text_tokens: torch.Tensor | None = None,
) -> ImagePlan:
    """Reduce one image's features ``x`` (n, C), keeping ``text_like`` rows untouched and in place.

    ``metric`` (n, C'), when given, is what the merger matches on instead of the features (AIM's vision keys);
    ``text`` (C,), the mean text embedding of the image's prompt, for mergers that read it (CDPruner); ``tower``, the
    image's vision-tower context (batch 1), for mergers that declare ``tower_inputs``; ``text_tokens`` (T, C), the
    prompt's text-token embeddings themselves, with ``text``.
    """
    n = x.shape[0]
    rows = torch.arange(n, device=x.device)
    if text_like is None or not bool(text_like.any()):
        text_like = torch.zeros(n, dtype=torch.bool, device=x.device)
    if merger is None:
        return ImagePlan(x, rows, ~text_like, grid, rows)
    content = rows[~text_like]  # (n_c,)
    ctx = MergeContext(
        grid=grid if not bool(text_like.any()) else None,
        metric=None if metric is None else metric[content][None],
        text_embedding=None if text is None else text[None],
        text_tokens=None if text_tokens is None else text_tokens[None],
        tower=tower,
    )
    res = check_merge(merger.merge(x[content][None], ctx), x[content][None], merger, ctx.grid)
    merged = res.x[0]  # (m, C)
    rep = content[_first_source(res.source[0], merged.shape[0]).clamp(max=content.shape[0] - 1)]  # (m,)
    if not bool(text_like.any()):
        ones = torch.ones(merged.shape[0], dtype=torch.bool, device=x.device)
        return ImagePlan(merged, rep, ones, res.grid, res.source[0].long())
    # put merged outputs back between the kept text-like rows, ordered by their first source
    feats = torch.cat([merged, x[text_like]], 0)
    reps = torch.cat([rep, rows[text_like]], 0)
    vis = torch.cat(
        [torch.ones_like(rep, dtype=torch.bool), torch.zeros(int(text_like.sum()), dtype=torch.bool, device=x.device)]
    )
    order = reps.argsort(stable=True)
    where = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=x.device))  # new row of k
    source = torch.empty(n, dtype=torch.long, device=x.device)
    merged_src = res.source[0].long()
    source[content] = torch.where(merged_src >= 0, where[merged_src.clamp_min(0)], -1)
    source[rows[text_like]] = where[merged.shape[0] + torch.arange(int(text_like.sum()), device=x.device)]
    return ImagePlan(feats[order], reps[order], vis[order], None, source)


def reduce_like(x: torch.Tensor, source: torch.Tensor, m: int) -> torch.Tensor:
    """Reduce rows ``x`` (n, C) the way a plan reduced an image: the mean of the rows that went into each of the
    ``m`` outputs (``source`` (n,): output row of each input, -1 if dropped). A selection is then a gather, a merge
    averages by the same groups, and no reduction is an exact copy."""
    ok = source >= 0  # (n,)
    idx = source[ok]
    total = x.new_zeros(m, x.shape[1]).index_add_(0, idx, x[ok])  # (m, C)
    count = x.new_zeros(m).index_add_(0, idx, torch.ones_like(idx, dtype=x.dtype))  # (m,)
    return total / count.clamp_min(1)[:, None]


def _image_slots(placeholders: torch.Tensor, counts: list[int]) -> list[tuple[int, int, int]]:
    """(sample, first position, original count) of every image, from the placeholder mask (B, N) in order."""
    b_idx, pos = placeholders.nonzero(as_tuple=True)
    if int(b_idx.numel()) != sum(counts):
        raise UnsupportedModeError(
            f"the prompt has {int(b_idx.numel())} image placeholders but the images produce {sum(counts)} features"
        )
    out, c = [], 0
    for n in counts:
        b, start, end = int(b_idx[c]), int(pos[c]), int(pos[c + n - 1])
        if int(b_idx[c + n - 1]) != b or end - start != n - 1:
            raise UnsupportedModeError("an image's placeholder tokens are not contiguous in one sample")
        out.append((b, start, n))
        c += n
    return out


class PreLLMStage:
    """Reduces image features before the LLM and rebuilds the token inputs.

    Args:
        adapter: The model adapter.
        merger: A ``pre_llm`` merger, or ``None`` (features are still analysed for text-like rows).
        state: The run state (receives the visual mask of the shortened sequence).
        original_counts: Called with the number of images, returns each image's placeholder count when an earlier
            stage (the vision tower) already reduced the features; ``None`` when features match the placeholders.
    """

    def __init__(
        self,
        adapter: Any,
        merger: BaseMerger | None,
        state: Any,
        original_counts: Callable[[int, int], list[int] | None] | None = None,
    ) -> None:
        self.adapter = adapter
        self.merger = merger
        self.state = state
        self.original_counts = original_counts
        self.text_tokens: list[torch.Tensor | None] = []  # per image (T, C), set by image_texts for uses_text mergers
        self.tower = TowerCapture(adapter, merger) if merger is not None and merger.tower_inputs else None

    def wants_vision_keys(self) -> bool:
        """Whether the merger matches on the vision tower's last-layer keys (AIM's image variant)."""
        return self.merger is not None and getattr(self.merger.config, "metric", "features") == "keys"

    def features(self, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Run the stock ``get_image_features`` on the call's image inputs; returns its output and those inputs.

        When the merger asks for vision keys, a forward hook on the tower's last key projection captures them
        (into ``self.keys``, shape (n_img, T, C')) during the same call.
        """
        enc = self.adapter.encoder_kwargs(kwargs)
        self.keys: torch.Tensor | None = None
        hook = None
        if self.wants_vision_keys():
            module = self.adapter.vision_key_projection()
            if module is None:
                raise ConfigError(
                    f"metric='keys' needs the vision tower's key projection, which {type(self.adapter.model).__name__}"
                    " does not expose; use metric='features'"
                )
            hook = module.register_forward_hook(lambda _m, _i, out: setattr(self, "keys", out.detach()))
        try:
            with torch.no_grad(), self._tower_capture():
                out = hf.image_features(self.adapter.base, enc)
        finally:
            if hook is not None:
                hook.remove()
        return out, enc

    def _tower_capture(self) -> Any:
        return self.tower.capture() if self.tower is not None else contextlib.nullcontext()

    def image_metrics(self, counts: list[int]) -> list[torch.Tensor | None]:
        """Per-image merge metric: the captured vision keys aligned with each image's features (class token
        dropped), or ``None`` for every image when the merger matches on features."""
        if not self.wants_vision_keys():
            return [None] * len(counts)
        keys = self.keys
        if keys is None or keys.dim() != 3 or keys.shape[0] != len(counts):
            raise ConfigError("metric='keys': the vision tower's keys could not be matched to the images")
        out = []
        for k, n in zip(keys, counts):
            if k.shape[0] not in (n, n + 1):
                raise ConfigError(
                    f"metric='keys': the tower has {k.shape[0]} tokens per image but the LLM gets {n} features "
                    "(tiles, newline rows or pooling in between); use metric='features'"
                )
            out.append(k[k.shape[0] - n :])  # a leading class token is not a patch
        return out

    def image_texts(self, kwargs: dict[str, Any], counts: list[int]) -> list[torch.Tensor | None]:
        """Per image, the mean LLM input embedding (C,) of the non-visual, non-padding tokens of its sample, when the
        merger reads the prompt (``uses_text``); else ``None`` for every image."""
        if self.merger is None or not self.merger.uses_text:
            return [None] * len(counts)
        call = hf.CallArgs((), kwargs)
        ids, mask = call.input_ids, call.attention_mask
        text = ~self.adapter.visual_mask(ids)  # (B, N)
        if mask is not None:
            text &= mask.bool()
        with torch.no_grad():
            emb = self.adapter.text_embeddings(torch.where(text, ids, self.adapter.pad_token_id))  # (B, N, C)
        weight = text.to(emb.dtype)[..., None]  # (B, N, 1)
        mean = (emb * weight).sum(1) / weight.sum(1).clamp_min(1)  # (B, C)
        slots = _image_slots(self.adapter.placeholder_mask(ids), counts)
        self.text_tokens = [emb[s][text[s]] for s, _, _ in slots]  # per image (T_s, C), read by transform
        return [mean[s] for s, _, _ in slots]

    def transform(self, kwargs: dict[str, Any], out: Any = None, enc: dict[str, Any] | None = None) -> dict[str, Any]:
        """Return new forward kwargs with the reduced features as precomputed encoder outputs and shortened token
        inputs."""
        from tokred.pipeline import _video

        if out is None and hf.CallArgs((), kwargs).has_pixels():
            out, enc = self.features(kwargs)
            for key in enc:
                kwargs.pop(key, None)
        video = _video.encode_videos(self.adapter, kwargs)  # None without frames; pops the video inputs
        if video is not None and self.wants_vision_keys():
            raise ConfigError("metric='keys' matches on an image's vision keys; video frames need metric='features'")
        enc = enc or {}
        ids = hf.CallArgs((), kwargs).input_ids
        feats, pack = flatten_features(hf.pooled(out)) if out is not None else ([], None)
        counts = [int(f.shape[0]) for f in feats]
        orig = (
            self.original_counts(len(feats), int(self.adapter.placeholder_mask(ids).sum()))
            if (self.original_counts is not None and feats)
            else None
        )
        grids = self.adapter.feature_grids(enc, counts)
        clip = video is None and bool(feats) and self.state.images_as_clip  # images the caller marked as frames
        merger = self.merger.for_video() if clip and self.merger is not None else self.merger
        metrics = self.image_metrics(counts) if merger is self.merger else [None] * len(counts)
        texts = self.image_texts(kwargs, orig or counts)
        tokens = self.text_tokens if self.merger is not None and self.merger.uses_text else [None] * len(texts)
        towers = self.tower.contexts(out, counts) if self.tower is not None else [None] * len(counts)
        plans = [
            plan_image(f, self.adapter.text_like_rows(f), g, merger, m, t, tw, text_tokens=tt)
            for f, g, m, t, tw, tt in zip(feats, grids, metrics, texts, towers, tokens)
        ]
        if orig is not None:  # the vision tower merged: outputs stand for the first slots of each image
            plans = [
                ImagePlan(p.features, torch.arange(p.features.shape[0], device=ids.device), p.visual, None)
                for p in plans
            ]
        slots = _image_slots(self.adapter.placeholder_mask(ids), orig or counts) if plans else []
        if video is None and plans and self.merger is not None and self.merger.temporal:
            plans = _video.images_as_clips(slots, plans, feats, grids, self.merger)
        vslots, vplans = (
            ([], [])
            if video is None
            else _video.plan_videos(video, self.adapter, self.merger, ids, _video.video_texts(self, kwargs, video, ids))
        )
        every = sorted(range(len(slots) + len(vslots)), key=lambda i: (slots + vslots)[i][:2])  # prompt order
        src, valid, visual, placed = self._layout(
            ids, [(slots + vslots)[i] for i in every], [(plans + vplans)[i] for i in every]
        )
        positions = [placed[every.index(i)] for i in range(len(every))]
        self.state.pending_provenance = [  # a frame may keep nothing (temporal mergers): all its rows dropped
            (
                s,
                torch.where(p.source >= 0, pos[p.source.clamp_min(0)], -1)
                if pos.numel()
                else torch.full_like(p.source, -1),
            )
            for (s, _, _), p, pos in zip(slots + vslots, plans + vplans, positions)
            if p.source is not None and orig is None
        ]
        venc = {} if video is None else video.enc
        new = hf.CallArgs((), self._shorten(kwargs, {**enc, **venc}, src, valid, plans))
        if out is not None and pack is not None:
            hf.set_pooled(out, pack([p.features for p in plans]))
            self._reduce_injected(out, plans)
            new.set_image_outputs(out)
        other = self.adapter.visual_mask(new.input_ids) & ~self.adapter.placeholder_mask(new.input_ids)
        if video is not None:
            _video.finish_videos(video, vplans)
            new.set_video_outputs(video.out)
            other &= ~self.adapter.video_placeholder_mask(new.input_ids)
        self.state.pending_visual = visual | other
        self.state.pending_pad = new.attention_mask.bool()
        self.state.pending_visual_in = int(self.adapter.visual_mask(ids).sum())
        self.state.pending_video = video is not None or clip
        return new.kwargs

    def _reduce_injected(self, out: Any, plans: list[ImagePlan]) -> None:
        """Reduce DeepStack features (added inside the LLM at the visual positions) with each image's provenance."""
        injected = hf.injected_features(out)
        if injected is None:
            return
        if any(p.source is None for p in plans):
            raise UnsupportedModeError(
                "this model adds visual features inside the LLM (DeepStack), which tokred reduces by each image's "
                "provenance; merging in the vision tower loses it. Use a pre-LLM merger (aim-merge, pooling, random)"
            )
        reduced = []
        for level in injected:  # one entry per injection layer: a tuple of per-image (n_i, C) tensors
            if len(level) != len(plans):
                raise UnsupportedModeError(
                    f"DeepStack features cover {len(level)} images but the prompt has {len(plans)}; tokred cannot "
                    "align them"
                )
            sources = [p.source for p in plans if p.source is not None]
            reduced.append(tuple(reduce_like(f, src, p.features.shape[0]) for f, src, p in zip(level, sources, plans)))
        hf.set_injected_features(out, reduced)

    def _layout(
        self, ids: torch.Tensor, slots: list[tuple[int, int, int]], plans: list[ImagePlan]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """For the shortened sequence: source position (B, N'), real-token mask (B, N'), visual mask (B, N'), and
        for every image the positions (m,) its outputs occupy."""
        b, n = ids.shape
        dev = ids.device
        rows: list[list[torch.Tensor]] = [[] for _ in range(b)]
        vis: list[list[torch.Tensor]] = [[] for _ in range(b)]
        cursor = [0] * b
        length = [0] * b  # unpadded length of each shortened row so far
        offsets = []
        for (s, start, count), plan in zip(slots, plans):
            rows[s].append(torch.arange(cursor[s], start, device=dev))
            vis[s].append(torch.zeros(start - cursor[s], dtype=torch.bool, device=dev))
            length[s] += start - cursor[s]
            offsets.append(length[s])
            length[s] += int(plan.rep.numel())
            rows[s].append(start + plan.rep.to(dev))
            vis[s].append(plan.visual.to(dev))
            cursor[s] = start + count
        seqs = [torch.cat(r + [torch.arange(cursor[s], n, device=dev)]) for s, r in enumerate(rows)]
        viss = [torch.cat(v + [torch.zeros(n - cursor[s], dtype=torch.bool, device=dev)]) for s, v in enumerate(vis)]
        width = max(int(x.numel()) for x in seqs)
        src = torch.zeros(b, width, dtype=torch.long, device=dev)
        valid = torch.zeros(b, width, dtype=torch.bool, device=dev)
        visual = torch.zeros(b, width, dtype=torch.bool, device=dev)
        for s, (x, v) in enumerate(zip(seqs, viss)):  # left padding, as generate() expects
            src[s, width - x.numel() :], valid[s, width - x.numel() :], visual[s, width - x.numel() :] = x, True, v
        positions = [
            width - int(seqs[s].numel()) + off + torch.arange(int(plan.rep.numel()), device=dev)
            for (s, _, _), plan, off in zip(slots, plans, offsets)
        ]
        return src, valid, visual, positions

    def _shorten(
        self,
        kwargs: dict[str, Any],
        enc: dict[str, Any],
        src: torch.Tensor,
        valid: torch.Tensor,
        plans: list[ImagePlan],
    ) -> dict[str, Any]:
        """Gather every per-token input at ``src``; added padding gets pad ids and a zero mask."""
        old = hf.CallArgs((), kwargs)
        if old.position_ids is not None:
            raise ConfigError(
                "explicit position_ids cannot be combined with a pre-LLM reduction (tokred rebuilds them)"
            )
        new = hf.CallArgs((), dict(kwargs))
        ids = old.input_ids
        pad_id = self.adapter.pad_token_id
        new.input_ids = torch.where(valid, ids.gather(1, src), pad_id)
        mask = old.attention_mask
        mask = torch.ones_like(ids) if mask is None else mask
        new.attention_mask = torch.where(valid, mask.gather(1, src), 0).to(mask.dtype)
        for key in self.adapter.side_token_inputs():
            if torch.is_tensor(kwargs.get(key)) and kwargs[key].shape == ids.shape:
                new.kwargs[key] = torch.where(valid, kwargs[key].gather(1, src), 0).to(kwargs[key].dtype)
        pos = self.adapter.prellm_position_ids(kwargs | enc, enc, src, valid, [p.grid for p in plans])
        if pos is not None:
            new.position_ids = pos
        return new.kwargs
