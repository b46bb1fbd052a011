"""Export the router to ONNX and score with onnxruntime.

`export_ranker` / `OnnxRanker`: the pipeline's ranker (amo.ranker); its graph takes the route
features computed by amo.routing (numpy), so routing needs no torch. `export_router` /
`OnnxScorer`: the description-only scorer (amo.router.ListwiseRouter), kept as the baseline the
benchmarks compare with; its graph takes prompt (B, D) and agent (C, D) embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from amo.ranker import AgentRanker
    from amo.router import ListwiseRouter
    from amo.routing import AgentIndex

ONNX_FILE = "router.onnx"


def session(path: Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session with `threads` intra-op threads (one by default: the runtime
    batches requests instead)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_router(router: ListwiseRouter, path: Path, opset: int = 17) -> Path:
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
        self.session = session(path, threads)

    def score(self, prompts: np.ndarray, agents: np.ndarray) -> np.ndarray:
        (scores,) = self.session.run(None, {"prompts": np.ascontiguousarray(prompts, np.float32),
                                            "agents": np.ascontiguousarray(agents, np.float32)})
        return scores


def export_ranker(ranker: AgentRanker, path: Path, opset: int = 17) -> Path:
    """The ranker's MLP over route features: (n, A, Fa), (n, Fp) -> (n, A + 1), n and A dynamic,
    so agents and examples added after export are scored by the same file."""
    import torch

    from amo.routing import AGENT_FEATURES, PROMPT_FEATURES

    agent, prompt = torch.zeros(2, 3, len(AGENT_FEATURES)), torch.zeros(2, len(PROMPT_FEATURES))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        ranker.model_, (agent, prompt), str(path), dynamo=False, opset_version=opset,
        input_names=["agent_features", "prompt_features"], output_names=["scores"],
        dynamic_axes={"agent_features": {0: "batch", 1: "agents"}, "prompt_features": {0: "batch"},
                      "scores": {0: "batch", 1: "candidates"}},
    )
    return path


class OnnxRanker:
    """The exported ranker and its classifier: same contract as AgentRanker.score, no torch."""

    def __init__(self, directory: Path, threads: int = 1) -> None:
        from amo.routing import Classifier

        self.session = session(directory / ONNX_FILE, threads)
        self.classifier = Classifier.load(directory)

    def score(self, prompts: np.ndarray, index: AgentIndex) -> np.ndarray:
        from amo.routing import route_features

        agent, prompt = route_features(prompts, index, self.classifier)
        (scores,) = self.session.run(None, {"agent_features": agent, "prompt_features": prompt})
        return scores
