"""The family sweep: every image-text-to-text model class of the installed transformers, built tiny, run through the
pipeline's invariants, classified WORKS / CLEAR ERROR / BROKEN (or NOT BUILT when no tiny model can be made offline).

Checks per family (one image per sample, batch 2 with left padding):

* ``none``: logits and greedy ``generate()`` bitwise identical to the unpatched model; ``remove()`` restores it;
* ``fastv`` (in-LLM pruning at layer 2): some layer sees fewer tokens, no text position is dropped, and cached
  ``generate()`` logits equal the no-cache reference on the kept set (`tokred.testing.reference`, <= 1e-4); a hybrid
  decoder's tiny model has its attention layers first and its linear-attention / convolution layers last
  (`tokred.testing.generic`), so the scoring layer is an attention layer and a state layer runs on the kept sequence;
* ``pooling`` (before the LLM; ``random`` with ``layer=0`` when the family's features form no grid): the decoder sees
  fewer tokens and cached ``generate()`` logits equal a no-cache forward of the patched model on prompt + generated.

A family WORKS when every check passes, is a CLEAR ERROR when a strategy is refused at patch time with
``UnsupportedModelError`` (the reason is kept) and nothing else fails, and is BROKEN when anything raises mid-run or a
check fails. ``scripts/sweep_families.py`` runs it and writes the docs' supported-models page.
"""

from __future__ import annotations

import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = ["FamilyResult", "build_family", "check_family"]

GEN = dict(max_new_tokens=3, do_sample=False)


@dataclass
class FamilyResult:
    """The sweep's verdict on one family.

    Attributes:
        family: The model type.
        model_class: The transformers class built.
        status: ``WORKS``, ``CLEAR ERROR``, ``BROKEN`` or ``NOT BUILT``.
        builder: ``tiny_model`` (hand-written) or the generic recipe used.
        checks: Per strategy: ``ok``, ``refused: <reason>`` or ``broken: <reason>``.
        detail: What made it fail or be refused (empty when it works).
    """

    family: str
    model_class: str
    status: str
    builder: str = ""
    checks: dict[str, str] = field(default_factory=dict)
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def build_family(family: str) -> tuple[Any, Any, str]:
    """``(model, make_inputs(batch=...), builder)``: the hand-written tiny model where there is one, else generic."""
    from tokred.testing.generic import generic_tiny_model
    from tokred.testing.models import list_tiny_models, tiny_model

    if family in list_tiny_models():
        model, make = tiny_model(family)
        return model, make, "tiny_model"
    model, make, recipe = generic_tiny_model(family)
    return model, make, f"generic ({recipe})"


def _generate(model: Any, inputs: dict[str, torch.Tensor]) -> Any:
    with torch.no_grad():
        return model.generate(**inputs, **GEN, output_logits=True, return_dict_in_generate=True)


def _check_none(model: Any, inputs: dict[str, torch.Tensor]) -> None:
    import tokred

    with torch.no_grad():
        ref = model(**inputs).logits
    ref_gen = _generate(model, inputs).sequences
    with tokred.patch(model, "none"), torch.no_grad():
        out = model(**inputs).logits
        gen = _generate(model, inputs).sequences
    with torch.no_grad():
        after = model(**inputs).logits
    if not (torch.equal(out, ref) and torch.equal(gen, ref_gen)):
        raise AssertionError("'none' is not bitwise identical to the unpatched model")
    if not torch.equal(after, ref):
        raise AssertionError("remove() did not restore the model bitwise")


def _check_fastv(model: Any, inputs: dict[str, torch.Tensor]) -> None:
    import tokred
    from tokred.testing.reference import extend_prompt, reference_last_logits

    n = inputs["input_ids"].shape[1]
    with tokred.patch(model, "fastv", layer=2, keep_ratio=0.5) as handle:
        out = _generate(model, inputs)
        stats = handle.stats
        visual = handle.adapter.visual_mask(inputs["input_ids"])
    if min(stats.tokens_per_layer) >= n:
        raise AssertionError(f"fastv pruned nothing: tokens per layer {stats.tokens_per_layer}")
    for keep in stats.kept_indices.values():
        kept = torch.zeros_like(visual).scatter(1, keep, True)
        if bool((~visual & ~kept).any()):
            raise AssertionError("fastv dropped a text position")
    for step, logits in enumerate(out.logits):
        full = extend_prompt(model, inputs, out.sequences[:, n : n + step])
        ref = reference_last_logits(model, full, stats.kept_indices, n)
        err = float((logits.float() - ref).abs().max())
        if err > 1e-4:
            raise AssertionError(
                f"fastv: cached generate differs from the no-cache reference by {err:.2e} at step {step}"
            )


def _check_prellm(model: Any, inputs: dict[str, torch.Tensor]) -> str:
    """Pooling, or ``random layer=0`` when pooling finds no grid; returns the strategy used."""
    import tokred
    from tokred.errors import TokredError
    from tokred.testing.reference import extend_prompt

    n = inputs["input_ids"].shape[1]
    tries: list[tuple[str, dict[str, Any]]] = [("pooling", {}), ("random", dict(layer=0, keep_ratio=0.5, seed=1))]
    for name, opts in tries:
        try:
            with tokred.patch(model, name, **opts):
                out = _generate(model, inputs)
                for step, logits in enumerate(out.logits):
                    full = extend_prompt(model, inputs, out.sequences[:, n : n + step])
                    with torch.no_grad():
                        ref = model(**full, use_cache=False).logits[:, -1]
                    err = float((logits.float() - ref.float()).abs().max())
                    if err > 1e-4:
                        raise AssertionError(f"{name}: cached generate differs from no-cache by {err:.2e}")
                with torch.no_grad():
                    model(**inputs)
        except TokredError as exc:
            if name == "pooling" and "grid" in str(exc):
                continue  # no grid: fall back to a selection
            raise
        return name
    raise AssertionError("no pre-LLM strategy ran")


def _refused_or_not_built(family: str, model_class: str, exc: Any) -> FamilyResult:
    """A family with no tiny inputs: CLEAR ERROR when tokred refuses the built model at patch time anyway."""
    import tokred
    from tokred.errors import UnsupportedModelError

    model = getattr(exc, "model", None)
    if model is not None:
        model_class = type(model).__name__
        try:
            tokred.patch(model, "fastv").remove()
        except UnsupportedModelError as refusal:
            checks = {k: "refused at patch time" for k in ("none", "fastv", "pre-llm")}
            return FamilyResult(family, model_class, "CLEAR ERROR", "generic (model only)", checks, str(refusal))
        except Exception:  # noqa: BLE001 - not refused: then it is simply untested
            pass
    return FamilyResult(family, model_class, "NOT BUILT", detail=str(exc))


def check_family(family: str, model_class: str = "") -> FamilyResult:
    """Build ``family`` tiny and run the sweep's checks on it."""
    from tokred.errors import UnsupportedModelError
    from tokred.testing.generic import NotBuildable

    try:
        model, make, builder = build_family(family)
        inputs = make(batch=2)
    except NotBuildable as exc:
        return _refused_or_not_built(family, model_class, exc)
    model_class = type(model).__name__
    result = FamilyResult(family, model_class, "WORKS", builder)
    for name, check in (("none", _check_none), ("fastv", _check_fastv), ("pre-llm", _check_prellm)):
        try:
            used = check(model, inputs)
            result.checks[name] = "ok" if used is None else f"ok ({used})"
        except UnsupportedModelError as exc:
            result.checks[name] = f"refused: {exc}"
        except Exception as exc:  # noqa: BLE001 - the verdict records what broke
            where = traceback.extract_tb(exc.__traceback__)[-1]
            result.checks[name] = f"broken: {type(exc).__name__}: {str(exc).splitlines()[0][:200]} ({where.name})"
    broken = [v for v in result.checks.values() if v.startswith("broken")]
    refused = [v for v in result.checks.values() if v.startswith("refused")]
    if broken:
        result.status, result.detail = "BROKEN", broken[0]
    elif refused:
        result.status, result.detail = "CLEAR ERROR", refused[0]
    return result
