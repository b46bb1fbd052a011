"""Stage `bundle`: assemble the bundle the runtime serves and seal its manifest.

    amo bundle --router artifacts/router --onnx artifacts/router_onnx --planner artifacts/planner --arms artifacts/arms --evaluation metrics/evaluation.json --out build/bundle
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from amo.bundle import build_bundle
from amo.config import Params
from amo.onnx_router import ONNX_FILE


def run(params: Params, raw_params: dict[str, Any], router_dir: Path, onnx_dir: Path, planner_dir: Path,
        arms_dir: Path, evaluation: Path, out: Path, sign_key: Path | None = None) -> dict[str, Any]:
    metrics = json.loads(evaluation.read_text(encoding="utf-8"))
    return build_bundle(params, raw_params, out, router_dir=router_dir, onnx_path=onnx_dir / ONNX_FILE,
                        planner_dir=planner_dir, arms_dir=arms_dir, metrics=metrics, sign_key=sign_key)
