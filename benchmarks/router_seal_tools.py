"""Routing at scale: every one of Seal-Tools' 4,076 tools is a candidate agent.

    python benchmarks/router_seal_tools.py --source ../shared/datasets/seal_tools

amo's listwise router (trained with sampled negatives: the batch's relevant tools plus random
others, `max_candidates` in all) against a zero-shot cosine router and a one-vs-rest
logistic-regression classifier (it can only name tools relevant somewhere in training), same
splits and same frozen encoder. Every system's threshold is tuned on val for selection-set F1
(at most --max-k tools), as in router_ultratool.py. Quality on the test queries: recall@5,
selection-set F1, NDCG@5. Latency: one prompt routed end to end over all 4,076 agents through
torch and through onnxruntime (1 thread each). Writes benchmarks/results/router_seal_tools.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from router_clinc150 import common_arguments, embed, routing_data, train_router
from router_latency import route_paths, time_routes

from amo.benchmarking import compare_multilabel
from amo.config import load_params
from amo.data import RoutingExample
from amo.models import Encoder, resolve_encoder
from amo.routing import grade_matrix

KEYS = ("recall_at_5", "selection_f1", "ndcg_at_5")


def recall_at_5(scores: np.ndarray, examples: list[RoutingExample], ids: list[str]) -> float:
    """Mean over prompts of the share of relevant agents among the 5 best-scoring ones."""
    top = np.argsort(-scores[:, :-1], axis=1, kind="stable")[:, :5]
    return float(np.mean([len(set(e.labels) & {ids[j] for j in row}) / len(e.labels)
                          for row, e in zip(top, examples)]))


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                              "seal_tools", "router_seal_tools.json", epochs=20, batch_size=32)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="route settings")
    parser.add_argument("--scorer", default="mlp")
    parser.add_argument("--oos-weight", type=float, default=1.0)
    parser.add_argument("--max-k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=13, help="the importer's split seed")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = arguments(argv)
    torch.set_num_threads(args.threads)
    agents, splits = routing_data("seal_tools", args.source, args.seed)
    ids = [a.id for a in agents]
    encoder = Encoder(resolve_encoder(args.encoder))
    agent_x, x = embed(encoder, agents, splits, args.cache)

    router, train_seconds = train_router(args, args.scorer, args.proj_dim, x["train"],
                                         grade_matrix(splits["train"], ids), agent_x,
                                         (x["val"], grade_matrix(splits["val"], ids)))
    systems = {}
    for name, (test_scores, metrics) in compare_multilabel(router, x, splits, agents, agent_x,
                                                           args.classifier_c, args.max_k).items():
        systems[name] = {"recall_at_5": round(recall_at_5(test_scores, splits["test"], ids), 4),
                         **{k: round(metrics[k], 4) for k in ("selection_f1", "ndcg_at_5", "margin")}}
        print(f"{name:11s} " + "  ".join(f"{k}={systems[name][k]:.3f}" for k in KEYS), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        paths = route_paths(router, encoder, [a.description for a in agents], agent_x, ids,
                            load_params(args.params).router, Path(tmp), args.threads)
        latency = time_routes(paths, [e.prompt for e in splits["test"]], args.runs, args.warmup, seed=0)
    for name in ("torch", "onnx"):
        print(f"route over {len(ids)} agents, {name}: p50 {latency[name]['p50_ms']:.1f} ms, "
              f"p99 {latency[name]['p99_ms']:.1f} ms (cpu p50 {latency[name]['cpu_p50_ms']:.1f} ms)")

    seen = {agent for e in splits["train"] for agent in e.labels}
    test_calls = [agent for e in splits["test"] for agent in e.labels]
    best = min(router.history_, key=lambda r: r["val_loss"])
    result = {
        "command": "python " + shlex.join(["benchmarks/router_seal_tools.py", *(argv or sys.argv[1:])]),
        "dataset": (f"Seal-Tools via amo.importers.seal_tools (seed {args.seed}): "
                    + ", ".join(f"{k} {len(v)}" for k, v in splits.items()) + f"; {len(ids)} tools, "
                    f"{len(seen)} of them relevant somewhere in train"),
        "n_agents": len(ids),
        "test_relevant_tools_seen_in_train": f"{sum(a in seen for a in test_calls)} of {len(test_calls)}",
        "threshold_tuning": "on val, maximising selection-set F1, same rule for all; at most max_k tools",
        "encoder": "all-MiniLM-L6-v2 (frozen)",
        "threads": args.threads,
        "amo_train_seconds": round(train_seconds, 1), "amo_best_epoch": best["epoch"],
        "amo_max_candidates": router.max_candidates,
        "systems": systems,
        "latency": latency,
        "settings": {k: v for k, v in vars(args).items() if k not in ("source", "cache", "out")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
