"""Stage `evaluate`: router and planner on the held-out splits through the exported ONNX scorer
(what ships), plus each arm's scores from its own stage.

    amo evaluate --data data --embeddings artifacts/embeddings --router artifacts/router --onnx artifacts/router_onnx --planner artifacts/planner --arms metrics/arms --out metrics/evaluation.json --plot metrics/plots/confusion.csv
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from amo import data as contracts
from amo.config import Params, RouterParams
from amo.data import write_csv, write_json
from amo.metrics import planner_metrics, router_metrics
from amo.planner import TreePlanner
from amo.routing import Route, agent_margins, rankings, read_margin, select
from amo.stages.routed import RouterView


def evaluate(params: RouterParams, margin: float, router: RouterView, planner: TreePlanner,
             routing: list[contracts.RoutingExample], traces: list[contracts.Trace]) -> dict[str, Any]:
    ids = router.index.ids
    margins = agent_margins(router.index, margin)
    _, scores = router([e.prompt for e in routing])
    def route(row: np.ndarray) -> Route:
        return select(row, ids, min_k=params.min_k, max_k=params.max_k, margin=margins)

    routes = [route(row) for row in scores]
    embeddings, t_scores = router([t.prompt for t in traces])
    # The plan as served: it follows the route (none when the router abstains).
    predicted = [planner.plan_scores(t.prompt, e, ids, row, explain=False,
                                     selected=[a for a, _ in route(row).agents]).path
                 for t, e, row in zip(traces, embeddings, t_scores)]
    return {"router": router_metrics(routes, routing, rankings(scores, ids)),
            "planner": planner_metrics(predicted, [t.path for t in traces]),
            "confusion": confusion_rows(routes, routing)}


ABSTAIN = "(abstain)"


def confusion_rows(routes: list[Route], routing: list[contracts.RoutingExample]) -> list[list[str]]:
    """(actual, predicted) per test prompt: the top-graded agent (or the abstention an
    out-of-scope prompt calls for) against the first selected one (or the abstention)."""
    def top(labels: dict[str, int]) -> str:
        return min(a for a, g in labels.items() if g == max(labels.values())) if labels else ABSTAIN

    return [[top(e.labels), r.agents[0][0] if r.agents else ABSTAIN] for r, e in zip(routes, routing)]


def run(params: Params, data: Path, router_dir: Path, onnx_dir: Path, planner_dir: Path, arms: Path,
        out: Path, embeddings: Path | None = None, plot: Path | None = None) -> dict[str, Any]:
    result = evaluate(params.router, read_margin(router_dir),
                      RouterView.load(params.encoder, router_dir, onnx_dir, embeddings),
                      TreePlanner.load(planner_dir), contracts.read_routing(data / "routing" / "test.jsonl"),
                      contracts.read_traces(data / "traces" / "test.jsonl"))
    scores = {name: json.loads((arms / f"{name}.json").read_text()) for name in sorted(params.arms.tasks)}
    result["arms"] = {name: {"arm": m["arm"], "base": m["base"], "metric": params.arms.tasks[name].metric}
                      for name, m in scores.items()}
    confusion = result.pop("confusion")
    write_json(out, result)
    if plot is not None:
        write_csv(plot, ["actual", "predicted"], confusion)
    return result
