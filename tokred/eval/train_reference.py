"""Train the reference model's projector and LoRA adapters on the ``shapes`` benchmark (CPU, resumable).

Recipe (measured in ``shared/research/reference-training.md``; the LM and the vision tower stay frozen):

1. **Feature cache.** Frozen DINOv2 ``hidden_states[-6]`` and ``[-2]`` (CLS removed, concatenated: 256 x 768)
   for the training and validation images, stored in fp16 chunks under ``OUT/features``.
2. **Projector pre-alignment** (no LM forward). Each patch's target is a sum of the LM's own input
   embeddings: an object patch (>= 25 % covered) gets ``e(" red") + e(" circle")``, a background patch
   ``e(" background")``; loss ``(1 - cos) + relative MSE``, object and background patches weighted 50/50.
   A second, shorter phase adds ``0.5 * (e(" left"|" right") + e(" top"|" bottom"))`` to object targets.
3. **QA training** with LoRA (rank 32, alpha 64) on q, k, v, o, gate, up and down of every LM layer plus the
   projector. Each image becomes one packed sequence: ``[system + user header + 256 image tokens]`` then
   K ``question -> answer`` segments (up to 3 questions per type, 4 count questions, and a dense caption);
   a 4-D boolean mask lets each segment see the prefix and itself only and its position ids restart after
   the prefix, so each segment is exactly a single-turn chat sample. Loss on answer tokens only.
   AdamW, linear warm-up, constant learning rate, cosine decay over the last ``--decay-frac`` of the steps.

Everything is seeded; a checkpoint (``OUT/checkpoint.pt``) is written every ``--ckpt-every`` steps and at
the end of each phase, and ``--resume`` continues from it (same schedule, same data order). ``--export``
writes the small weights (projector + LoRA A/B in fp16) to ``tokred/eval/weights/reference.safetensors``
and a record (``reference.json`` + ``TRAINING.md``) with the command, seed, steps, wall time, final loss
and learning curve.

Example::

    nohup python -m tokred.eval.train_reference --out runs/reference --threads 2 --export \\
        > runs/reference/train.log 2>&1 &
    python -m tokred.eval.train_reference --out runs/reference --resume --export   # after an interruption
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tokred.eval import shapes

__all__ = [
    "LoRALinear",
    "PackedBatch",
    "Packer",
    "add_lora",
    "export_weights",
    "extract_features",
    "main",
    "packed_exact_match",
]

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BACKGROUND_WORD = " background"


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------- LoRA


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``(alpha / r) * B @ A``.

    Args:
        base: The linear layer to adapt (kept frozen).
        rank: LoRA rank ``r``.
        alpha: LoRA scale numerator.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.rank = rank
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus the low-rank update."""
        return self.base(x) + ((x @ self.lora_a.t()) * self.scale) @ self.lora_b.t()


def add_lora(model: nn.Module, rank: int, alpha: float, targets: Sequence[str] = LORA_TARGETS) -> dict[str, LoRALinear]:
    """Wrap every target linear layer of the language model in :class:`LoRALinear`.

    Args:
        model: The LLaVA model.
        rank: LoRA rank.
        alpha: LoRA alpha.
        targets: Attribute names of the linear layers to adapt.

    Returns:
        ``{module path in the LLaVA model: wrapper}``.
    """
    wrapped: dict[str, LoRALinear] = {}
    for name, module in list(model.named_modules()):
        if ".language_model." not in f".{name}." and not name.startswith("language_model"):
            continue
        for attr in targets:
            child = getattr(module, attr, None)
            if isinstance(child, nn.Linear):
                w = LoRALinear(child, rank, alpha)
                setattr(module, attr, w)
                wrapped[f"{name}.{attr}"] = w
    return wrapped


# --------------------------------------------------------------------------------------------- features


def _features_from_pixels(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    out = model.model.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
    layers = model.config.vision_feature_layer
    layers = [layers] if isinstance(layers, int) else list(layers)
    return torch.cat([out.hidden_states[i][:, 1:] for i in layers], dim=-1)


@torch.no_grad()
def extract_features(
    model: Any, processor: Any, indices: Sequence[int], seed: int, chunk_path: Path, batch: int = 16
) -> torch.Tensor:
    """Compute (or read cached) frozen vision features of benchmark scenes.

    Args:
        model: The reference model.
        processor: Its processor.
        indices: Scene indices (the scene of item ``i`` is :func:`tokred.eval.shapes.item`'s).
        seed: Benchmark seed.
        chunk_path: Cache file for this chunk.
        batch: Images per tower forward.

    Returns:
        ``(len(indices), 256, 768)`` fp16 features.
    """
    if chunk_path.is_file():
        cached: torch.Tensor = torch.load(chunk_path)
        return cached
    feats = []
    for s in range(0, len(indices), batch):
        imgs = [shapes.render(shapes.item(i, seed)[0]) for i in indices[s : s + batch]]
        pv = processor.image_processor(imgs, return_tensors="pt")["pixel_values"]
        feats.append(_features_from_pixels(model, pv).to(torch.float16))
    out = torch.cat(feats)
    chunk_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = chunk_path.with_suffix(".tmp")
    torch.save(out, tmp)
    tmp.replace(chunk_path)
    return out


def _load_features(
    model: Any, processor: Any, start: int, n: int, seed: int, root: Path, chunk: int = 200
) -> torch.Tensor:
    parts = []
    t0 = time.perf_counter()
    computed = 0
    for c in range(0, n, chunk):
        idx = list(range(start + c, start + min(n, c + chunk)))
        path = root / f"feat_{start + c:07d}_{len(idx)}.pt"
        fresh = not path.is_file()
        parts.append(extract_features(model, processor, idx, seed, path))
        if fresh:
            computed += len(idx)
            rate = (time.perf_counter() - t0) / computed
            _log(f"features {c + len(idx)}/{n} from index {start} ({rate:.3f} s/image computed)")
    return torch.cat(parts)


def frame_sizes(side: int) -> dict[str, Any]:
    """Processor keyword arguments that size video frames to ``side`` pixels (square)."""
    return {"size": {"shortest_edge": side}, "crop_size": {"height": side, "width": side}}


@torch.no_grad()
def extract_clip_features(
    model: Any, processor: Any, indices: Sequence[int], seed: int, frames: int, side: int, chunk_path: Path
) -> torch.Tensor:
    """Compute (or read cached) frozen vision features of ``shapes-video`` clips, frames at ``side`` px.

    Returns:
        ``(len(indices), frames * (side // 14) ** 2, 768)`` fp16 features, frame-major.
    """
    from tokred.eval import shapes_video

    if chunk_path.is_file():
        cached: torch.Tensor = torch.load(chunk_path)
        return cached
    feats: list[torch.Tensor] = []
    for s in range(0, len(indices), 4):  # 4 clips per tower forward
        clips = [shapes_video.item(i, seed, frames)[0] for i in indices[s : s + 4]]
        images = [f for c in clips for f in shapes_video.render_clip(c)]
        pv = processor.image_processor(images, return_tensors="pt", **frame_sizes(side))["pixel_values"]
        per_frame = _features_from_pixels(model, pv).to(torch.float16)  # (clips * frames, tokens, C)
        feats.extend(per_frame.view(len(clips), -1, per_frame.shape[-1]))
    out = torch.stack(feats)
    chunk_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = chunk_path.with_suffix(".tmp")
    torch.save(out, tmp)
    tmp.replace(chunk_path)
    return out


def _load_clip_features(
    model: Any, processor: Any, start: int, n: int, args: argparse.Namespace, root: Path, chunk: int = 100
) -> torch.Tensor:
    parts = []
    for c in range(0, n, chunk):
        idx = list(range(start + c, start + min(n, c + chunk)))
        path = root / f"clip_{args.video_frames}f_{args.frame_size}px_{start + c:07d}_{len(idx)}.pt"
        fresh = not path.is_file()
        t0 = time.perf_counter()
        parts.append(
            extract_clip_features(model, processor, idx, args.bench_seed, args.video_frames, args.frame_size, path)
        )
        if fresh:
            _log(f"clip features {c + len(idx)}/{n} from index {start} ({time.perf_counter() - t0:.0f} s)")
    return torch.cat(parts)


def _video_segments(index: int, seed: int, frames: int, per_type: int) -> list[tuple[str, str, str]]:
    """Up to ``per_type`` distinct questions of every type the clip of item ``index`` can carry (its own first)."""
    from tokred.eval import shapes_video

    clip, own = shapes_video.item(index, seed, frames)
    out = [(own.question, own.answer, own.qtype)]
    rng = np.random.default_rng([seed, index, 7])
    for qtype in shapes_video.QTYPES:
        seen = {q for q, _, t in out if t == qtype}
        for _ in range(3 * per_type):
            if len(seen) >= per_type:
                break
            q = shapes_video.make_question(clip, qtype, rng)
            if q is not None and q.question not in seen:
                seen.add(q.question)
                out.append((q.question, q.answer, q.qtype))
    return out


@dataclass
class _VideoData:
    """Cached clip features, the clip packer and the validation items of the video part of QA training."""

    packer: Packer
    train_feats: torch.Tensor
    val_feats: torch.Tensor
    val_items: list[tuple[str, str, str]]
    seed: int

    def batch(self, step: int, args: argparse.Namespace) -> tuple[PackedBatch, torch.Tensor]:
        """The packed clips of QA step ``step`` (clip ``(step * B + k) % clips``) and their features."""
        rows = [(step * args.video_batch + k) % args.video_clips for k in range(args.video_batch)]
        items = [_video_segments(i, self.seed, args.video_frames, args.video_per_type) for i in rows]
        return self.packer.pack(items), self.train_feats[rows]


def _video_data(model: Any, processor: Any, args: argparse.Namespace, root: Path) -> _VideoData:
    from tokred.eval import shapes_video

    side = args.frame_size
    packer = Packer(processor, model.config.image_token_id, (side // 14) ** 2, args.video_frames, frame_sizes(side))
    val_start = shapes_video.SPLITS["val"][0]
    train = _load_clip_features(model, processor, shapes_video.SPLITS["train"][0], args.video_clips, args, root)
    val = _load_clip_features(model, processor, val_start, args.video_val_items, args, root)
    items = []
    for i in range(args.video_val_items):
        q = shapes_video.item(val_start + i, args.bench_seed, args.video_frames)[1]
        items.append((q.question, q.answer, q.qtype))
    _log(f"video features ready: train {tuple(train.shape)}, val {tuple(val.shape)}")
    return _VideoData(packer, train, val, items, args.bench_seed)


def load_warm_start(model: Any, wrapped: dict[str, LoRALinear], path: Path) -> None:
    """Load exported weights (projector + LoRA A/B) as the starting point of further training (unmerged)."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    proj = {k[len("projector.") :]: v.float() for k, v in tensors.items() if k.startswith("projector.")}
    model.model.multi_modal_projector.load_state_dict(proj)
    for name, w in wrapped.items():
        w.lora_a.data.copy_(tensors[f"lora.{name}.A"].float())
        w.lora_b.data.copy_(tensors[f"lora.{name}.B"].float())


# --------------------------------------------------------------------------------------------- packing


@dataclass
class PackedBatch:
    """A batch of packed sequences (right-padded).

    Attributes:
        input_ids: ``(B, L)`` token ids (image positions hold the image token id).
        position_ids: ``(B, L)``.
        mask: ``(B, 1, L, L)`` boolean attention mask (True = may attend).
        image_pos: ``(B, V)`` positions of the visual tokens (256 for an image, frames x 64 for a clip).
        sup_pos: ``(S,)`` flat indices into ``B * L`` of positions whose next token is supervised.
        sup_tgt: ``(S,)`` target token ids.
        seg_of_sup: ``(S,)`` index of the segment each supervised position belongs to.
        seg_qtype: Question type of each segment (``"caption"`` for the caption).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    mask: torch.Tensor
    image_pos: torch.Tensor
    sup_pos: torch.Tensor
    sup_tgt: torch.Tensor
    seg_of_sup: torch.Tensor
    seg_qtype: list[str]


class Packer:
    """Builds packed sequences in exactly the chat format the processor produces for one question.

    Args:
        processor: The reference processor.
        image_token_id: Id of the image token.
        n_image_tokens: Visual tokens per image (256).
    """

    def __init__(
        self,
        processor: Any,
        image_token_id: int,
        n_image_tokens: int = 256,
        n_images: int = 1,
        sizes: dict[str, Any] | None = None,
    ) -> None:
        tok = processor.tokenizer
        self.tok = tok
        self.image_token_id = image_token_id
        probe = "Q?"
        slots = [{"type": "image"}] * n_images
        text = processor.apply_chat_template(
            [{"role": "user", "content": [*slots, {"type": "text", "text": probe}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        img_tok = processor.image_token
        pieces = text.split(img_tok)  # head, the text between images (frame separators), tail
        self.prefix = tok(pieces[0], add_special_tokens=False).input_ids
        for mid in pieces[1:-1]:
            self.prefix += [image_token_id] * n_image_tokens + tok(mid, add_special_tokens=False).input_ids
        self.prefix += [image_token_id] * n_image_tokens
        after = pieces[-1].split(probe)
        self.q_before, self.q_after = after[0], after[1]  # "\n" and "<|im_end|>\n<|im_start|>assistant\n"
        self.eos = tok.convert_tokens_to_ids("<|im_end|>")
        self._cache: dict[str, list[int]] = {}
        # Check that prefix + segment reproduces the processor's tokenisation of a single-turn prompt.
        images = [shapes.render(shapes.generate_scene(0))] * n_images
        full = processor(images=images, text=[text + "red<|im_end|>"], return_tensors="pt", **(sizes or {}))
        mine = self.prefix + self.segment(probe, "red")[0]
        if full.input_ids[0].tolist() != mine:
            raise RuntimeError("packed tokenisation differs from the processor's; the chat format changed")

    def _ids(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tok(text, add_special_tokens=False).input_ids
        return self._cache[text]

    def segment(self, question: str, answer: str) -> tuple[list[int], int]:
        """Token ids of one ``question -> answer<|im_end|>`` segment and the length of its prompt part."""
        prompt = self._ids(self.q_before + question + self.q_after)
        ans = self._ids(answer) + [self.eos]
        return prompt + ans, len(prompt)

    def pack(self, items: Sequence[Sequence[tuple[str, str, str]]]) -> PackedBatch:
        """Pack, per image, its ``(question, answer, qtype)`` segments after the shared image prefix.

        Args:
            items: One list of segments per image.

        Returns:
            The batch.
        """
        seqs: list[list[int]] = []
        poss: list[list[int]] = []
        seg_ids: list[list[int]] = []
        sup: list[tuple[int, int, int, int]] = []  # (row, pos, target, segment)
        seg_qtype: list[str] = []
        lp = len(self.prefix)
        for row, segs in enumerate(items):
            ids = list(self.prefix)
            pos = list(range(lp))
            sid = [-1] * lp
            for q, a, qt in segs:
                seg, n_prompt = self.segment(q, a)
                start = len(ids)
                k = len(seg_qtype)
                seg_qtype.append(qt)
                ids += seg
                pos += list(range(lp, lp + len(seg)))
                sid += [k] * len(seg)
                for j in range(n_prompt, len(seg)):
                    sup.append((row, start + j - 1, seg[j], k))
            seqs.append(ids)
            poss.append(pos)
            seg_ids.append(sid)
        b, length = len(seqs), max(len(s) for s in seqs)
        input_ids = torch.full((b, length), self.eos, dtype=torch.long)
        position_ids = torch.zeros((b, length), dtype=torch.long)
        seg_t = torch.full((b, length), -2, dtype=torch.long)
        for r in range(b):
            n = len(seqs[r])
            input_ids[r, :n] = torch.tensor(seqs[r])
            position_ids[r, :n] = torch.tensor(poss[r])
            seg_t[r, :n] = torch.tensor(seg_ids[r])
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        si, sj = seg_t[:, :, None], seg_t[:, None, :]
        allowed = (sj == -1) | (si == sj)
        allowed &= si != -2
        mask = (causal[None] & allowed) | torch.eye(length, dtype=torch.bool)[None]
        image_pos = (input_ids == self.image_token_id).nonzero()[:, 1].view(b, -1)
        sup_t = torch.tensor(sup, dtype=torch.long)
        return PackedBatch(
            input_ids=input_ids,
            position_ids=position_ids,
            mask=mask[:, None],
            image_pos=image_pos,
            sup_pos=sup_t[:, 0] * length + sup_t[:, 1],
            sup_tgt=sup_t[:, 2],
            seg_of_sup=sup_t[:, 3],
            seg_qtype=seg_qtype,
        )


def packed_logits(model: Any, batch: PackedBatch, features: torch.Tensor) -> torch.Tensor:
    """Logits at the supervised positions of a packed batch, from cached vision features.

    Args:
        model: The (LoRA-wrapped) reference model.
        batch: The packed batch.
        features: ``(B, 256, 768)`` vision features.

    Returns:
        ``(S, vocab)`` logits.
    """
    lm = model.model.language_model
    embeds = lm.get_input_embeddings()(batch.input_ids)
    img = model.model.multi_modal_projector(features.float())
    b = embeds.shape[0]
    rows = torch.arange(b)[:, None].expand_as(batch.image_pos)
    embeds = embeds.index_put((rows, batch.image_pos), img.to(embeds.dtype))
    out = lm(inputs_embeds=embeds, attention_mask=batch.mask, position_ids=batch.position_ids, use_cache=False)
    hidden = out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])[batch.sup_pos]
    logits: torch.Tensor = model.lm_head(hidden)
    return logits


@torch.no_grad()
def packed_exact_match(
    model: Any, packer: Packer, items: Sequence[tuple[str, str, str]], features: torch.Tensor, batch: int = 8
) -> dict[str, float]:
    """Teacher-forced exact match (equals greedy decoding's exact match) of one question per image.

    Greedy decoding yields the gold answer iff the argmax at every answer step (and at ``<|im_end|>``) is the
    gold token, so one packed forward per image gives the same verdict as ``generate``.

    Args:
        model: The reference model.
        packer: The packer.
        items: ``(question, answer, qtype)`` per image.
        features: ``(len(items), 256, 768)`` vision features.
        batch: Images per forward.

    Returns:
        Accuracy per question type and ``"overall"``.
    """
    right: dict[str, list[bool]] = {}
    for s in range(0, len(items), batch):
        chunk = [[it] for it in items[s : s + batch]]
        pb = packer.pack(chunk)
        logits = packed_logits(model, pb, features[s : s + batch])
        ok = logits.argmax(-1) == pb.sup_tgt
        for k, qt in enumerate(pb.seg_qtype):
            right.setdefault(qt, []).append(bool(ok[pb.seg_of_sup == k].all()))
    acc = {qt: float(np.mean(v)) for qt, v in right.items()}
    acc["overall"] = float(np.mean([x for v in right.values() for x in v]))
    return acc


# --------------------------------------------------------------------------------------------- alignment


def _word_embedding(model: Any, tok: Any, word: str) -> torch.Tensor:
    ids = tok(word, add_special_tokens=False).input_ids
    emb = model.model.language_model.get_input_embeddings().weight
    return emb[ids].detach().float().mean(0)


def _align_targets(
    model: Any, tok: Any, start: int, n: int, seed: int, with_position: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch targets ``(n, 256, 576)`` and object masks ``(n, 256)`` for the alignment phases."""
    words = {w: _word_embedding(model, tok, " " + w) for w in [*shapes.COLOURS, *shapes.SHAPES]}
    words.update({w: _word_embedding(model, tok, " " + w) for w in ("left", "right", "top", "bottom")})
    bg = _word_embedding(model, tok, BACKGROUND_WORD)
    targets = bg.expand(n, 256, bg.shape[0]).clone()
    is_obj = torch.zeros(n, 256, dtype=torch.bool)
    for k in range(n):
        scene = shapes.item(start + k, seed)[0]
        owners = torch.from_numpy(shapes.patch_owners(scene).reshape(-1))
        for i, o in enumerate(scene.objects):
            sel = owners == i
            if not bool(sel.any()):
                continue
            t = words[o.colour] + words[o.shape]
            if with_position:
                h = "left" if o.cx < shapes.IMAGE_SIZE / 2 else "right"
                v = "top" if o.cy < shapes.IMAGE_SIZE / 2 else "bottom"
                t = t + 0.5 * (words[h] + words[v])
            targets[k, sel] = t
            is_obj[k, sel] = True
    return targets, is_obj


def _align_loss(pred: torch.Tensor, target: torch.Tensor, is_obj: torch.Tensor) -> torch.Tensor:
    cos = 1 - F.cosine_similarity(pred, target, dim=-1)
    rel = ((pred - target) ** 2).sum(-1) / (target**2).sum(-1)
    per = cos + rel
    obj = per[is_obj].mean() if bool(is_obj.any()) else per.new_zeros(())
    bgd = per[~is_obj].mean()
    return 0.5 * obj + 0.5 * bgd


# --------------------------------------------------------------------------------------------- training


def _lr_factor(step: int, total: int, warmup: int, decay_frac: float, floor: float = 0.1) -> float:
    if step < warmup:
        return (step + 1) / warmup
    decay_start = int(total * (1 - decay_frac))
    if step < decay_start or total <= decay_start:
        return 1.0
    p = (step - decay_start) / max(1, total - decay_start)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))


def _qa_segments(scene: shapes.Scene, per_type: int, count_per_type: int) -> list[tuple[str, str, str]]:
    qs = shapes.scene_questions(scene, max_per_type=max(per_type, count_per_type))
    out: list[tuple[str, str, str]] = []
    used: dict[str, int] = {}
    for q in qs:
        cap = count_per_type if q.qtype == "count" else per_type
        if used.get(q.qtype, 0) < cap:
            used[q.qtype] = used.get(q.qtype, 0) + 1
            out.append((q.question, q.answer, q.qtype))
    out.append((shapes.CAPTION_PROMPT, shapes.caption(scene), "caption"))
    return out


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def export_weights(
    model: Any, wrapped: dict[str, LoRALinear], out_dir: Path, record: dict[str, Any], curve_md: str
) -> Path:
    """Write the projector and LoRA A/B (fp16) plus the training record.

    Args:
        model: The trained model.
        wrapped: LoRA wrappers by module path.
        out_dir: Target directory (``tokred/eval/weights``).
        record: JSON-serialisable training record.
        curve_md: Markdown rendering of the record.

    Returns:
        Path of the safetensors file.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.model.multi_modal_projector.state_dict().items():
        tensors[f"projector.{k}"] = v.detach().to(torch.float16).contiguous()
    rank = alpha = 0.0
    for name, w in wrapped.items():
        tensors[f"lora.{name}.A"] = w.lora_a.detach().to(torch.float16).contiguous()
        tensors[f"lora.{name}.B"] = w.lora_b.detach().to(torch.float16).contiguous()
        rank, alpha = float(w.rank), w.scale * w.rank
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "reference.safetensors"
    save_file(tensors, str(path), metadata={"rank": str(rank), "alpha": str(alpha), "format": "tokred-reference-v1"})
    path.chmod(0o644)
    import hashlib

    record = dict(record)
    record["weights_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    record["weights_bytes"] = path.stat().st_size
    (out_dir / "reference.json").write_text(json.dumps(record, indent=2) + "\n")
    (out_dir / str(record.get("record_md", "TRAINING.md"))).write_text(curve_md)
    return path


def _record_md(rec: dict[str, Any]) -> str:
    lines = [
        "# Reference model training record",
        "",
        "- commands (the first started the run, later ones resumed it):",
        *[f"  - `{c}`" for c in rec["commands"]],
        f"- seed: {rec['seed']}; threads: {rec['threads']}; machine: {rec['machine']}",
        f"- alignment: {rec['align_steps']} + {rec['align_pos_steps']} steps, {rec['align_wall_s'] / 60:.1f} min",
        f"- QA: {rec['qa_steps_done']} / {rec['qa_steps']} steps, {rec['qa_wall_s'] / 60:.1f} min "
        f"({rec['qa_wall_s'] / max(1, rec['qa_steps_done']):.2f} s/step)",
        f"- feature cache: {rec['feature_wall_s'] / 60:.1f} min",
        f"- final loss (mean of last 20 steps): {rec['final_loss']:.4f}",
        "",
        "## Learning curve",
        "",
        "| step | train min | loss (mean of last 10) | val overall | "
        + " | ".join(shapes.QTYPES)
        + " |"
        + (" video val | " + " | ".join(_video_qtypes()) + " |" if rec.get("video") else ""),
        "|---|---|---|---|"
        + "---|" * len(shapes.QTYPES)
        + ("---|" * (1 + len(_video_qtypes())) if rec.get("video") else ""),
    ]
    if rec.get("warm_start"):
        lines[2:2] = [f"- warm start: `{rec['warm_start']}` (projector + LoRA of the previous release)"]
    if rec.get("video"):
        v = rec["video"]
        lines[2:2] = [
            f"- video: {v['clips']} shapes-video training clips of {v['frames']} frames at {v['frame_size']} px, "
            f"{v['batch']} clips per step beside the images"
        ]
    evals = {e["step"]: e for e in rec["val_curve"]}
    for p in rec["loss_curve"]:
        e = evals.get(p["step"])
        acc = _acc_cells(e, shapes.QTYPES)
        if rec.get("video"):
            acc += " | " + _acc_cells(e.get("video") if e else None, _video_qtypes())
        lines.append(f"| {p['step']} | {p['min']:.1f} | {p['loss']:.4f} | {acc} |")
    return "\n".join(lines) + "\n"


def _video_qtypes() -> tuple[str, ...]:
    from tokred.eval import shapes_video

    return shapes_video.QTYPES


def _acc_cells(e: dict[str, Any] | None, qtypes: Sequence[str]) -> str:
    """``overall | type | type ...`` cells of one validation entry (empty cells when there is none)."""
    if not e:
        return " | ".join([""] * (len(qtypes) + 1))
    return f"{100 * e['overall']:.1f} | " + " | ".join(f"{100 * e.get(t, float('nan')):.0f}" for t in qtypes)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the module docstring's layout."""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(
        prog="python -m tokred.eval.train_reference",
        description=__doc__,
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("runs/reference"), help="run directory (checkpoints, cache)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--bench-seed", type=int, default=shapes.DEFAULT_SEED, help="shapes benchmark seed")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--train-images", type=int, default=1200, help="training images (feature cache size)")
    p.add_argument("--val-items", type=int, default=100, help="validation questions for the learning curve")
    p.add_argument("--align-steps", type=int, default=600, help="projector pre-alignment steps")
    p.add_argument("--align-pos-steps", type=int, default=200, help="pre-alignment steps with position words")
    p.add_argument("--align-batch", type=int, default=32, help="images per alignment step")
    p.add_argument("--align-lr", type=float, default=2e-3, help="alignment learning rate (cosine)")
    p.add_argument("--qa-steps", type=int, default=260, help="QA training steps")
    p.add_argument("--batch", type=int, default=4, help="images per QA step")
    p.add_argument("--per-type", type=int, default=3, help="questions per type per image")
    p.add_argument("--count-per-type", type=int, default=4, help="count questions per image")
    p.add_argument("--lora-rank", type=int, default=32, help="LoRA rank")
    p.add_argument("--lora-alpha", type=float, default=64.0, help="LoRA alpha")
    p.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate")
    p.add_argument("--proj-lr", type=float, default=1e-3, help="projector learning rate in the QA phase")
    p.add_argument("--warmup", type=int, default=20, help="warm-up steps")
    p.add_argument("--decay-frac", type=float, default=0.3, help="fraction of QA steps with cosine decay")
    p.add_argument(
        "--restart-step",
        type=int,
        default=0,
        help="warm restart: from this QA step on, the schedule (warm-up, constant, cosine) restarts and runs to "
        "--qa-steps; use with --resume to train an exported model further with a fresh schedule",
    )
    p.add_argument("--ckpt-every", type=int, default=20, help="checkpoint every N QA steps")
    p.add_argument("--eval-every", type=int, default=100, help="validation every N QA steps (0: never)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop QA (with a checkpoint) after this many")
    p.add_argument(
        "--warm-start",
        type=Path,
        default=None,
        help="start the QA phase from exported weights (projector + LoRA, e.g. tokred/eval/weights/"
        "reference.safetensors) instead of fresh LoRA; combine with --align-steps 0 --align-pos-steps 0",
    )
    p.add_argument("--video-clips", type=int, default=0, help="shapes-video training clips (0: no video)")
    p.add_argument("--video-batch", type=int, default=2, help="clips per QA step (with --video-clips)")
    p.add_argument("--video-frames", type=int, default=8, help="frames per training clip")
    p.add_argument("--frame-size", type=int, default=112, help="pixel side of a video frame (112: 64 tokens)")
    p.add_argument("--video-per-type", type=int, default=2, help="questions per type per clip")
    p.add_argument("--video-val-items", type=int, default=100, help="video validation questions per evaluation")
    p.add_argument("--record-md", default="TRAINING.md", help="file name of the markdown record --export writes")
    p.add_argument("--export", action="store_true", help="write the weights to tokred/eval/weights when done")
    p.add_argument("--export-dir", type=Path, default=Path(__file__).with_name("weights"), help="where --export writes")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or resume) training; see ``--help``.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"

    from tokred.eval.reference import load_reference_model

    model, processor = load_reference_model(trained=False)
    model.requires_grad_(False)
    tok = processor.tokenizer
    packer = Packer(processor, model.config.image_token_id)

    state: dict[str, Any] = {
        "phase": "align",
        "align_step": 0,
        "qa_step": 0,
        "loss_curve": [],
        "val_curve": [],
        "align_wall_s": 0.0,
        "qa_wall_s": 0.0,
        "feature_wall_s": 0.0,
        "align_losses": [],
    }
    if args.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, weights_only=False)
        model.model.multi_modal_projector.load_state_dict(state["projector"])
        _log(
            f"resumed from {ckpt_path}: phase {state['phase']}, align step {state['align_step']}, "
            f"QA step {state['qa_step']}"
        )
    elif args.resume:
        _log(f"--resume given but {ckpt_path} does not exist: starting from scratch")

    cmdline = "python -m tokred.eval.train_reference " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    state.setdefault("commands", []).append(cmdline)
    t0 = time.perf_counter()
    val_start = shapes.SPLITS["val"][0]
    train_feats = _load_features(model, processor, 0, args.train_images, args.bench_seed, out / "features")
    val_feats = _load_features(model, processor, val_start, args.val_items, args.bench_seed, out / "features")
    if state["feature_wall_s"] == 0.0:
        state["feature_wall_s"] = time.perf_counter() - t0
    _log(f"features ready: train {tuple(train_feats.shape)}, val {tuple(val_feats.shape)}")
    val_items = []
    for i in range(args.val_items):
        q = shapes.item(val_start + i, args.bench_seed)[1]
        val_items.append((q.question, q.answer, q.qtype))

    video = _video_data(model, processor, args, out / "features") if args.video_clips > 0 else None
    proj = model.model.multi_modal_projector
    # ---------------------------------------------------------------- phase 1: projector pre-alignment
    total_align = args.align_steps + args.align_pos_steps
    if state["phase"] == "align" and total_align > 0:
        proj.requires_grad_(True)
        opt = torch.optim.AdamW(proj.parameters(), lr=args.align_lr, weight_decay=0.0)
        if "align_opt" in state:
            opt.load_state_dict(state["align_opt"])
        targets: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}
        gen = torch.Generator().manual_seed(args.seed)
        perm = torch.randperm(args.train_images, generator=gen)
        t_phase = time.perf_counter() - state["align_wall_s"]
        while state["align_step"] < total_align:
            step = state["align_step"]
            with_pos = step >= args.align_steps
            if with_pos not in targets:
                targets[with_pos] = _align_targets(model, tok, 0, args.train_images, args.bench_seed, with_pos)
            phase_step = step - args.align_steps if with_pos else step
            phase_len = args.align_pos_steps if with_pos else args.align_steps
            lr = args.align_lr * 0.5 * (1 + math.cos(math.pi * phase_step / phase_len))
            for g in opt.param_groups:
                g["lr"] = lr
            s = (step * args.align_batch) % args.train_images
            idx = perm[torch.arange(s, s + args.align_batch) % args.train_images]
            tgt, is_obj = targets[with_pos]
            pred = proj(train_feats[idx].float())
            loss = _align_loss(pred, tgt[idx], is_obj[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["align_losses"].append(loss.item())
            state["align_step"] = step + 1
            if (step + 1) % 50 == 0 or step + 1 == total_align:
                state["align_wall_s"] = time.perf_counter() - t_phase
                _log(f"align step {step + 1}/{total_align} loss {np.mean(state['align_losses'][-50:]):.4f} lr {lr:.2e}")
            if (step + 1) % 200 == 0 or step + 1 == total_align:
                state["projector"] = proj.state_dict()
                state["align_opt"] = opt.state_dict()
                _save(ckpt_path, state)
        state["align_wall_s"] = time.perf_counter() - t_phase
        state["phase"] = "qa"
        state.pop("align_opt", None)
        state["projector"] = proj.state_dict()
        _save(ckpt_path, state)
        del targets

    # ---------------------------------------------------------------- phase 2: QA with LoRA
    wrapped = add_lora(model, args.lora_rank, args.lora_alpha)
    if "lora" in state:
        for name, w in wrapped.items():
            w.lora_a.data.copy_(state["lora"][f"{name}.A"])
            w.lora_b.data.copy_(state["lora"][f"{name}.B"])
    elif state["qa_step"] == 0 and args.warm_start is not None:
        load_warm_start(model, wrapped, args.warm_start)
        _log(f"warm start from {args.warm_start}")
    elif state["qa_step"] == 0:
        torch.manual_seed(args.seed + 1)
        for w in wrapped.values():
            nn.init.kaiming_uniform_(w.lora_a, a=math.sqrt(5))
    lora_params = [p for w in wrapped.values() for p in (w.lora_a, w.lora_b)]
    for p_ in lora_params:
        p_.requires_grad_(True)
    proj.requires_grad_(True)
    opt = torch.optim.AdamW(
        [
            {"params": lora_params, "lr": args.lr, "base": args.lr},
            {"params": list(proj.parameters()), "lr": args.proj_lr, "base": args.proj_lr},
        ],
        weight_decay=0.0,
    )
    if "qa_opt" in state:
        opt.load_state_dict(state["qa_opt"])
        # load_state_dict restores the saved hyper-parameters; the base rates come from this command.
        for g, base in zip(opt.param_groups, (args.lr, args.proj_lr)):
            g["base"] = base
    model.train()
    n_lora = sum(p.numel() for p in lora_params)
    _log(
        f"QA phase: {len(wrapped)} LoRA layers, {n_lora / 1e6:.2f} M LoRA params; "
        f"step {state['qa_step']}/{args.qa_steps}"
    )

    def checkpoint() -> None:
        state["projector"] = proj.state_dict()
        state["lora"] = {f"{n}.A": w.lora_a.detach().clone() for n, w in wrapped.items()} | {
            f"{n}.B": w.lora_b.detach().clone() for n, w in wrapped.items()
        }
        state["qa_opt"] = opt.state_dict()
        _save(ckpt_path, state)

    def evaluate(step: int) -> None:
        model.eval()
        te = time.perf_counter()
        acc: dict[str, Any] = dict(packed_exact_match(model, packer, val_items, val_feats))
        if video is not None:
            acc["video"] = packed_exact_match(model, video.packer, video.val_items, video.val_feats)
            vid = acc["video"]
            _log("video val: " + " ".join(f"{t} {100 * v:.0f}" for t, v in vid.items()))
        model.train()
        acc["step"] = step
        acc["min"] = state["qa_wall_s"] / 60
        state["val_curve"].append(acc)
        per = " ".join(f"{t} {100 * acc.get(t, float('nan')):.0f}" for t in shapes.QTYPES)
        _log(f"val @ step {step}: overall {100 * acc['overall']:.1f} | {per} ({time.perf_counter() - te:.0f} s)")

    losses: list[float] = state.setdefault("qa_losses", [])
    t_resume = time.perf_counter()
    wall_before = state["qa_wall_s"]
    stopped_early = False
    while state["qa_step"] < args.qa_steps:
        step = state["qa_step"]
        if args.restart_step and step >= args.restart_step:
            f = _lr_factor(step - args.restart_step, args.qa_steps - args.restart_step, args.warmup, args.decay_frac)
        else:
            f = _lr_factor(step, args.qa_steps, args.warmup, args.decay_frac)
        for g in opt.param_groups:
            g["lr"] = g["base"] * f
        rows = [(step * args.batch + k) % args.train_images for k in range(args.batch)]
        items = [_qa_segments(shapes.item(i, args.bench_seed)[0], args.per_type, args.count_per_type) for i in rows]
        pb = packer.pack(items)
        logits = packed_logits(model, pb, train_feats[rows])
        loss = F.cross_entropy(logits.float(), pb.sup_tgt)
        if video is not None:  # clips join the step; the loss is the mean over all supervised tokens
            vpb, vfeat = video.batch(step, args)
            vlogits = packed_logits(model, vpb, vfeat)
            n_i, n_v = len(pb.sup_tgt), len(vpb.sup_tgt)
            vloss = F.cross_entropy(vlogits.float(), vpb.sup_tgt)
            loss = (loss * n_i + vloss * n_v) / (n_i + n_v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora_params + list(proj.parameters()), 1.0)
        opt.step()
        losses.append(loss.item())
        state["qa_step"] = step + 1
        state["qa_wall_s"] = wall_before + time.perf_counter() - t_resume
        if (step + 1) % 10 == 0:
            state["loss_curve"].append(
                {"step": step + 1, "min": state["qa_wall_s"] / 60, "loss": float(np.mean(losses[-10:]))}
            )
            _log(
                f"QA step {step + 1}/{args.qa_steps} loss {np.mean(losses[-10:]):.4f} lr x{f:.2f} "
                f"{state['qa_wall_s'] / (step + 1):.2f} s/step (seq {pb.input_ids.shape[1]})"
            )
        if args.eval_every and (step + 1) % args.eval_every == 0:
            evaluate(step + 1)
        if (step + 1) % args.ckpt_every == 0:
            checkpoint()
        if args.max_minutes and (time.perf_counter() - t_resume) / 60 >= args.max_minutes:
            stopped_early = True
            break
    if not state["val_curve"] or state["val_curve"][-1]["step"] != state["qa_step"]:
        evaluate(state["qa_step"])
    checkpoint()
    if stopped_early:
        _log(f"stopped after --max-minutes at step {state['qa_step']}; resume with --resume")

    record = {
        "command": state["commands"][0],
        "commands": state["commands"],
        "seed": args.seed,
        "bench_seed": args.bench_seed,
        "threads": args.threads,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}",
        "args": {k: str(v) for k, v in vars(args).items()},
        "align_steps": args.align_steps,
        "align_pos_steps": args.align_pos_steps,
        "align_wall_s": state["align_wall_s"],
        "align_final_loss": float(np.mean(state["align_losses"][-50:])) if state["align_losses"] else None,
        "feature_wall_s": state["feature_wall_s"],
        "qa_steps": args.qa_steps,
        "qa_steps_done": state["qa_step"],
        "qa_wall_s": state["qa_wall_s"],
        "final_loss": float(np.mean(losses[-20:])) if losses else float("nan"),
        "loss_curve": state["loss_curve"],
        "val_curve": state["val_curve"],
        "lora": {"rank": args.lora_rank, "alpha": args.lora_alpha, "targets": list(LORA_TARGETS)},
        "warm_start": str(args.warm_start) if args.warm_start else None,
        "video": {
            "clips": args.video_clips,
            "batch": args.video_batch,
            "frames": args.video_frames,
            "frame_size": args.frame_size,
        }
        if video is not None
        else None,
        "record_md": args.record_md,
    }
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    if args.export and state["qa_step"] >= args.qa_steps:
        path = export_weights(model, wrapped, args.export_dir, record, _record_md(record))
        _log(f"exported {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
