"""Is a new agent's routing on the demo copilot a property of the pipeline or of the seed?

    python benchmarks/router_demo_seeds.py [--seeds 0,1,2,3,4]

Writes the demo data (amo.demo, the embedded default) into a temporary folder and, for each seed
and each cross-fit setting, trains the router as `train_router` does (amo.stages.train_router.train:
the pipeline's ranker, margin chosen on val, every training prompt an example). Settings:
`one_pass` is `router.crossfit_cells: 0` (one cross-fit pass, as before 2026-12-07); `shipped` is
params.yaml as it is ((994 + 213) rows x 14 agents a pass: min(8, crossfit_cells // that) passes). Measured per fit:
- the test split with the pipeline's selection (`select` with `agent_margins`): in-scope
  accuracy and out-of-scope recall (amo.metrics);
- each of benchmarks/new_agent.py's three new agents added alone by description (the cheap index
  step: `AgentIndex.add`, no retraining): how many of its 12 test prompts select it first;
- its 12 out-of-scope prompts with all three agents added: how many abstain.
Single-threaded (OMP_NUM_THREADS=1). Writes benchmarks/results/router_demo_seeds.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULT = Path("benchmarks/results/router_demo_seeds.json")


def measure(params: Any, data: Path, encoder: Any) -> dict[str, Any]:
    """One pipeline router fit on the demo data and what it does with new agents."""
    from new_agent import AGENTS, OUT_OF_SCOPE

    from amo import data as contracts
    from amo.data import Agent
    from amo.metrics import router_metrics
    from amo.routing import agent_margins, rankings, select
    from amo.stages.train_router import train

    p = params.router
    agents = contracts.read_agents(data / "agents.jsonl")
    train_rows, val_rows, test_rows = (contracts.read_routing(data / "routing" / f"{s}.jsonl")
                                       for s in ("train", "val", "test"))
    start = time.perf_counter()
    ranker, served, selection, _ = train(params, agents, train_rows, val_rows, encoder)
    seconds = time.perf_counter() - start

    def routes(index: Any, prompts: list[str]) -> tuple[list[Any], Any]:
        scores = ranker.score(encoder.encode(prompts), index)
        margins = agent_margins(index, selection["margin"])
        return [select(row, index.ids, min_k=p.min_k, max_k=p.max_k, margin=margins) for row in scores], scores

    test_routes, test_scores = routes(served, [e.prompt for e in test_rows])
    test = router_metrics(test_routes, test_rows, rankings(test_scores, served.ids))
    new_agents = {}
    for agent in AGENTS:
        index = served.add([Agent(agent["id"], agent["description"], "shopping")], encoder)
        first = [r.agents[0][0] if r.agents else None for r in routes(index, agent["test"])[0]]
        new_agents[agent["id"]] = sum(f == agent["id"] for f in first)
    everyone = served.add([Agent(a["id"], a["description"], "shopping") for a in AGENTS], encoder)
    abstained = sum(r.abstained for r in routes(everyone, OUT_OF_SCOPE)[0])
    return {"crossfit_passes": ranker.passes_, "fit_seconds": round(seconds, 1),
            "margin": round(selection["margin"], 4), "test_in_scope_accuracy": round(test["in_scope_accuracy"], 4),
            "test_oos_recall": round(test["oos_recall"], 4), "new_agent_top1_of_12": new_agents,
            "out_of_scope_abstained_of_12": abstained}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    import torch

    from amo.config import load_params
    from amo.demo import write_demo_data
    from amo.models import Encoder, resolve_encoder

    torch.set_num_threads(1)
    params = load_params(args.params)
    encoder = Encoder(resolve_encoder(params.encoder.path))
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = {"one_pass": 0, "shipped": params.router.crossfit_cells}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        write_demo_data(data)
        for seed in seeds:
            for name, cells in settings.items():
                router = params.router.model_copy(update={"seed": seed, "crossfit_cells": cells})
                result = {"seed": seed, **measure(params.model_copy(update={"router": router}), data, encoder)}
                runs[name].append(result)
                print(name, json.dumps(result), flush=True)

    def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
        tops = [sum(r["new_agent_top1_of_12"].values()) for r in results]

        def mean(key: str) -> float:
            return round(sum(r[key] for r in results) / len(results), 4)

        return {"new_agent_top1_of_36": {"min": min(tops), "max": max(tops), "mean": round(sum(tops) / len(tops), 2)},
                "fits_with_no_new_agent_prompt_routed": sum(t == 0 for t in tops),
                "test_in_scope_accuracy_mean": mean("test_in_scope_accuracy"),
                "test_oos_recall_mean": mean("test_oos_recall"),
                "out_of_scope_abstained_of_12_min": min(r["out_of_scope_abstained_of_12"] for r in results)}

    command = "python benchmarks/router_demo_seeds.py"
    report = {"command": command + ("" if args.seeds == "0,1,2,3,4" else f" --seeds {args.seeds}"),
              "data": "amo.demo.write_demo_data (seed 13): 994 train / 213 val / 213 test routing rows, 14 agents",
              "encoder": params.encoder.path,
              "settings": {k: {"router.crossfit_cells": v} for k, v in settings.items()},
              "summary": {name: summary(results) for name, results in runs.items()}, "runs": runs}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["summary"], indent=1))
    return report


if __name__ == "__main__":
    main()
