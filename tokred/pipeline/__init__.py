"""The pipeline: ``tokred.patch`` instruments a transformers multimodal model with a strategy.

Three optional stages, driven by the strategy's components (architecture §4):

* vision tower (`tokred.pipeline._vision`): ToMe-style merging inside the encoder layers;
* before the LLM (`tokred.pipeline._prellm`): per-image merging of projected features, shortened token inputs;
* inside the LLM (`tokred.pipeline._llm`): decoder-layer hooks that drop visual tokens, scores from a registered
  attention function (`tokred.pipeline._attention`).
"""

from __future__ import annotations

from tokred.pipeline._handle import PatchHandle, patch, select_adapter
from tokred.pipeline._state import ReductionStats

__all__ = ["PatchHandle", "ReductionStats", "patch", "select_adapter"]
