"""Stage `fit_planner`: the planner's decision trees, fitted on the training traces with the
router's scores as features.

    amo fit-planner --data data --router artifacts/router --onnx artifacts/router_onnx --out artifacts/planner --metrics metrics/fit_planner.json
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
    planner = TreePlanner(pca_dims=params.pca_dims, max_depth=params.max_depth,
                          min_samples_leaf=params.min_samples_leaf, next_max_depth=params.next_max_depth,
                          next_min_samples_leaf=params.next_min_samples_leaf, min_next=params.min_next,
                          neighbours=params.neighbours, max_path_len=params.max_path_len, seed=params.seed,
                          candidates=params.candidates, folds=params.folds,
                          rerank_neighbours=params.rerank_neighbours, rerank_max_depth=params.rerank_max_depth,
                          rerank_min_samples_leaf=params.rerank_min_samples_leaf)
    return planner.fit(prompts, embeddings, scores[:, :-1], scores[:, -1].tolist(), [t.path for t in traces],
                       router.index.ids)


def run(params: Params, data: Path, router_dir: Path, onnx_dir: Path, out: Path, metrics: Path) -> dict[str, Any]:
    traces = contracts.read_traces(data / "traces" / "train.jsonl")
    planner = fit(params.planner, traces, RouterView.load(params.encoder, router_dir, onnx_dir))
    planner.save(out)
    result = {"train_traces": len(traces), "stop_tree_nodes": len(planner.stop_tree_["left"]),
              "next_tree_nodes": len(planner.next_tree_["left"]),
              "rerank_tree_nodes": len(planner.rerank_tree_["left"]) if planner.rerank_tree_ else 0}
    write_json(metrics, result)
    return result
