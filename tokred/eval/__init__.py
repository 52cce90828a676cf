"""Evaluation: the ``shapes`` benchmark, dataset loaders, scoring and the embedded reference model.

Names are imported lazily so that ``import tokred.eval`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Dataset": "tokred.eval.datasets",
    "DatasetError": "tokred.eval.datasets",
    "JsonlDataset": "tokred.eval.datasets",
    "Sample": "tokred.eval.datasets",
    "ShapesDataset": "tokred.eval.datasets",
    "ShapesVideoDataset": "tokred.eval.datasets",
    "exact_match": "tokred.eval.datasets",
    "load_dataset": "tokred.eval.datasets",
    "normalize_answer": "tokred.eval.datasets",
    "ChecksumError": "tokred.eval.reference",
    "ReferenceModelError": "tokred.eval.reference",
    "RegistryError": "tokred.eval.reference",
    "load_reference_model": "tokred.eval.reference",
    "EvalResult": "tokred.eval.evaluate",
    "drop_curve": "tokred.eval.evaluate",
    "evaluate": "tokred.eval.evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tokred.eval' has no attribute {name!r}")
