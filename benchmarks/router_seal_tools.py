"""Routing at scale: every one of Seal-Tools' 4,076 tools is a candidate agent.

    python benchmarks/router_seal_tools.py --source ../shared/datasets/seal_tools

amo's listwise router (trained with sampled negatives: `max_candidates` per batch) against a
zero-shot cosine router (threshold tuned on val) and a logistic-regression classifier (one row per
(query, called tool); it can only name tools seen in training), same splits and same frozen
encoder. Quality on the test queries: recall@5, selection-set F1 (at most `--max-k` agents),
NDCG@5. Latency: one prompt routed end to end over all 4,076 agents through torch and through
onnxruntime (1 thread each). Writes benchmarks/results/router_seal_tools.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from router_amazon import cached_encode, router_from_params
from router_latency import route_paths, time_routes

from amo.config import load_params
from amo.data import RoutingExample
from amo.importers import load as load_dataset
from amo.metrics import ndcg_at_k, set_f1
from amo.models import Encoder, resolve_encoder
from amo.router import grade_matrix, select


def quality(scores: np.ndarray, examples: list[RoutingExample], ids: list[str], max_k: int,
            margin: float = 0.0) -> dict[str, float]:
    """scores (N, A + 1), the last column the threshold (separator, or a tuned constant)."""
    recall, f1, ndcg = [], [], []
    for row, example in zip(scores, examples):
        top = [ids[i] for i in np.argsort(-row[:-1], kind="stable")[:5]]
        gold = set(example.labels)
        recall.append(len(gold & set(top)) / len(gold))
        f1.append(set_f1([a for a, _ in select(row, ids, max_k=max_k, margin=margin).agents], gold))
        ndcg.append(ndcg_at_k(top, example.labels, k=5))
    return {"recall_at_5": round(float(np.mean(recall)), 4), "selection_f1": round(float(np.mean(f1)), 4),
            "ndcg_at_5": round(float(np.mean(ndcg)), 4)}


def with_threshold(scores: np.ndarray, threshold: float) -> np.ndarray:
    return np.hstack([scores, np.full((len(scores), 1), threshold, np.float32)])


def tune_threshold(scores: np.ndarray, examples: list[RoutingExample], ids: list[str], max_k: int) -> float:
    """The constant threshold with the best val selection F1 (the semantic-router recipe)."""
    grid = np.unique(np.quantile(scores, np.linspace(0.95, 1.0, 101)))
    return float(max(grid, key=lambda t: quality(with_threshold(scores, t), examples, ids, max_k)["selection_f1"]))


def classifier_scores(x_train: np.ndarray, train: list[RoutingExample], ids: list[str], c: float,
                      seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """Logistic regression on one row per (query, called tool): prompts -> (N, A) probabilities,
    0 for tools never called in training."""
    from sklearn.linear_model import LogisticRegression

    rows = [(i, a) for i, e in enumerate(train) for a in e.labels]
    model = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(
        x_train[[i for i, _ in rows]], [a for _, a in rows])
    columns = [ids.index(a) for a in model.classes_]

    def score(x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), len(ids)), np.float32)
        out[:, columns] = model.predict_proba(x)
        return out

    return score


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/datasets/seal_tools"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--seed", type=int, default=13, help="split seed")
    parser.add_argument("--epochs", type=int, default=None, help="default: params.yaml router.epochs")
    parser.add_argument("--max-candidates", type=int, default=512, help="agents per training batch")
    parser.add_argument("--max-k", type=int, default=5, help="largest selection, every system")
    parser.add_argument("--classifier-c", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/router_seal_tools.json"))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    params = load_params(args.params)
    imported = load_dataset("seal_tools", args.source, args.seed)
    ids = [a["id"] for a in imported.agents]
    splits = {name: [RoutingExample(r["prompt"], r["labels"]) for r in records]
              for name, records in imported.routing.items()}
    encoder = Encoder(resolve_encoder(params.encoder.path), params.encoder.batch_size)
    agents = cached_encode(encoder, [a["description"] for a in imported.agents])
    x = {name: cached_encode(encoder, [e.prompt for e in part]) for name, part in splits.items()}
    train, val, test = splits["train"], splits["val"], splits["test"]

    start = time.perf_counter()
    router = router_from_params(args.params, {"epochs": args.epochs, "max_candidates": args.max_candidates})
    router.fit(x["train"], grade_matrix(train, ids), agents, val=(x["val"], grade_matrix(val, ids)))
    train_seconds = time.perf_counter() - start
    systems: dict[str, dict[str, Any]] = {
        "amo": quality(router.score(x["test"], agents), test, ids, args.max_k, params.router.margin)}
    cosine_val, cosine_test = x["val"] @ agents.T, x["test"] @ agents.T
    threshold = tune_threshold(cosine_val, val, ids, args.max_k)
    systems["cosine"] = {**quality(with_threshold(cosine_test, threshold), test, ids, args.max_k),
                         "threshold": round(threshold, 4)}
    classify = classifier_scores(x["train"], train, ids, args.classifier_c, seed=0)
    threshold = tune_threshold(classify(x["val"]), val, ids, args.max_k)
    systems["classifier"] = {**quality(with_threshold(classify(x["test"]), threshold), test, ids, args.max_k),
                             "threshold": round(threshold, 4)}
    seen = {a for e in train for a in e.labels}
    test_labels = [a for e in test for a in e.labels]

    with tempfile.TemporaryDirectory() as tmp:
        paths = route_paths(router, encoder, [a["description"] for a in imported.agents], agents, ids,
                            params.router, Path(tmp), threads=1)
        latency = time_routes(paths, [e.prompt for e in test], args.runs, args.warmup, seed=0)

    best = min(router.history_, key=lambda h: h.get("val_loss", h["train_loss"]))
    result = {
        "command": shlex.join(["python", "benchmarks/router_seal_tools.py", *(sys.argv[1:] if argv is None else argv)]),
        "n_agents": len(ids), "systems": systems, "latency": latency,
        "data": {"source": str(args.source), "split_seed": args.seed,
                 **{f"{name}_prompts": len(part) for name, part in splits.items()},
                 "test_calls": len(test_labels),
                 "test_calls_to_tools_seen_in_train": sum(a in seen for a in test_labels)},
        "router": {"epochs": router.epochs, "max_candidates": router.max_candidates,
                   "best_epoch": best["epoch"], "train_seconds": round(train_seconds, 1),
                   "max_k": args.max_k, "margin": params.router.margin},
        "torch_threads": torch.get_num_threads(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'system':<11} {'R@5':>6} {'F1':>6} {'NDCG@5':>7}")
    for name, row in systems.items():
        print(f"{name:<11} {row['recall_at_5']:>6.3f} {row['selection_f1']:>6.3f} {row['ndcg_at_5']:>7.3f}")
    for name in ("torch", "onnx"):
        print(f"route over {len(ids)} agents, {name}: p50 {latency[name]['p50_ms']:.1f} ms, "
              f"p99 {latency[name]['p99_ms']:.1f} ms")
    return result


if __name__ == "__main__":
    main()
