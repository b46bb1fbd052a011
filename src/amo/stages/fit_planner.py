"""Stage `fit_planner`: the planner's decision trees, fitted on the training traces with the
router's scores as features.

    amo fit-planner --data data --embeddings artifacts/embeddings --router artifacts/router --onnx artifacts/router_onnx --out artifacts/planner --metrics metrics/fit_planner.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amo import data as contracts
from amo.config import Params, PlannerParams
from amo.data import write_json
from amo.planner import TreePlanner
from amo.stages.routed import RouterView


def fit(params: PlannerParams, traces: list[contracts.Trace], router: RouterView) -> TreePlanner:
    prompts = [t.prompt for t in traces]
    embeddings, scores = router(prompts)
    return TreePlanner.from_params(params).fit(prompts, embeddings, scores[:, :-1], scores[:, -1].tolist(), [t.path for t in traces],
                       router.index.ids)


def run(params: Params, data: Path, router_dir: Path, onnx_dir: Path, out: Path, metrics: Path,
        embeddings: Path | None = None) -> dict[str, Any]:
    traces = contracts.read_traces(data / "traces" / "train.jsonl")
    planner = fit(params.planner, traces, RouterView.load(params.encoder, router_dir, onnx_dir, embeddings))
    planner.save(out)
    result = {"train_traces": len(traces), "stop_tree_nodes": len(planner.stop_tree_["left"]),
              "next_tree_nodes": len(planner.next_tree_["left"]),
              "rerank_tree_nodes": len(planner.rerank_tree_["left"]) if planner.rerank_tree_ else 0}
    write_json(metrics, result)
    return result
