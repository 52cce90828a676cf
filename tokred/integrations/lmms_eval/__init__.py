"""tokred as an lmms-eval model backend: any tokred strategy on any lmms-eval task.

Installed with the ``tokred[lmms]`` extra plus ``pip install --no-deps lmms-eval==0.7.3`` (see the how-to page
"Evaluate with lmms-eval"), the backend is found by lmms-eval through the ``lmms_eval.models`` entry point, which
points at ``manifest``::

    lmms-eval --model tokred \\
        --model_args pretrained=tokred:reference,strategy=fastv,keep_ratio=0.25,batch_size=4 \\
        --tasks tokred_shapes --include_path runs/task --log_samples --output_path runs/fastv

``pretrained`` is a local folder, a hub id or ``tokred:reference`` (the built-in reference model); ``strategy`` is
any registered tokred strategy; every other argument that is not a loader argument (:data:`LOADER_ARGS`) is an
option of that strategy, validated by tokred before any model is loaded. This module imports nothing from
lmms-eval; the model classes live in ``tokred.integrations.lmms_eval._model``.
"""

from __future__ import annotations

import difflib
import sys
from typing import Any

from tokred.errors import ConfigError

__all__ = ["LOADER_ARGS", "MODEL_ID", "manifest", "split_model_args"]

MODEL_ID = "tokred"
REFERENCE = "tokred:reference"

#: Model arguments the backend itself takes; every other ``--model_args`` key is a strategy option.
LOADER_ARGS: dict[str, str] = {
    "pretrained": "model folder, hub id or tokred:reference (default)",
    "strategy": "registered tokred strategy (default: none, the unreduced model)",
    "batch_size": "requests per forward/generate call, left-padded (default 1)",
    "device": "torch device (default: the accelerate process's device, else cuda when available, else cpu)",
    "dtype": "float32 (default), bfloat16, float16 or auto",
    "attn_implementation": "sdpa (default) or eager",
    "convention": "FLOPs convention of the relative prefill FLOPs: llm-viewer (default) or fastv",
    "max_new_tokens": "generation length when the task does not set one (default 32)",
    "system_prompt": "system message put before every conversation (a string or a file)",
    "max_batch_size": "accepted for lmms-eval's --max_batch_size and ignored",
}


def manifest() -> Any:
    """The ``ModelManifest`` lmms-eval's entry-point loader reads: model id ``tokred``, a chat class (the default,
    used for ``generate_until`` tasks) and a simple class (``--force_simple``, needed for ``loglikelihood`` and
    ``multiple_choice`` tasks, which lmms-eval 0.7 builds only for simple models)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    base = "tokred.integrations.lmms_eval._model"
    return ModelManifest(
        model_id=MODEL_ID, simple_class_path=f"{base}.TokredSimple", chat_class_path=f"{base}.TokredChat"
    )


def split_model_args(args: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Split lmms-eval's model arguments into loader arguments and a validated tokred strategy.

    Args:
        args: The parsed ``--model_args`` (values already converted by lmms-eval: ``0.25`` is a float).

    Returns:
        ``(loader_args, strategy)``: the keys of :data:`LOADER_ARGS` that were given, and the strategy built by
        ``tokred.create_strategy`` with every other key as an option.

    Raises:
        ConfigError: For an unknown strategy (with "did you mean"), an unknown option (the close strategy options
            and loader arguments are suggested), or an out-of-range value.
    """
    import tokred

    loader = {k: v for k, v in args.items() if k in LOADER_ARGS}
    options = {k: v for k, v in args.items() if k not in LOADER_ARGS}
    name = loader.get("strategy", "none")
    if not isinstance(name, str):
        raise ConfigError(f"strategy={name!r}: give a strategy name, one of {', '.join(tokred.list_strategies())}")
    cls = tokred.get_strategy_class(name)
    fields = list(cls.Config.model_fields)
    for key in options:
        if key not in fields:
            raise ConfigError(_unknown_option(key, name, fields))
    strategy = tokred.create_strategy(name, **options)
    _probe(strategy)
    return loader, strategy


def _unknown_option(key: str, strategy: str, fields: list[str]) -> str:
    close = difflib.get_close_matches(key, [*fields, *LOADER_ARGS], n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    options = ", ".join(fields) or "none"
    return (
        f"--model_args {key}=...: not an option of strategy '{strategy}' nor a tokred loader argument{hint} "
        f"(options of {strategy}: {options}; loader arguments: {', '.join(LOADER_ARGS)})"
    )


def _probe(strategy: Any) -> None:
    """Fail now for a schedule that is inconsistent on any model (e.g. ``l1 >= l2``), before loading a model: the
    schedule is asked for a deep stack; whether it fits the real depth is checked when the model is patched."""
    if strategy.scheduler is None:
        return
    try:
        strategy.scheduler.budgets(1024, 576)
    except ConfigError as err:
        raise ConfigError(f"strategy '{strategy.name}': {err}") from None


def fail_loudly(err: Exception) -> Any:
    """The exception to raise for a bad model argument: ``err`` itself under the Python API (``simple_evaluate``),
    but ``SystemExit(2)`` with the message on stderr under the ``lmms-eval`` command, whose ``cli_evaluate``
    catches every ``Exception`` and exits 0 unless ``--verbosity DEBUG``."""
    if "lmms_eval.__main__" not in sys.modules:
        return err
    sys.stderr.write(f"tokred: error: {err}\n")
    return SystemExit(2)
