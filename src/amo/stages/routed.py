"""The trained router as later stages see it: the agent index, the stage's encoder and the
exported ONNX scorer (what ships), loaded once per stage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amo.config import EncoderParams
from amo.encoder_tuning import stage_encoder
from amo.onnx_router import OnnxRanker
from amo.routing import AgentIndex


@dataclass
class RouterView:
    index: AgentIndex
    encoder: Any  # models.Encoder, or embeddings.CachedEncoder over the embedding store
    scorer: OnnxRanker

    @classmethod
    def load(cls, params: EncoderParams, router_dir: Path, onnx_dir: Path, embeddings: Path | None = None) -> RouterView:
        return cls(AgentIndex.load(router_dir), stage_encoder(params, router_dir, embeddings), OnnxRanker(onnx_dir))

    def __call__(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Prompt embeddings (N, D) and the router's scores (N, A + 1): one per agent of the
        index, the separator last."""
        embeddings = self.encoder.encode(prompts)
        return embeddings, self.scorer.score(embeddings, self.index)
