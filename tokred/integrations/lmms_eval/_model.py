"""The lmms-eval model classes of the ``tokred`` backend (imported by lmms-eval through the entry point).

``TokredChat`` (lmms-eval's default for the id ``tokred``) reads each request's chat messages; ``TokredSimple``
(``--force_simple``) reads the context string and the task's visuals, and is the one lmms-eval uses for
``loglikelihood``/``multiple_choice`` tasks. Both load the model once, patch it once with the strategy (the
unreduced ``none`` is left unpatched, bitwise the stock model), shard requests by accelerate's rank and world size
through lmms-eval's evaluator, run left-padded batches, and attach per-request reduction statistics to the
per-sample logs (``token_counts.tokred``). Their means over all ranks go to the results' ``throughput`` section as
``avg_tokred_*``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics

from tokred.errors import ConfigError, TokredError
from tokred.integrations.lmms_eval import REFERENCE, fail_loudly, split_model_args
from tokred.integrations.lmms_eval import _core as core

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TokredTokenCounts(TokenCounts):
    """lmms-eval's token counts plus tokred's reduction statistics, logged per sample under ``"tokred"``."""

    tokred: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The counts lmms-eval logs, with ``"tokred"`` added."""
        out: dict[str, Any] = dict(super().to_dict())
        out["tokred"] = self.tokred
        return out


class _TokredBase(lmms):
    """Shared implementation of the two classes (see the module docstring)."""

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        try:
            loader, self.strategy = split_model_args(model_args)
            self._setup(loader)
        except TokredError as err:
            raise fail_loudly(err) from None

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict[str, Any] | None = None) -> Any:
        """lmms-eval's constructor from ``--model_args``; a key given there wins over the same command-line flag
        (``batch_size=4`` in ``--model_args`` beats the ``--batch_size`` default of 1 the CLI always passes)."""
        from lmms_eval import utils

        args = utils.simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
        return cls(**args, **extra)

    # ------------------------------------------------------------------------------------------- setup

    def _setup(self, loader: dict[str, Any]) -> None:
        from accelerate import Accelerator

        self.batch_size_per_gpu = _positive_int(loader.get("batch_size", 1), "batch_size")
        self.max_new_tokens = _positive_int(loader.get("max_new_tokens", 32), "max_new_tokens")
        convention = str(loader.get("convention", "llm-viewer"))
        if convention not in ("llm-viewer", "fastv"):
            raise ConfigError(f"convention={convention!r}: use llm-viewer or fastv")
        self.convention: Literal["llm-viewer", "fastv"] = "fastv" if convention == "fastv" else "llm-viewer"
        self.system_prompt = self._resolve_system_prompt(str(loader.get("system_prompt") or ""))
        self.pretrained = str(loader.get("pretrained", REFERENCE))
        self.accelerator = Accelerator()
        self._rank = self.accelerator.process_index
        self._world_size = self.accelerator.num_processes
        self._device = torch.device(loader.get("device") or _default_device(self.accelerator))
        dtype = _dtype(loader.get("dtype", "float32"))
        attn = str(loader.get("attn_implementation", "sdpa"))
        self._model, self.processor = _load(self.pretrained, self._device, dtype, attn)
        from tokred.eval.runner import image_token_id_of

        self.image_token_id = image_token_id_of(self._model)
        self.text_config = getattr(self._model.config, "text_config", None) or self._model.config
        self.handle = None
        if self.strategy.name != "none":
            import tokred

            self.handle = tokred.patch(self._model, self.strategy)

    @property
    def model(self) -> Any:
        """The (patched) transformers model."""
        return self._model

    @property
    def batch_size(self) -> int:
        """Requests per forward/generate call."""
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        """The model's device."""
        return self._device

    # ----------------------------------------------------------------------------------------- requests

    def _doc(self, task: str, split: str, doc_id: int) -> Any:
        return self.task_dict[task][split][doc_id]

    def _conversation(self, request: Instance) -> tuple[list[dict[str, Any]], list[Any]]:
        """(messages with bare image slots, images) of a generation request."""
        raise NotImplementedError

    def generate_until(self, requests: list[Instance]) -> list[Any]:
        """Greedy (or the task's sampling) generation in left-padded batches grouped by generation settings."""
        order = sorted(range(len(requests)), key=lambda i: (_gen_key(requests[i]), i))
        results: list[Any] = [None] * len(requests)
        rows: list[dict[str, Any]] = []
        started, generated = time.perf_counter(), 0
        for chunk in _chunks(order, self.batch_size, key=lambda i: _gen_key(requests[i])):
            convs = [self._conversation(requests[i]) for i in chunk]
            settings = core.generation_settings(_gen_kwargs(requests[chunk[0]]), self.max_new_tokens)
            prompts = [core.render(self.processor, core.with_system(m, self.system_prompt)) for m, _ in convs]
            for group, batch in self._batches(chunk, prompts, [im for _, im in convs]):
                generated += self._generate_batch(requests, group, batch, settings, results, rows)
        self._log(rows, time.perf_counter() - started, generated)
        return results

    def _generate_batch(
        self,
        requests: list[Instance],
        group: list[int],
        batch: core.Batch,
        settings: tuple[dict[str, Any], list[str]],
        results: list[Any],
        rows: list[dict[str, Any]],
    ) -> int:
        """Generate for one batch, fill ``results`` and the statistics ``rows``; returns the tokens generated."""
        gen_kwargs, stops = settings
        pad = core._pad_id(self.processor)
        with torch.inference_mode():
            out = self._model.generate(**batch.inputs, **gen_kwargs, pad_token_id=pad)
        new = out[:, batch.inputs["input_ids"].shape[1] :]  # (B, T)
        texts = self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)
        stats = self._stats(batch)
        generated = 0
        for j, i in enumerate(group):
            n_out = int((new[j] != pad).sum())
            generated += n_out
            counts = TokredTokenCounts(input_tokens=_row_len(batch, j), output_tokens=n_out, tokred=stats[j])
            results[i] = GenerationResult(text=core.truncate_at_stop(texts[j], stops), token_counts=counts)
            rows.extend([] if _is_padding(requests[i]) else [stats[j]])
        return generated

    def loglikelihood(self, requests: list[Instance]) -> list[Any]:
        """Mean negative log-likelihood of each continuation (lmms-eval's loss convention) and whether greedy
        decoding gives it, from one forward pass over context + continuation in left-padded batches.

        The strategy's text-conditioned scorers see the continuation as part of the prompt, as in any single
        forward pass; the result is wrapped in a ``GenerationResult`` because lmms-eval 0.7.3's evaluator turns a
        bare ``(float, bool)`` tuple into its string."""
        results: list[Any] = [None] * len(requests)
        rows: list[dict[str, Any]] = []
        started = time.perf_counter()
        for chunk in _chunks(list(range(len(requests))), self.batch_size, key=lambda i: 0):
            parts = [self._scored_prompt(requests[i]) for i in chunk]
            conts = {i: c for i, (_, _, c) in zip(chunk, parts)}
            for group, batch in self._batches(chunk, [p for p, _, _ in parts], [im for _, im, _ in parts], conts):
                with torch.inference_mode():
                    logits = self._model(**batch.inputs).logits  # (B, L, V)
                scores = core.continuation_scores(logits, [conts[i] for i in group])
                stats = self._stats(batch)
                for j, i in enumerate(group):
                    counts = TokredTokenCounts(input_tokens=_row_len(batch, j), tokred=stats[j])
                    results[i] = GenerationResult(text=scores[j], token_counts=counts)
                    rows.extend([] if _is_padding(requests[i]) else [stats[j]])
        self._log(rows, time.perf_counter() - started, 0)
        return results

    def _scored_prompt(self, request: Instance) -> tuple[str, list[Any], torch.Tensor]:
        """(rendered prompt, images, continuation ids (C,)) of a loglikelihood request."""
        context, target, doc_to_visual, doc_id, task, split = request.args
        doc = self._doc(task, split, doc_id)
        continuation = target if isinstance(target, str) else target(doc)
        visuals = core.check_images(doc_to_visual(doc) or []) if doc_to_visual is not None else []
        messages = core.with_system(core.user_turn(context, len(visuals)), self.system_prompt)
        return core.render(self.processor, messages), visuals, self._continuation_ids(str(continuation))

    def _batches(
        self,
        chunk: list[int],
        prompts: list[str],
        images: list[list[Any]],
        conts: dict[int, torch.Tensor] | None = None,
    ) -> list[tuple[list[int], core.Batch]]:
        """The chunk's batches as (request indices, batch): one batch, or, when the patched model would get rows with
        different visual token counts (which in-LLM pruning refuses), one batch per count, in order of first row."""

        def encode(rows: list[int]) -> core.Batch:
            suffix = None if conts is None else [conts[chunk[j]] for j in rows]
            picked = ([prompts[j] for j in rows], [images[j] for j in rows])
            return core.encode(self.processor, *picked, self.image_token_id, self.device, suffix_ids=suffix)

        everything = list(range(len(chunk)))
        batch = encode(everything)
        if self.handle is None or len(set(batch.visual_tokens)) <= 1:
            return [(chunk, batch)]
        groups: dict[int, list[int]] = {}
        for j, count in enumerate(batch.visual_tokens):
            groups.setdefault(count, []).append(j)
        return [([chunk[j] for j in rows], encode(rows)) for rows in groups.values()]

    def generate_until_multi_round(self, requests: list[Instance]) -> list[Any]:
        """Not supported (one clear error)."""
        raise ConfigError("tokred's lmms-eval backend does not run multi-round generation tasks yet")

    # ------------------------------------------------------------------------------------------ helpers

    def _continuation_ids(self, continuation: str) -> torch.Tensor:
        ids = self.processor.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"the continuation {continuation!r} tokenises to nothing; loglikelihood needs text")
        return torch.tensor(ids, dtype=torch.long)  # (C,)

    def _stats(self, batch: core.Batch) -> list[dict[str, Any]]:
        tokens = None if self.handle is None else list(self.handle.stats.tokens_per_layer)
        return core.sample_stats(self.strategy.name, batch, tokens, self.text_config, self.convention)

    def _log(self, rows: list[dict[str, Any]], elapsed: float, generated: int) -> None:
        """Means of the reduction statistics over every rank's requests (padding requests excluded), recorded in
        lmms-eval's throughput metrics, which rank 0 writes to the results as ``avg_tokred_<name>``."""
        if self.world_size > 1:
            gathered = self.accelerator.gather_for_metrics([rows], use_gather_object=True)
            rows = [r for part in gathered for r in part]
        means = core.mean_stats(rows)
        if not means:
            return
        extra = {f"tokred_{k}": v for k, v in means.items()}
        extra["tokred_requests"] = len(rows)
        log_metrics(elapsed, generated, generated / elapsed if elapsed > 0 else 0.0, additional_metrics=extra)


class TokredSimple(_TokredBase):
    """``--model tokred --force_simple``: context string plus the task's ``doc_to_visual`` images."""

    is_simple = True

    def _conversation(self, request: Instance) -> tuple[list[dict[str, Any]], list[Any]]:
        context, _gen, doc_to_visual, doc_id, task, split = request.args
        visuals = core.check_images(doc_to_visual(self._doc(task, split, doc_id)) or []) if doc_to_visual else []
        return core.user_turn(context, len(visuals)), visuals


class TokredChat(_TokredBase):
    """``--model tokred``: the task's chat messages (``doc_to_messages``, or lmms-eval's visuals-then-text turn)."""

    is_simple = False

    def _conversation(self, request: Instance) -> tuple[list[dict[str, Any]], list[Any]]:
        from lmms_eval.protocol import ChatMessages

        _ctx, doc_to_messages, _gen, doc_id, task, split = request.args
        chat = ChatMessages(messages=doc_to_messages(self._doc(task, split, doc_id)))
        images, videos, audios = chat.extract_media()
        if videos or audios:
            core.check_images([*videos, *audios])
        messages = []
        for message in chat.to_hf_messages():
            parts = [
                {"type": p["type"], "text": p["text"]} if p["type"] == "text" else {"type": p["type"]}
                for p in message["content"]
            ]
            messages.append({"role": message["role"], "content": parts})
        return messages, core.check_images(images)


# ------------------------------------------------------------------------------------------------- helpers


def _slot(part: dict[str, Any]) -> dict[str, Any]:
    """A message part for the chat template: text as is, a medium as a bare slot (the pixels go separately)."""
    return {"type": "text", "text": part["text"]} if part["type"] == "text" else {"type": part["type"]}


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r}: give a positive integer")
    return value


def _dtype(value: Any) -> Any:
    if value == "auto":
        return "auto"
    if value not in _DTYPES:
        raise ConfigError(f"dtype={value!r}: use one of {', '.join([*_DTYPES, 'auto'])}")
    return _DTYPES[value]


def _default_device(accelerator: Any) -> str:
    if accelerator.num_processes > 1:
        return str(accelerator.device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load(pretrained: str, device: torch.device, dtype: Any, attn: str) -> tuple[Any, Any]:
    """(model, processor) of ``pretrained``: the built-in reference model, a local folder or a hub id.

    Raises:
        ConfigError: For a folder or id that is not a loadable image-text-to-text model with a processor.
    """
    if attn not in ("sdpa", "eager"):
        raise ConfigError(f"attn_implementation={attn!r}: tokred's scorers need sdpa or eager")
    if pretrained == REFERENCE:
        from tokred.eval.reference import load_reference_model

        return load_reference_model(device=device, dtype=torch.float32 if dtype == "auto" else dtype)
    from tokred.compare import check_model

    if pretrained in ("reference", "tiny"):
        raise ConfigError(f"pretrained={pretrained}: the built-in reference model is pretrained={REFERENCE}")
    try:
        check_model(pretrained)
    except ConfigError as err:
        raise ConfigError(str(err).replace("--model", "pretrained=")) from None
    from transformers import AutoModelForImageTextToText, AutoProcessor

    loader: Any = AutoModelForImageTextToText
    try:
        model = loader.from_pretrained(pretrained, dtype=dtype, attn_implementation=attn)
        processor = AutoProcessor.from_pretrained(pretrained)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"pretrained={pretrained!r} cannot be loaded: {first}") from None
    return model.to(device).eval(), processor


def _gen_kwargs(request: Instance) -> dict[str, Any]:
    args = request.args
    return dict(args[1] if isinstance(args[1], dict) else args[2] or {})


def _gen_key(request: Instance) -> str:
    return json.dumps(_gen_kwargs(request), sort_keys=True, default=str)


def _chunks(order: list[int], size: int, key: Any) -> list[list[int]]:
    """Consecutive runs of ``order`` of at most ``size`` items sharing ``key``."""
    out: list[list[int]] = []
    for i in order:
        if out and len(out[-1]) < size and key(out[-1][0]) == key(i):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _row_len(batch: core.Batch, row: int) -> int:
    return batch.text_tokens[row] + batch.visual_tokens[row]


def _is_padding(request: Instance) -> bool:
    return bool((request.metadata or {}).get("__padding_only__"))
