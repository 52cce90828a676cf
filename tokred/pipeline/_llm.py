"""In-LLM stage: forward pre-hooks on the decoder and its layers that drop (or mask) visual tokens.

Reproduces the side-input plumbing of the transformers 5.x decoder loops (``models/llama/modeling_llama.py``
``LlamaModel.forward``; Qwen2, Qwen2-VL, Qwen2.5-VL, Gemma3 are the same): the decoder builds the mask, the RoPE
cos/sin and the position ids once for the full sequence and passes them unchanged to every layer, and only the hidden
states flow from layer to layer. So at a pruning layer the hook gathers the kept rows of the hidden states, and at
every later layer it gathers the side inputs with the kept indices in *original* coordinates (cos/sin on dim -2,
position ids on the last dim, materialised 4-D masks on rows and columns; in decode steps only mask columns, through
``cat(keep, generated)``). Layer 0 is never pruned, so the stock ``DynamicCache`` keeps reporting original lengths
(positions and mask sizes stay right) while every pruned layer's cache holds only its kept tokens.

The hooks read and write the calls' keywords through the transformers seam ([`tokred.adapters.hf.CallArgs`][]),
never by name.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from tokred._components import RouteContext
from tokred.adapters import hf
from tokred.errors import PluginOutputError, UnsupportedModeError, UnsupportedModelError
from tokred.ops import gather_tokens, topk_keep
from tokred.ops.routing import route_keep
from tokred.pipeline._attention import ProbeDone
from tokred.pipeline._checks import check_scores
from tokred.pipeline._state import RunState


def _per_token(t: Any, batch: int, n: int) -> bool:
    """Whether ``t`` is a per-token tensor (B, n, ...) of the prompt."""
    return torch.is_tensor(t) and t.dim() >= 3 and t.shape[0] == batch and t.shape[1] == n


def gather_seq(t: torch.Tensor, idx: torch.Tensor, dim: int, batch_dim: int | None = None) -> torch.Tensor:
    """Gather sequence positions ``idx`` (B, K) of ``t`` along ``dim``.

    Args:
        t: Any tensor with a sequence dim and a batch dim (of size B or 1, expanded to B).
        idx: Positions per sample, shape (B, K).
        dim: Sequence dim (negative).
        batch_dim: Batch dim (negative); default ``dim - 1``. Dims before it (e.g. the 3 M-RoPE rows) broadcast.

    Returns:
        ``t`` with ``dim`` of size K.
    """
    nd = t.dim()
    d = nd + dim
    bd = nd + (dim - 1 if batch_dim is None else batch_dim)
    b, k = idx.shape
    if t.shape[bd] == 1 and b > 1:
        t = t.expand(*t.shape[:bd], b, *t.shape[bd + 1 :])
    shape = [1] * nd
    shape[bd], shape[d] = b, k
    index = idx.view(shape).expand(*t.shape[:d], k, *t.shape[d + 1 :])
    return t.gather(d, index)


class InLLMStage:
    """Installs and runs the decoder and layer hooks of one patch.

    Args:
        adapter: The model adapter.
        state: The run state shared with the other stages.
    """

    def __init__(self, adapter: Any, state: RunState) -> None:
        self.adapter = adapter
        self.state = state
        state.final_norm = adapter.final_norm()
        self.windows = adapter.sliding_windows()
        # DeepStack injection taken over from the decoder while a prefill prunes: (visual mask (B, N), per-layer (V, C))
        self.injection: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    def install(self) -> list[RemovableHandle]:
        """Register the hooks; returns their handles."""
        dec = self.adapter.decoder
        handles = [
            dec.register_forward_pre_hook(self._decoder_pre, with_kwargs=True),
            dec.register_forward_hook(self._decoder_post),
        ]
        for i, layer in enumerate(self.adapter.decoder_layers()):
            handles.append(layer.register_forward_pre_hook(functools.partial(self._layer_pre, i), with_kwargs=True))
            if self.adapter.injects_features():
                handles.append(layer.register_forward_hook(functools.partial(self._layer_post, i)))
        if self.state.strategy.router is not None:
            handles += self._install_routing()
        return handles

    def _install_routing(self) -> list[RemovableHandle]:
        """Hooks of a routing strategy on its MoD layers: scatter the outputs back; scale the MLP branch."""
        from tokred.pipeline._state import check_route_layers

        router = self.state.strategy.router
        layers = self.adapter.decoder_layers()
        handles = []
        for i in check_route_layers(router, len(layers)):
            handles.append(layers[i].register_forward_hook(functools.partial(self._route_post, i)))
            mlp = hf.layer_mlp_output(layers[i])
            if getattr(router, "weighted", False) and mlp is not None:
                handles.append(mlp.register_forward_hook(functools.partial(self._mlp_post, i)))
        return handles

    # --------------------------------------------------------------------------------------- decoder

    def _decoder_pre(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = hf.CallArgs(args, kwargs)
        emb = call.inputs_embeds
        if emb is None:
            return None  # called with input_ids only (text path): nothing visual to reduce
        b, q = emb.shape[:2]
        past = call.cache_length()
        st = self.state
        if past == 0:
            st.begin_prefill(b, q, emb.device)
            self.injection = None
            if st.pruning:
                self._guard_prefill(call.cache, q)
                if call.cache is not None and st.mode == "drop":  # masks may be sized from a pruned layer
                    hf.pin_mask_sizes(call.cache)
                if call.attention_mask is None:  # never rely on packed-sequence detection
                    call.attention_mask = torch.ones(b, q, dtype=torch.long, device=emb.device)
                self._take_injection(call)
            return call.result()
        if st.phase != "decode" or not st.pruning:
            return None
        if q != 1:
            raise UnsupportedModeError(
                f"a {q}-token step on a non-empty cache (chunked prefill, assisted/speculative decoding or continuing "
                "a conversation) cannot be combined with in-LLM pruning: pruned layers hold different tokens than "
                "layer 0. Use plain generate() with one prompt per call"
            )
        self._guard_window(past + q)
        st.decode_kv = past + q
        if st.mode == "drop":  # the layer transformers sizes masks from may be a pruned one
            hf.pin_mask_sizes(call.cache)
        return None

    def _guard_prefill(self, cache: Any, q: int) -> None:
        if torch.compiler.is_compiling():
            raise UnsupportedModeError("torch.compile cannot trace tokred's data-dependent pruning; run uncompiled")
        if cache is not None and not hf.is_prunable_cache(cache):
            raise UnsupportedModeError(
                f"in-LLM pruning needs a DynamicCache, got {type(cache).__name__} (static caches give every layer "
                "the length of layer 0); use the default cache (no cache_implementation='static')"
            )
        self._guard_window(q)

    def _guard_window(self, total: int) -> None:
        limits = [w for w in self.windows if w]
        if limits and total > min(limits) - 1:
            raise UnsupportedModeError(
                f"the sequence ({total} tokens) exceeds the sliding window ({min(limits)}) of some decoder layers; "
                "pruned sliding-window layers would evict by physical rather than original distance. Shorten the "
                "prompt/generation or use a strategy without in-LLM pruning"
            )

    def _take_injection(self, call: hf.CallArgs) -> None:
        """Drop mode: take DeepStack features out of the decoder call; ``_layer_post`` adds them to the kept rows.

        The decoder would add them at the visual positions of the full sequence after each of its first layers,
        which no longer line up once a layer has dropped tokens.
        """
        embeds, mask = call.deepstack_embeds, call.visual_pos_masks
        if embeds is None or mask is None or self.state.mode != "drop":
            return
        self.injection = (mask.bool(), list(embeds))
        call.deepstack_embeds = None

    def _layer_post(self, i: int, module: Any, args: tuple[Any, ...], output: Any) -> Any:
        """After layer ``i`` of a pruned prefill: add its DeepStack features to the visual rows it kept."""
        if self.injection is None or self.state.phase != "prefill" or i >= len(self.injection[1]):
            return None
        mask, embeds = self.injection  # (B, N), [(V, C)]
        h = output if torch.is_tensor(output) else output[0]  # (B, N_i, C)
        rows = (mask.flatten().cumsum(0) - 1).view(mask.shape)  # (B, N): row of each visual token in embeds
        keep = self.state.layer_keep[i]  # (B, K) original indices this layer processed, None: all
        if keep is not None:
            mask, rows = mask.gather(1, keep), rows.gather(1, keep)
        h = h.clone()
        h[mask] = h[mask] + embeds[i].to(h.device, h.dtype)[rows[mask]]
        return h if torch.is_tensor(output) else (h, *output[1:])

    def _decoder_post(self, module: Any, args: tuple[Any, ...], output: Any) -> None:
        if self.state.phase == "prefill":
            self.state.end_prefill()

    # --------------------------------------------------------------------------------------- layers

    def _layer_pre(self, i: int, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        st = self.state
        call = hf.CallArgs(args, kwargs)
        if st.phase == "prefill" and i in st.route_layers:
            self._route(i, call)
            return call.result()
        if st.phase == "prefill":
            if i in st.prune_layers:
                if i in st.probe_layers:
                    self._probe(i, module, call)
                call.hidden_states = self._prune(i, call.hidden_states)
            st.record_layer(i, call.hidden_states.shape[1])
            if st.keep is not None:
                self._gather_prefill(call, st.keep, i, call.hidden_states)
            elif st.allowed is not None:
                self._mask_keys(call, st.allowed, prefill=True)
            return call.result()
        if st.phase == "decode" and st.pruning:
            keep, allowed = st.layer_keep[i], st.layer_allowed[i]
            if keep is not None:
                self._gather_decode(call, keep)
                if st.positions == "reindex":
                    self._reindex_decode(call, keep, i)
            elif allowed is not None:
                self._mask_keys(call, allowed, prefill=False)
            return call.result()
        return None

    # --------------------------------------------------------------------------------------- routing

    def _route(self, i: int, call: hf.CallArgs) -> None:
        """Before MoD layer ``i`` (prefill): the router picks the rows the layer processes; the layer gets only those
        rows and their side inputs (original coordinates); ``_route_post`` puts the full sequence back together."""
        st = self.state
        router = st.strategy.router
        assert router is not None and st.routable is not None
        h = call.hidden_states  # (B, N, C)
        ctx = RouteContext(h, st.routable, st.cur_pad, st.cur_visual, i, st.num_layers)
        decision = router.route(ctx)
        self._check_decision(decision.scores, decision.weight, h, router.name)
        counts = [int(router.capacity(i, int(r))) for r in st.routable.sum(dim=1).tolist()]
        for c, r in zip(counts, st.routable.sum(dim=1).tolist()):
            if not 0 <= c <= r:
                raise PluginOutputError(f"router '{router.name}' gave capacity {c} for {r} routable tokens")
        keep = route_keep(decision.scores, st.routable, st.cur_pad, torch.tensor(counts, device=h.device))  # (B, K)
        st.route_weight = None
        if decision.weight is not None:  # non-routable tokens (question, padding) keep the layer's own output
            w = torch.where(st.routable, decision.weight, torch.ones_like(decision.weight))  # (B, N)
            st.route_weight = w.gather(1, keep)  # (B, K)
        st.route_now, st.route_full = i, h
        st.record_route(i, keep)
        call.hidden_states = gather_tokens(h, keep)  # (B, K, C)
        self._gather_prefill(call, keep, i, h)

    @staticmethod
    def _check_decision(scores: Any, weight: Any, h: torch.Tensor, name: str) -> None:
        shape = tuple(h.shape[:2])
        for what, t in (("scores", scores), ("weight", weight)):
            if t is not None and (not torch.is_tensor(t) or tuple(t.shape) != shape):
                got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
                raise PluginOutputError(f"router '{name}' returned {what} of shape {got}; expected (B, N) = {shape}")
        if not bool(torch.isfinite(scores.detach()).all()):
            raise PluginOutputError(f"router '{name}' returned non-finite scores")

    def _route_post(self, i: int, module: Any, args: tuple[Any, ...], output: Any) -> Any:
        """After MoD layer ``i`` (prefill): scatter its rows into the full-length input; skipped rows pass unchanged."""
        st = self.state
        if st.phase != "prefill" or st.route_now != i or st.route_full is None:
            return None
        full, keep = st.route_full, st.routed[i]  # (B, N, C), (B, K)
        h = output if torch.is_tensor(output) else output[0]  # (B, K, C)
        out = full.scatter(1, keep[:, :, None].expand(-1, -1, full.shape[-1]), h.to(full.dtype))  # (B, N, C)
        st.route_now = st.route_full = st.route_weight = None
        return out if torch.is_tensor(output) else (out, *output[1:])

    def _mlp_post(self, i: int, module: Any, args: tuple[Any, ...], output: Any) -> Any:
        """The MLP branch of MoD layer ``i`` times the router weight of each processed token (prefill)."""
        st = self.state
        w = st.route_weight  # (B, K)
        if st.phase != "prefill" or st.route_now != i or w is None or not torch.is_tensor(output):
            return None
        return output * w[:, :, None].to(output.dtype)

    def _prune(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Select the tokens layer ``i`` keeps, from scores of layer ``i - 1``; returns the hidden states it gets.

        A layer whose budget is 0 keeps no visual token whatever the scores, so its scorer is not run (and the
        previous layer captures nothing for it).
        """
        st = self.state
        scorer = st.strategy.scorer
        assert scorer is not None
        if st.budgets[i] == 0:
            scores = torch.zeros(st.cur_visual.shape, device=h.device)  # (B, N_cur) nothing visual is kept
        else:
            scores = scorer.score(st.score_context(i, h))  # (B, N_cur)
            scores = check_scores(scores, h, st.cur_visual, scorer, st.allowed).float()
        if st.allowed is not None:  # mask mode: never revive a pruned token
            scores = scores.masked_fill(~st.allowed, float("-inf"))
        local = topk_keep(scores, self._count(i, scores), protected=~st.cur_visual)  # (B, K) ascending
        if st.mode == "mask":
            base = st.allowed if st.allowed is not None else torch.ones_like(st.cur_visual)
            st.allowed = torch.zeros_like(base).scatter(1, local, True) & base
            st.kept_indices[i] = local
            return h
        st.keep = local if st.keep is None else st.keep.gather(1, local)
        st.kept_indices[i] = st.keep
        st.cur_visual = st.cur_visual.gather(1, local)
        st.cur_pad = st.cur_pad.gather(1, local)
        return gather_tokens(h, local)  # (B, K, C)

    def _probe(self, i: int, layer: Any, call: hf.CallArgs) -> None:
        """Projection-only pass of pruning layer ``i`` on its (not yet reduced) input, for own-layer scorers.

        Runs the layer's input norm and its self-attention module as the layer would, on the current token set with
        its current positions; tokred's attention function captures the post-RoPE queries and keys and stops the
        module (``ProbeDone``) before the attention and output projection run. No cache is touched.
        """
        st = self.state
        norm = hf.layer_input_norm(layer)
        if norm is None:
            name = getattr(st.strategy.scorer, "name", "?")
            raise UnsupportedModelError(
                f"scorer '{name}' scores decoder layer {i} with its own input norm, but "
                f"{type(layer).__name__} has no '{hf.INPUT_NORM}'; use a strategy that scores the previous layer's "
                "attention (fastv)"
            )
        h = call.hidden_states
        probe = hf.CallArgs((), dict(call.kwargs))
        if st.keep is not None:
            self._gather_prefill(probe, st.keep, i, h)
        st.probing = i
        try:
            hf.call_self_attention(hf.layer_attention(layer), norm(h), probe.kwargs)
        except ProbeDone:
            return
        finally:
            st.probing = None
        raise UnsupportedModeError(
            f"the scoring pass of decoder layer {i} never reached tokred's attention function, so its queries and keys "
            "were not captured; load the model with attn_implementation='sdpa' or 'eager'"
        )

    def _count(self, i: int, scores: torch.Tensor) -> int:
        """Visual tokens layer ``i`` keeps: its budget, or for a self-sizing scheduler (``adaptive``) at most the
        visual tokens the scorer scored finite (the same count in every row)."""
        st = self.state
        if not getattr(st.strategy.scheduler, "adaptive", False):
            return st.budgets[i]
        finite = (torch.isfinite(scores) & st.cur_visual).sum(dim=1)  # (B,)
        if bool((finite != finite[0]).any()):
            raise UnsupportedModeError(
                f"the scorer kept different visual counts per sample at layer {i} ({finite.tolist()}); a self-sizing "
                "schedule needs one sample per batch"
            )
        return min(st.budgets[i], int(finite[0]))

    def _gather_prefill(self, call: hf.CallArgs, keep: torch.Tensor, layer: int, h: torch.Tensor) -> None:
        n = self.state.prompt_len
        if self.state.positions == "reindex":
            self._reindex_prefill(call, keep, layer, h)
        else:
            pe = call.position_embeddings
            if isinstance(pe, tuple):  # (cos, sin), sequence on dim -2
                call.position_embeddings = tuple(
                    gather_seq(t, keep, -2) if torch.is_tensor(t) and t.shape[-2] == n else t for t in pe
                )
            pid = call.position_ids
            if torch.is_tensor(pid) and pid.shape[-1] == n:
                call.position_ids = gather_seq(pid, keep, -1)
        mask = call.attention_mask
        if torch.is_tensor(mask):
            if mask.dim() == 4:
                call.attention_mask = gather_seq(gather_seq(mask, keep, -1, -4), keep, -2, -4)
            elif mask.dim() == 2:
                call.attention_mask = gather_seq(mask, keep, -1)
        if len(call.args) > 1:  # other per-token inputs of the layer (Gemma 4's per-layer input embeddings)
            side = (
                gather_seq(a, keep, 1 - a.dim(), -a.dim()) if _per_token(a, h.shape[0], n) else a for a in call.args[1:]
            )
            call.args = (call.args[0], *side)

    def _reindex_positions(self, pid: Any, width: int, what: str) -> torch.Tensor:
        """The layer call's 1-D position ids (B|1, width), or one clear error for what ``reindex`` cannot renumber."""
        if not (torch.is_tensor(pid) and pid.dim() == 2 and pid.shape[-1] == width):
            shape = None if not torch.is_tensor(pid) else tuple(pid.shape)
            raise UnsupportedModeError(
                f"positions='reindex' renumbers 1-D position ids, but the decoder passed {shape} to its layers in "
                f"{what} (expected (B, {width})); use positions='original'"
            )
        return pid

    def _reindex_prefill(self, call: hf.CallArgs, keep: torch.Tensor, layer: int, h: torch.Tensor) -> None:
        """Positions ``0..n-1`` over the kept tokens: each real kept token moves down by the prompt tokens dropped
        before it (``keep[j] - j``, as ``keep`` is ascending in original coordinates); padding keeps its own. RoPE
        cos/sin are recomputed by the decoder's rotary embedding at the new positions."""
        pid = self._reindex_positions(call.position_ids, self.state.prompt_len, "the prefill")
        orig = gather_seq(pid, keep, -1)  # (B, K)
        dropped = keep - torch.arange(keep.shape[1], device=keep.device)  # (B, K) tokens dropped before each one
        real = self.state.cur_pad.to(keep.device)  # (B, K) aligned with keep
        new = torch.where(real, orig - dropped, orig)  # (B, K)
        call.position_ids = new
        if isinstance(call.position_embeddings, tuple):
            call.position_embeddings = self.adapter.rope(h, new, layer)

    def _reindex_decode(self, call: hf.CallArgs, keep: torch.Tensor, layer: int) -> None:
        """A decode step under ``reindex``: the new token's position minus the prompt tokens this layer dropped."""
        pid = self._reindex_positions(call.position_ids, 1, "a decode step")
        new = pid - (self.state.prompt_len - keep.shape[1])  # (B|1, 1)
        call.position_ids = new
        if isinstance(call.position_embeddings, tuple):
            call.position_embeddings = self.adapter.rope(call.hidden_states, new, layer)

    def _kv_map(self, keep: torch.Tensor, kv: int) -> torch.Tensor:
        """Original key positions a pruned layer holds in decode: its kept prompt tokens, then the generated ones."""
        gen = torch.arange(self.state.prompt_len, kv, device=keep.device).expand(keep.shape[0], -1)
        return torch.cat([keep, gen], dim=1)  # (B, K + generated)

    def _gather_decode(self, call: hf.CallArgs, keep: torch.Tensor) -> None:
        mask = call.attention_mask
        if torch.is_tensor(mask) and mask.dim() in (2, 4):
            call.attention_mask = gather_seq(mask, self._kv_map(keep, mask.shape[-1]), -1, -mask.dim())

    def _mask_keys(self, call: hf.CallArgs, allowed: torch.Tensor, prefill: bool) -> None:
        """Mask mode (AIM's reference loop): hide pruned prompt tokens as keys only.

        Pruned tokens stay query rows of every later layer and, like every other row, do not see pruned keys, their
        own included (the reference masks a pruned token's column in every row). Only a row left with no visible
        key at all (e.g. a pruned token before any kept one, or padding) sees itself, so no row is empty.
        """
        h_len = self.state.prompt_len if prefill else 1
        kv = self.state.prompt_len if prefill else self.state.decode_kv
        b = allowed.shape[0]
        mask = call.attention_mask
        if not torch.is_tensor(mask) or mask.dim() != 4:
            qpos = torch.arange(kv - h_len, kv, device=allowed.device)
            mask = (torch.arange(kv, device=allowed.device)[None, :] <= qpos[:, None])[None, None]  # (1, 1, q, kv)
        gen = torch.ones(b, kv - allowed.shape[1], dtype=torch.bool, device=allowed.device)
        keys = torch.cat([allowed, gen], dim=1)[:, None, None, :]  # (B, 1, 1, kv)
        low = torch.finfo(mask.dtype).min if mask.dtype.is_floating_point else 0
        visible = (mask if mask.dtype == torch.bool else mask > low / 2) & keys  # (B, 1|H, q, kv)
        self_only = torch.zeros_like(visible)
        if prefill:
            eye = torch.eye(kv, dtype=torch.bool, device=allowed.device)[None, None]  # (1, 1, q, kv)
            self_only = eye & ~visible.any(dim=-1, keepdim=True)  # (B, 1|H, q, kv) rows with no visible key
        if mask.dtype == torch.bool:
            call.attention_mask = visible | self_only
        else:
            call.attention_mask = mask.masked_fill(~visible, low).masked_fill(self_only, 0.0)
