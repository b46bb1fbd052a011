"""Stage `export_router`: the ranker and the encoder to ONNX, each checked against torch on
real inputs (the runtime then routes without torch), next to the files routing needs.

    amo export-router --router artifacts/router --out artifacts/router_onnx --metrics metrics/export_router.json
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from amo.config import Params
from amo.data import write_json
from amo.encoder_tuning import stage_encoder
from amo.onnx_encoder import ENCODER_ONNX, OnnxEncoder, export_encoder
from amo.onnx_router import ONNX_FILE, OnnxRanker, export_ranker
from amo.ranker import AgentRanker
from amo.routing import AgentIndex, Classifier

MAX_GAP = 1e-4


def run(params: Params, router_dir: Path, out: Path, metrics: Path) -> dict[str, Any]:
    ranker = AgentRanker.load(router_dir)
    index = AgentIndex.load(router_dir)
    export_ranker(ranker, out / ONNX_FILE)
    shutil.copy2(router_dir / Classifier.FILE, out / Classifier.FILE)
    # Probe prompts: the descriptions and a few example prompts, through the full index.
    probe = np.vstack([index.embeddings[:8], index.examples[:8]])
    gap = float(np.abs(OnnxRanker(out).score(probe, index) - ranker.score(probe, index)).max())
    if gap > MAX_GAP:
        raise RuntimeError(f"ONNX and torch router scores differ by {gap:.2e} (> {MAX_GAP})")
    encoder = stage_encoder(params.encoder, router_dir)
    export_encoder(encoder.path, out)
    texts = [a.description for a in index.agents[:16]]
    encoder_gap = float(np.abs(OnnxEncoder(out).encode(texts) - encoder.encode(texts)).max()) if texts else 0.0
    if encoder_gap > MAX_GAP:
        raise RuntimeError(f"ONNX and sentence-transformers embeddings differ by {encoder_gap:.2e} (> {MAX_GAP})")
    result = {"max_abs_diff_vs_torch": gap, "onnx_bytes": (out / ONNX_FILE).stat().st_size,
              "encoder_max_abs_diff_vs_torch": encoder_gap,
              "encoder_onnx_bytes": (out / ENCODER_ONNX).stat().st_size}
    write_json(metrics, result)
    return result
