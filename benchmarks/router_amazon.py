"""The seed paper's hierarchical benchmark: Amazon reviews, 3 category levels, every category an agent.

    python benchmarks/router_amazon.py
    python benchmarks/router_amazon.py --finetune-encoder --ft-positives top   # router_amazon_finetuned.json

amo's listwise router (graded labels: level 1 grade 1, level 2 grade 2, level 3 grade 3) against a
zero-shot cosine router and logistic regression per level, same splits and same frozen encoder.
Each level is predicted as the best-scoring candidate of that level; `amo_path` also reports the
consistent-path rule (the level-3 category whose path has the highest summed score). Router
settings are this script's arguments (shared with the other router benchmarks). Writes
benchmarks/results/router_amazon.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

import numpy as np
import torch
from router_clinc150 import (
    common_arguments,
    embed,
    encoder_label,
    encoder_path,
    finetune_arguments,
    finetuned_out,
    routing_data,
    train_router,
)

from amo.data import RoutingExample
from amo.models import Encoder
from amo.routing import grade_matrix

LEVELS = (1, 2, 3)
PAPER = {"amo": [0.95, 0.81, 0.72], "classifier": [0.90, 0.75, 0.66], "chatgpt4": [0.87, 0.71, 0.59]}


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


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = finetune_arguments(common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                                                 "amazon_htc", "router_amazon.json", epochs=20, batch_size=64))
    parser.add_argument("--scorer", default="mlp")
    parser.add_argument("--oos-weight", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=13, help="the importer's split seed")
    parser.add_argument("--grades", default="1,2,3", help="relevance grade of levels 1,2,3")
    parser.add_argument("--classifier-grid", default="1,10,100", help="C values, picked on val")
    return finetuned_out(parser.parse_args(argv), argv, "router_amazon_finetuned.json")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = arguments(argv)
    torch.set_num_threads(args.threads)
    grades = tuple(int(g) for g in args.grades.split(","))
    agents, splits = routing_data("amazon_htc", args.source, args.seed)
    ids = [a.id for a in agents]
    train, val, test = regrade(splits["train"], grades), regrade(splits["val"], grades), splits["test"]
    path, tuning = encoder_path(args, agents, train)
    agent_x, x = embed(Encoder(path), agents, splits, args.cache)

    router, train_seconds = train_router(args, args.scorer, args.proj_dim, x["train"],
                                         grade_matrix(train, ids), agent_x, (x["val"], grade_matrix(val, ids)))
    amo_scores = router.score(x["test"], agent_x)[:, :-1]
    cosine = x["test"] @ agent_x.T
    clf, chosen_c = classifier_scores(x["train"], train, x["val"], val, x["test"], ids,
                                      [float(c) for c in args.classifier_grid.split(",")], seed=0)
    systems = {"amo": accuracies(per_level(amo_scores, ids), ids, test),
               "amo_path": accuracies(consistent_path(amo_scores, ids), ids, test),
               "cosine": accuracies(per_level(cosine, ids), ids, test),
               "cosine_path": accuracies(consistent_path(cosine, ids), ids, test),
               "classifier": accuracies(per_level(clf, ids), ids, test)}
    counts = {f"level_{level}": sum(level_of(a) == level for a in ids) for level in LEVELS}
    best = min(router.history_, key=lambda r: r.get("val_loss", r["train_loss"]))
    result = {
        "command": "python " + shlex.join(["benchmarks/router_amazon.py", *(argv or sys.argv[1:])]),
        "dataset": ("Amazon reviews (amazon_htc/reviews.csv) via amo.importers.amazon_htc "
                    f"(seed {args.seed}): " + ", ".join(f"{k} {len(v)}" for k, v in splits.items())
                    + f"; {len(ids)} category agents (" + " / ".join(str(c) for c in counts.values())
                    + " at levels 1 / 2 / 3)"),
        "systems": systems,
        "paper": {name: dict(zip(("l1_accuracy", "l2_accuracy", "l3_accuracy"), v)) for name, v in PAPER.items()},
        "prediction": "each level: the best-scoring candidate of that level; *_path: the level-3 "
                      "category whose path has the highest summed score, and its ancestors",
        "grades_by_level": list(grades),
        "classifier": {"model": "logistic regression per level on the same embeddings", **chosen_c},
        "encoder": encoder_label(tuning),
        "encoder_finetune": tuning,
        "threads": args.threads,
        "amo_train_seconds": round(train_seconds, 1), "amo_best_epoch": best["epoch"],
        "settings": {k: v for k, v in vars(args).items() if k not in ("source", "cache", "out")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'system':<12} {'l1':>6} {'l2':>6} {'l3':>6}")
    for name, row in systems.items():
        print(f"{name:<12} {row['l1_accuracy']:>6.3f} {row['l2_accuracy']:>6.3f} {row['l3_accuracy']:>6.3f}")
    return result


if __name__ == "__main__":
    main()
