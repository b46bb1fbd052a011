"""Export the router's scoring model to ONNX and score with onnxruntime.

The graph takes prompt embeddings (B, D) and agent embeddings (C, D) with B and C dynamic, so
agents added after export are scored by the same file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ONNX_FILE = "router.onnx"


def export_router(router: ListwiseRouter, path: Path, opset: int = 17) -> Path:  # noqa: F821
    import torch

    dim = router.config_.dim
    prompts, agents = torch.zeros(2, dim), torch.zeros(3, dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        router.model_, (prompts, agents), str(path), dynamo=False, opset_version=opset,
        input_names=["prompts", "agents"], output_names=["scores"],
        dynamic_axes={"prompts": {0: "batch"}, "agents": {0: "agents"},
                      "scores": {0: "batch", 1: "candidates"}},
    )
    return path


class OnnxScorer:
    """onnxruntime session for an exported router: same contract as ListwiseRouter.score."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def score(self, prompts: np.ndarray, agents: np.ndarray) -> np.ndarray:
        (scores,) = self.session.run(None, {"prompts": np.ascontiguousarray(prompts, np.float32),
                                            "agents": np.ascontiguousarray(agents, np.float32)})
        return scores
