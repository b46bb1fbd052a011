"""The seed paper's hierarchical benchmark: Amazon reviews, 3 category levels, every category an agent.

    python benchmarks/router_amazon.py

amo's listwise router (graded labels: level 1 grade 1, level 2 grade 2, level 3 grade 3) against a
zero-shot cosine router and logistic regression per level, same splits and same frozen encoder.
Each level is predicted as the best-scoring candidate of that level; `amo_path` also reports the
consistent-path rule (the level-3 category whose path has the highest summed score). Router
hyperparameters come from params.yaml `router`, overridable here. Writes
benchmarks/results/router_amazon.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from inspect import signature
from pathlib import Path
from typing import Any

import numpy as np

from amo.config import load_params
from amo.data import RoutingExample
from amo.importers import amazon_htc
from amo.models import Encoder, cache_dir, resolve_encoder
from amo.router import ListwiseRouter, grade_matrix

LEVELS = (1, 2, 3)
PAPER = {"amo": [0.95, 0.81, 0.72], "classifier": [0.90, 0.75, 0.66], "chatgpt4": [0.87, 0.71, 0.59]}


def cached_encode(encoder: Encoder, texts: list[str]) -> np.ndarray:
    """Embeddings of `texts`, kept under the amo cache keyed by the encoder and the texts."""
    digest = hashlib.sha256(str(encoder.path).encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\x00")
    path = cache_dir() / "embeddings" / f"{digest.hexdigest()[:24]}.npy"
    if path.is_file():
        return np.load(path)
    vectors = encoder.encode(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def router_from_params(params_path: Path, overrides: dict[str, Any]) -> ListwiseRouter:
    """A ListwiseRouter with params.yaml's `router` settings (those it accepts), then overrides."""
    accepted = signature(ListwiseRouter).parameters
    settings = {k: v for k, v in load_params(params_path).router.model_dump().items() if k in accepted}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return ListwiseRouter(**settings)


def level_of(agent_id: str) -> int:
    return int(agent_id.split(":", 1)[0][1:])


def regrade(examples: list[RoutingExample], grades: tuple[int, ...]) -> list[RoutingExample]:
    return [RoutingExample(e.prompt, {a: grades[level_of(a) - 1] for a in e.labels}) for e in examples]


def per_level(scores: np.ndarray, ids: list[str]) -> dict[int, np.ndarray]:
    """Index (into ids) of the best-scoring candidate of each level, per prompt."""
    out = {}
    for level in LEVELS:
        columns = np.array([i for i, a in enumerate(ids) if level_of(a) == level])
        out[level] = columns[np.argmax(scores[:, columns], axis=1)]
    return out


def consistent_path(scores: np.ndarray, ids: list[str]) -> dict[int, np.ndarray]:
    """The level-3 category whose path (l1 + l2 + l3 scores) sums highest, and its ancestors."""
    column = {a: i for i, a in enumerate(ids)}
    leaves = [a for a in ids if level_of(a) == 3]
    ancestors = {level: np.array([column[f"l{level}:" + ".".join(a.split(":", 1)[1].split(".")[:level])]
                                  for a in leaves]) for level in LEVELS}
    total = sum(scores[:, ancestors[level]] for level in LEVELS)
    best = np.argmax(total, axis=1)
    return {level: ancestors[level][best] for level in LEVELS}


def accuracies(predicted: dict[int, np.ndarray], ids: list[str], examples: list[RoutingExample]) -> dict[str, float]:
    out = {}
    for level in LEVELS:
        gold = [next(a for a in e.labels if level_of(a) == level) for e in examples]
        out[f"l{level}_accuracy"] = round(float(np.mean([ids[p] == g for p, g in zip(predicted[level], gold)])), 4)
    return out


def classifier_scores(x_train: np.ndarray, train: list[RoutingExample], x_val: np.ndarray,
                      val: list[RoutingExample], x_test: np.ndarray, ids: list[str],
                      grid: list[float], seed: int) -> tuple[np.ndarray, dict[str, float]]:
    """Logistic regression per level (C picked on val); its probabilities placed in the agent
    columns so the same per-level rule reads them. Categories absent from train score 0."""
    from sklearn.linear_model import LogisticRegression

    column = {a: i for i, a in enumerate(ids)}
    scores = np.zeros((len(x_test), len(ids)), dtype=np.float32)
    chosen = {}
    for level in LEVELS:
        y_train = [next(a for a in e.labels if level_of(a) == level) for e in train]
        y_val = [next(a for a in e.labels if level_of(a) == level) for e in val]
        fits = [LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x_train, y_train) for c in grid]
        best = max(range(len(grid)), key=lambda i: fits[i].score(x_val, y_val))
        model, chosen[f"l{level}_C"] = fits[best], grid[best]
        scores[:, [column[c] for c in model.classes_]] = model.predict_proba(x_test)
    return scores, chosen


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/datasets/amazon_htc"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--seed", type=int, default=13, help="split seed")
    parser.add_argument("--grades", default="1,2,3", help="relevance grade of levels 1,2,3")
    parser.add_argument("--epochs", type=int, default=None, help="default: params.yaml router.epochs")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--classifier-c", default="1,10,100", help="C grid, picked on val")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/router_amazon.json"))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    grades = tuple(int(g) for g in args.grades.split(","))
    imported = amazon_htc.load(args.source, args.seed)
    ids = [a["id"] for a in imported.agents]
    splits = {name: [RoutingExample(r["prompt"], r["labels"]) for r in records]
              for name, records in imported.routing.items()}
    train, val, test = regrade(splits["train"], grades), regrade(splits["val"], grades), splits["test"]
    params = load_params(args.params)
    encoder = Encoder(resolve_encoder(params.encoder.path), params.encoder.batch_size)
    start = time.perf_counter()
    agents = cached_encode(encoder, [a["description"] for a in imported.agents])
    x = {name: cached_encode(encoder, [e.prompt for e in part]) for name, part in splits.items()}
    encode_seconds = time.perf_counter() - start

    start = time.perf_counter()
    router = router_from_params(args.params, {"epochs": args.epochs, "lr": args.lr, "hidden": args.hidden})
    router.fit(x["train"], grade_matrix(train, ids), agents, val=(x["val"], grade_matrix(val, ids)))
    train_seconds = time.perf_counter() - start
    amo_scores = router.score(x["test"], agents)[:, :-1]
    cosine = x["test"] @ agents.T
    clf, chosen_c = classifier_scores(x["train"], train, x["val"], val, x["test"], ids,
                                      [float(c) for c in args.classifier_c.split(",")], seed=0)
    systems = {"amo": accuracies(per_level(amo_scores, ids), ids, test),
               "amo_path": accuracies(consistent_path(amo_scores, ids), ids, test),
               "cosine": accuracies(per_level(cosine, ids), ids, test),
               "cosine_path": accuracies(consistent_path(cosine, ids), ids, test),
               "classifier": accuracies(per_level(clf, ids), ids, test)}
    counts = {f"level_{level}": sum(level_of(a) == level for a in ids) for level in LEVELS}
    best = min(router.history_, key=lambda r: r.get("val_loss", r["train_loss"]))
    result = {
        "command": shlex.join(["python", "benchmarks/router_amazon.py", *sys.argv[1:]]) if argv is None
        else shlex.join(["python", "benchmarks/router_amazon.py", *argv]),
        "systems": systems,
        "paper": {name: dict(zip(("l1_accuracy", "l2_accuracy", "l3_accuracy"), v)) for name, v in PAPER.items()},
        "data": {"source": str(args.source), "split_seed": args.seed, "agents": len(ids), **counts,
                 **{f"{name}_prompts": len(part) for name, part in splits.items()}},
        "router": {**{k: getattr(router, k) for k in signature(ListwiseRouter).parameters},
                   "grades_by_level": list(grades), "best_epoch": best["epoch"],
                   "train_seconds": round(train_seconds, 1)},
        "classifier": {"model": "logistic regression per level on the same embeddings", **chosen_c},
        "encode_seconds": round(encode_seconds, 1), "torch_threads": torch.get_num_threads(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'system':<12} {'l1':>6} {'l2':>6} {'l3':>6}")
    for name, row in systems.items():
        print(f"{name:<12} {row['l1_accuracy']:>6.3f} {row['l2_accuracy']:>6.3f} {row['l3_accuracy']:>6.3f}")
    return result


if __name__ == "__main__":
    main()
