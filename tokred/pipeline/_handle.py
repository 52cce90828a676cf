"""``tokred.patch``: instrument a transformers multimodal model with a strategy, reversibly.

Everything is instance-level and undone exactly by ``PatchHandle.remove()``: forward (pre-)hooks on the base model,
the decoder, its layers and (for ToMe) the vision tower's layers; a tag attribute on each attention module; the text
config's attention implementation (switched to a tokred-registered wrapper of the same kernel only when a scorer needs
queries and keys); and an instance ``generate`` that performs the pre-LLM reduction before calling the stock one.
No class, weight or module structure changes, so ``state_dict`` keys stay the same.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from tokred._api import create_strategy
from tokred._components import Strategy
from tokred.adapters import hf
from tokred.errors import ConfigError, TokredError, UnsupportedModeError, UnsupportedModelError
from tokred.pipeline._attention import CAPTURE_ATTR, KV_ATTR, register_attention_functions, wrapped_name
from tokred.pipeline._checks import check_schedule_depth, planned_layers
from tokred.pipeline._llm import InLLMStage
from tokred.pipeline._prellm import PreLLMStage
from tokred.pipeline._state import ReductionStats, RunState

HANDLE_ATTR = "_tokred_handle"


def select_adapter(model: Any) -> Any:
    """Instantiate the adapter the plugin hooks pick for ``model``.

    Raises:
        UnsupportedModelError: If no adapter matches (the message names the supported families).
    """
    from tokred._plugins import get_plugin_manager, get_registries
    from tokred.adapters import SUPPORTED_FAMILIES

    registry = get_registries().adapters
    adapters = list(registry._items.values())  # registration order: family adapters before the generic one
    cls = get_plugin_manager().hook.tokred_model_adapter(model=model, adapters=adapters)
    if cls is None:
        raise UnsupportedModelError(
            f"no tokred adapter handles {type(model).__name__} ({_contract_gap(model)}); supported families: "
            f"{SUPPORTED_FAMILIES}. Registered adapters: {', '.join(registry.names())}"
        )
    return cls(model)


def _contract_gap(model: Any) -> str:
    """Which part of the generic contract a model lacks, in words."""
    from tokred.adapters.base import ModelAdapter

    return ModelAdapter.contract_gap(model)


class PatchHandle:
    """A model instrumented with a strategy; use as a context manager or call ``remove()``.

    Attributes:
        model: The patched model.
        strategy: The strategy applied.
        adapter: The model adapter in use.
    """

    def __init__(self, model: Any, strategy: Strategy, adapter: Any, attn_implementation: str | None) -> None:
        self.model = model
        self.strategy = strategy
        self.adapter = adapter
        self._state = RunState(strategy, adapter.num_layers)
        self._undo: list[Callable[[], None]] = []
        self._removed = False
        self._attn_request = attn_implementation
        merger = strategy.merger
        self._vision = None
        if merger is not None and merger.stage == "vision":
            from tokred.pipeline._vision import VisionStage

            self._vision = VisionStage(adapter, merger)
        pre_merger = merger if merger is not None and merger.stage == "pre_llm" else None
        counts = self._vision.original_counts if self._vision is not None else None
        self._prellm = PreLLMStage(adapter, pre_merger, self._state, counts)
        self._reduces_before = merger is not None
        self._kv = None
        if strategy.kv_compressor is not None:
            from tokred.pipeline._kv import KVStage

            self._kv = KVStage(adapter, self._state, strategy.kv_compressor)
        self._needs_features = self._reduces_before or bool(adapter.has_text_like_rows)

    # --------------------------------------------------------------------------------------- public

    @property
    def kv_tokens_per_layer(self) -> list[int] | None:
        """Prompt entries each layer's KV cache held after the last prefill's KV stage (``None`` without one)."""
        return None if self._kv is None else list(self._kv.tokens_per_layer)

    @property
    def images_as_clip(self) -> bool:
        """Whether the images of each prompt are the frames of one clip (default ``False``; settable per call).

        On the generic path a model without a video input receives a clip as a sequence of images, which tokred
        cannot tell from several images. Set this to ``True`` for such prompts and the strategy treats them as
        video: per-frame mergers use their video variant (``for_video``; AIM ``variant="auto"``: 25 % per frame) and
        in-LLM schedules theirs (AIM's video ``(l1, l2)``). Temporal mergers (EVS) take a sample's images as one
        clip either way; a prompt with a real video input ignores the flag.
        """
        return self._state.images_as_clip

    @images_as_clip.setter
    def images_as_clip(self, value: bool) -> None:
        self._state.images_as_clip = bool(value)

    @property
    def stats(self) -> ReductionStats:
        """Statistics of the last prefill (see [`ReductionStats`][tokred.ReductionStats])."""
        return self._state.stats

    def mark_prompt(self, visual: torch.Tensor, real: torch.Tensor | None = None) -> None:
        """Mark the visual (and real) tokens of the next prefill, for a caller that runs the decoder itself on
        ``inputs_embeds`` (training on packed sequences: the base-model hook that finds them in ``input_ids`` does
        not run then).

        Args:
            visual: Visual tokens of the sequence the decoder will receive, shape (B, N) bool.
            real: Real (non-padding) tokens, shape (B, N) bool; default: all.
        """
        st = self._state
        st.pending_visual, st.pending_pad = visual.bool(), None if real is None else real.bool()
        st.pending_visual_in = int(visual.sum())

    def remove(self) -> None:
        """Undo the patch exactly.

        Raises:
            TokredError: If the handle was already removed.
        """
        if self._removed:
            raise TokredError("this tokred patch was already removed; patch the model again to re-apply a strategy")
        while self._undo:
            self._undo.pop()()
        self._removed = True

    def __enter__(self) -> PatchHandle:
        if self._removed:
            raise TokredError("this tokred patch was removed; patch the model again (tokred.patch) to reuse a strategy")
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._removed:
            self.remove()

    def __repr__(self) -> str:
        status = "removed" if self._removed else "active"
        return f"PatchHandle({self.strategy!r}, adapter={self.adapter.name!r}, {type(self.model).__name__}, {status})"

    # --------------------------------------------------------------------------------------- install

    def _install(self) -> None:
        try:
            self._install_all()
        except BaseException:
            while self._undo:
                self._undo.pop()()
            raise

    def _install_all(self) -> None:
        model, adapter = self.model, self.adapter
        setattr(model, HANDLE_ATTR, self)
        self._undo.append(lambda: model.__dict__.pop(HANDLE_ATTR, None))
        h = adapter.base.register_forward_pre_hook(self._base_pre, with_kwargs=True)
        self._undo.append(h.remove)
        for handle in InLLMStage(adapter, self._state).install():  # also records the stats when nothing is pruned
            self._undo.append(handle.remove)
        if self._kv is not None:  # after the in-LLM stage: its hooks read the prefill state that stage begins
            for handle in self._kv.install():
                self._undo.append(handle.remove)
        if self.strategy.scheduler is not None or self._kv is not None:
            self._install_attention()
        if self._vision is not None:
            for undo in self._vision.install():
                self._undo.append(undo)
        self._install_generate()

    def _install_attention(self) -> None:
        scorer = self.strategy.scorer
        observed = self._kv.tag_attention() if self._kv is not None else []
        if (scorer is None or scorer.query_rows == "none") and not observed:
            return
        original = hf.text_attn_implementation(self.adapter.text_config)
        requested = self._attn_request or original
        if "flash" in str(requested):
            where = "CUDA with flash-attn" if torch.cuda.is_available() else "CPU (FlashAttention-2 needs CUDA)"
            raise UnsupportedModeError(
                f"attention implementation {requested!r} is not supported by tokred's scorers on {where}: they need "
                "post-RoPE queries and keys from an SDPA or eager call. Load the model with attn_implementation='sdpa'"
            )
        name = wrapped_name(str(requested))
        if name is None:
            raise UnsupportedModeError(
                f"attention implementation {requested!r} cannot be wrapped for scoring; use 'sdpa' or 'eager'"
            )
        register_attention_functions()
        for i, attn in self.adapter.attention_modules():
            attn.__dict__[CAPTURE_ATTR] = (self._state, i)
            self._undo.append(functools.partial(attn.__dict__.pop, CAPTURE_ATTR, None))
        for i, attn in observed:
            attn.__dict__[KV_ATTR] = (self._kv, i)
            self._undo.append(functools.partial(attn.__dict__.pop, KV_ATTR, None))
        hf.set_text_attn_implementation(self.model, name)
        self._undo.append(lambda: hf.set_text_attn_implementation(self.model, original))

    def _install_generate(self) -> None:
        model = self.model
        had = "generate" in model.__dict__
        previous = model.__dict__.get("generate")
        original = model.generate

        @functools.wraps(original)
        def generate(*args: Any, **kwargs: Any) -> Any:
            return self._generate(original, *args, **kwargs)

        model.generate = generate

        def undo() -> None:
            if had:
                model.generate = previous
            else:
                model.__dict__.pop("generate", None)

        self._undo.append(undo)

    # --------------------------------------------------------------------------------------- runtime

    def _reduces(self) -> bool:
        routes = self.strategy.router is not None
        return self._reduces_before or self.strategy.scheduler is not None or self._kv is not None or routes

    def _guard_generate(self, kwargs: dict[str, Any]) -> None:
        if not self._reduces():
            return
        modes = hf.generation_modes(self.model, kwargs)
        if modes.assisted:
            raise UnsupportedModeError("assisted/speculative decoding cannot be combined with tokred's token reduction")
        if modes.chunked_prefill:
            raise UnsupportedModeError("chunked prefill cannot be combined with tokred's token reduction")
        impl = modes.static_cache
        if impl is not None:
            raise UnsupportedModeError(
                f"cache_implementation={impl!r} cannot hold per-layer lengths; tokred needs the default DynamicCache"
            )

    def _generate(self, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._guard_generate(kwargs)
        args, kwargs = hf.generate_prompt_ids(args, kwargs)
        ids = hf.CallArgs((), kwargs).input_ids
        if not (self._reduces_before and ids is not None and self.adapter.has_pixels(kwargs)):
            return original(*args, **kwargs)
        new = self._prellm.transform(dict(kwargs))
        short = hf.CallArgs((), new).input_ids
        self._state.prepared_ids, self._state.prepared_visual = short, self._state.pending_visual
        self._state.prepared_visual_in = self._state.pending_visual_in
        self._state.prepared_provenance = self._state.pending_provenance
        try:
            out = original(*args, **new)
        finally:
            self._state.prepared_ids = self._state.prepared_visual = None
        return _restore_prompt(out, ids, short.shape[1])

    def _base_pre(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        kwargs = self._prepare_prefill(hf.bind_positional(module.forward, args, kwargs))
        return (), kwargs

    def _prepare_prefill(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Base-model inputs of a prefill: pre-LLM reduction and the visual mask for the in-LLM stage."""
        call = hf.CallArgs((), kwargs)
        if call.cache_length() > 0:
            if self._state.pruning and self._state.mode == "drop":  # some families build masks here, pre-decoder
                hf.pin_mask_sizes(call.cache)
            return kwargs
        ids = call.input_ids
        st = self._state
        if ids is None:
            if self._reduces() and call.inputs_embeds is not None:
                raise UnsupportedModeError(
                    "tokred finds visual tokens in input_ids; pass input_ids (not inputs_embeds) to a patched model"
                )
            return kwargs
        if st.prepared_ids is not None and st.prepared_ids.shape == ids.shape and torch.equal(st.prepared_ids, ids):
            st.pending_visual, st.pending_pad = st.prepared_visual, call.attention_mask
            st.pending_visual_in = st.prepared_visual_in
            st.pending_provenance = st.prepared_provenance
            return kwargs
        if self._needs_features and self.adapter.has_pixels(kwargs):
            if self._reduces_before:
                return self._prellm.transform(dict(kwargs))
            return self._analyse(dict(kwargs))
        self._pending_from_ids(ids, kwargs)
        return kwargs

    def _analyse(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """No pre-LLM reduction but the family has text-like placeholder rows: compute features once, mark them."""
        from tokred.pipeline._video import encode_videos

        call = hf.CallArgs((), kwargs)
        if call.has_pixels():
            out, enc = self._prellm.features(kwargs)
            for key in call.pixel_inputs():
                if key in enc:
                    kwargs.pop(key)
            call.set_image_outputs(out)
        video = encode_videos(self.adapter, kwargs, pop_all=False)
        if video is not None:
            call.set_video_outputs(video.out)
        self._pending_from_ids(call.input_ids, kwargs)
        return kwargs

    def _pending_from_ids(self, ids: torch.Tensor, kwargs: dict[str, Any]) -> None:
        visual = self.adapter.visual_mask(ids)  # (B, N)
        call = hf.CallArgs((), kwargs)
        out = call.image_outputs()
        if out is not None and hf.pooled(out) is not None:  # None: every feature is injected inside the LLM
            from tokred.pipeline._prellm import flatten_features

            feats, _ = flatten_features(hf.pooled(out))
            flags = [self.adapter.text_like_rows(f) for f in feats]
            if any(f is not None for f in flags):
                slots = self.adapter.placeholder_mask(ids)
                text_like = torch.cat(
                    [f if f is not None else torch.zeros(x.shape[0], dtype=torch.bool) for f, x in zip(flags, feats)]
                ).to(ids.device)
                if int(slots.sum()) == text_like.numel():
                    visual = visual.clone()
                    visual[slots] = ~text_like
        if call.video_outputs() is not None:
            from tokred.pipeline._video import video_text_like

            structural = video_text_like(self.adapter, call.video_outputs())
            frames = self.adapter.video_placeholder_mask(ids)
            if structural is not None and int(frames.sum()) == structural.numel():
                visual = visual.clone()
                visual[frames] = ~structural.to(ids.device)
        self._state.pending_visual = visual
        st = self._state
        st.pending_video = bool(self.adapter.video_placeholder_mask(ids).any()) or st.images_as_clip
        mask = call.attention_mask
        self._state.pending_pad = mask if torch.is_tensor(mask) and mask.dim() == 2 else None
        self._state.pending_visual_in = int(visual.sum())


def _restore_prompt(out: Any, ids: torch.Tensor, short_len: int) -> Any:
    """Make ``generate()`` return the caller's original prompt followed by the new tokens."""
    seqs = hf.generated_sequences(out)
    if seqs is None:
        return out
    prompt = ids.repeat_interleave(seqs.shape[0] // ids.shape[0], dim=0) if seqs.shape[0] != ids.shape[0] else ids
    return hf.with_sequences(out, torch.cat([prompt.to(seqs.device), seqs[:, short_len:]], dim=1))


def _check_model_argument(model: Any) -> None:
    """Refuse what is not a loaded model (``None``, a hub id string, a plain module) before touching it."""
    if model is None:
        raise UnsupportedModelError("patch() got None instead of a model; load one first, then patch(model, ...)")
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        raise UnsupportedModelError(
            f"patch() got the name {str(model)!r}, not a model: load the model first (from_pretrained), then "
            "patch(model, ...)"
        )
    if not isinstance(model, torch.nn.Module) or getattr(model, "config", None) is None:
        raise UnsupportedModelError(
            f"patch() needs a transformers multimodal model (...ForConditionalGeneration), got {type(model).__name__}"
        )


def _check_position_policy(strategy: Strategy) -> None:
    """Refuse an unknown position policy, and ``reindex`` where tokens are masked rather than dropped."""
    policy = strategy.position_policy
    if policy not in ("original", "reindex"):
        raise ConfigError(f"unknown position policy {policy!r}; use 'original' or 'reindex'")
    if policy == "reindex" and strategy.prune_mode != "drop":
        raise ConfigError("positions='reindex' renumbers the tokens left after a drop; it needs mode='drop'")


def _check_routing(strategy: Strategy, adapter: Any, model: Any) -> None:
    """Refuse what token routing cannot do correctly (before anything is installed)."""
    from tokred.pipeline._state import check_route_layers

    router = strategy.router
    if router is None:
        return
    name = strategy.name
    if strategy.scheduler is not None or strategy.kv_compressor is not None:
        raise ConfigError(
            f"strategy '{name}' combines a router with in-LLM dropping or KV compression, which tokred does not "
            "support: routed layers hold their own token sets. Use routing alone, or with a pre-LLM merger"
        )
    if strategy.position_policy != "original" or strategy.prune_mode != "drop":
        raise ConfigError(
            f"strategy '{name}': routed tokens keep their original positions and are really skipped; "
            "positions='reindex' and mode='mask' are not supported with routing"
        )
    layers = check_route_layers(router, adapter.num_layers)
    if adapter.injects_features():
        raise UnsupportedModelError(
            f"{type(model).__name__} adds DeepStack visual features inside the LLM, which routed layers would "
            f"misalign; strategy '{name}' cannot route it. Use a pre-LLM strategy for this model"
        )
    decoder_layers = adapter.decoder_layers()
    missing = [i for i in layers if hf.layer_mlp_output(decoder_layers[i]) is None]
    if getattr(router, "weighted", False) and missing:
        raise UnsupportedModelError(
            f"router '{router.name}' scales the MLP output, but decoder layers {missing} of {type(model).__name__} "
            "have no MLP module tokred recognises"
        )


def patch(
    model: Any,
    strategy: str | Strategy = "none",
    *,
    attn_implementation: str | None = None,
    images_as_clip: bool = False,
    **options: Any,
) -> PatchHandle:
    """Instrument ``model`` with a token-reduction strategy.

    Args:
        model: A transformers multimodal model (``...ForConditionalGeneration``), e.g. from
            [`tokred.testing.models.tiny_model`][tokred.testing.models.tiny_model].
        strategy: A registered strategy name or a ready [`Strategy`][tokred.Strategy].
        attn_implementation: Attention kernel the scorers wrap (``"sdpa"`` or ``"eager"``); default: the model's.
            FlashAttention-2 raises ``UnsupportedModeError``.
        images_as_clip: The images of each prompt are the frames of one clip (a model without a video input fed a
            clip as images): video variants apply (see [`PatchHandle.images_as_clip`][tokred.PatchHandle]).
        **options: Strategy options, validated by its ``Config`` (only with a strategy name).

    Returns:
        A [`PatchHandle`][tokred.PatchHandle]: a context manager with ``remove()``, ``stats``, ``strategy`` and
        ``adapter``.

    Raises:
        TokredError: If the model is already patched.
        UnsupportedModelError: If no adapter handles the model, or the model has a feature the strategy's stages
            cannot handle correctly (the model is left untouched).
        UnsupportedModeError: For an attention implementation that cannot be wrapped.

    Example:
        >>> import tokred
        >>> from tokred.testing.models import tiny_model
        >>> model, make_inputs = tiny_model("llava")
        >>> with tokred.patch(model, "fastv", keep_ratio=0.5) as handle:
        ...     _ = model(**make_inputs())
        >>> handle.stats.tokens_per_layer
        [75, 75, 43, 43]
    """
    _check_model_argument(model)
    strat = create_strategy(strategy, **options)
    existing = model.__dict__.get(HANDLE_ATTR)
    if existing is not None:
        raise TokredError(f"this model is already patched ({existing!r}); call remove() on that handle first")
    if strat.prune_mode not in ("drop", "mask"):
        raise ConfigError(f"unknown prune mode {strat.prune_mode!r}; use 'drop' or 'mask'")
    _check_position_policy(strat)
    adapter = select_adapter(model)
    strat.prepare(model)
    if strat.position_policy == "reindex" and strat.scheduler is not None and adapter.uses_mrope():
        raise UnsupportedModelError(
            f"strategy '{strat.name}' asks for positions='reindex', but {type(model).__name__} uses multi-axis M-RoPE "
            "positions, which tokred does not renumber; use positions='original'"
        )
    check_schedule_depth(strat, adapter.num_layers)
    _check_routing(strat, adapter, model)
    merger = strat.merger
    in_llm = strat.scheduler is not None or strat.router is not None
    plan = planned_layers(strat, adapter.num_layers)
    reasons = (
        adapter.refusals(pre_llm=merger is not None, in_llm=in_llm, layers=plan, mode=strat.prune_mode)
        if (merger is not None or in_llm)
        else []
    )
    if reasons:
        raise UnsupportedModelError(
            f"tokred cannot apply strategy '{strat.name}' to {type(model).__name__} (adapter '{adapter.name}'): "
            + "; ".join(reasons)
        )
    handle = PatchHandle(model, strat, adapter, attn_implementation)
    handle.images_as_clip = images_as_clip
    handle._install()
    return handle
