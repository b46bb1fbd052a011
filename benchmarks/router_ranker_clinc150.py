"""CLINC150, every agent trained: amo's pipeline router (amo.ranker.AgentRanker) vs a
logistic-regression classifier vs a zero-shot cosine router.

    python benchmarks/router_ranker_clinc150.py --source ../shared/datasets/clinc150

The router is the pipeline's: `AgentRanker.from_params(load_params("params.yaml").router)` with
params.yaml's settings untouched, fitted as stage train_router fits it (index = the agents'
description embeddings, grades from `grade_matrix`, val for early stopping), served with every
training prompt as an example of its agent (`index.with_examples(train, embeddings=x_train)`).
amo's margin over its separator is chosen on val by the pipeline's rule (`choose_margin` at
params.yaml's target OOS recall, 0.70); amo is also reported at margin 0 (the separator alone)
and, as a diagnostic only, with the baselines' threshold rule. The baselines are exactly those of
benchmarks/router_clinc150.py (amo.benchmarking.fit_classifier and cosine similarity, thresholds
tuned on val: the highest in-scope accuracy whose val OOS recall is at least 0.70). Test-set
ceilings (amo.benchmarking.ceilings) are diagnostics, never results. Embeddings come from
benchmarks/.cache/ (amo.benchmarking.cached_encode; the frozen all-MiniLM-L6-v2).
Writes benchmarks/results/router_ranker_clinc150.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from router_clinc150 import CEILINGS_HOW, RESULTS, embed, routing_data

from amo.benchmarking import (
    ceilings,
    cosine_scores,
    fit_classifier,
    routing_metrics,
    tune_margin,
)
from amo.config import load_params
from amo.models import Encoder, resolve_encoder
from amo.ranker import AgentRanker
from amo.routing import AgentIndex, choose_margin, grade_matrix

REPORTED = ("in_scope_accuracy", "oos_recall", "oos_precision", "macro_f1")


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/datasets/clinc150"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/.cache"))
    parser.add_argument("--out", type=Path, default=RESULTS / "router_ranker_clinc150.json")
    parser.add_argument("--classifier-c", type=float, default=10.0, help="the baseline classifier's C")
    parser.add_argument("--seed", type=int, default=0, help="the baseline classifier's seed")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def command(script: str, argv: list[str] | None) -> str:
    return "python " + shlex.join([script, *(sys.argv[1:] if argv is None else argv)])


def rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in metrics.items()}


def out_of_scope(grades: np.ndarray) -> np.ndarray:
    return grades[:, :-1].max(1) == 0


def main(argv: list[str] | None = None) -> dict:
    args = arguments(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    params = load_params(args.params)
    p = params.router
    agents, splits = routing_data("clinc150", args.source)
    ids = [a.id for a in agents]
    agent_x, x = embed(Encoder(resolve_encoder(params.encoder.path)), agents, splits, args.cache)
    grades = {name: grade_matrix(rows, ids) for name, rows in splits.items()}

    # amo: as stage train_router fits and serves it
    fit_start = time.perf_counter()
    index = AgentIndex(agents, agent_x)
    ranker = AgentRanker.from_params(p).fit(index, x["train"], grades["train"], val=(x["val"], grades["val"]),
                                            progress=lambda record: print("ranker", record, flush=True))
    fit_seconds = time.perf_counter() - fit_start
    served = index.with_examples(splits["train"], embeddings=x["train"])
    score_start = time.perf_counter()
    val_scores = ranker.score(x["val"], served)
    test_scores = ranker.score(x["test"], served)
    score_ms = 1000 * (time.perf_counter() - score_start) / (len(x["val"]) + len(x["test"]))
    margin = choose_margin(val_scores, out_of_scope(grades["val"]), p.target_oos_recall)
    chosen = 0.0 if margin is None else margin
    systems = {
        "amo": routing_metrics(test_scores, splits["test"], agents, chosen),
        "amo_margin_0": routing_metrics(test_scores, splits["test"], agents, 0.0),
    }
    diagnostics = {"amo_baseline_threshold_rule": routing_metrics(
        test_scores, splits["test"], agents, tune_margin(val_scores, splits["val"], agents))}
    test_scores_of = {"amo": test_scores}

    # baselines: exactly as benchmarks/router_clinc150.py
    test_scores_of["cosine"] = cosine_scores(x["test"], agent_x)
    cosine_margin = tune_margin(cosine_scores(x["val"], agent_x), splits["val"], agents)
    systems["cosine"] = routing_metrics(test_scores_of["cosine"], splits["test"], agents, cosine_margin)
    classify = fit_classifier(x["train"], splits["train"], ids, c=args.classifier_c, seed=args.seed)
    test_scores_of["classifier"] = classify(x["test"])
    classifier_margin = tune_margin(classify(x["val"]), splits["val"], agents)
    systems["classifier"] = routing_metrics(test_scores_of["classifier"], splits["test"], agents, classifier_margin)

    best = min(ranker.history_, key=lambda r: r.get("val_loss", r["train_loss"]))
    result = {
        "command": command("benchmarks/router_ranker_clinc150.py", argv),
        "dataset": "CLINC150 data_full (train 15,000+100 oos, val 3,000+100 oos, test 4,500+1,000 oos)",
        "encoder": "all-MiniLM-L6-v2 (frozen), the same embeddings for every system",
        "router": "amo.ranker.AgentRanker.from_params(load_params('params.yaml').router), params untouched",
        "router_params": p.model_dump(),
        "serving_index": "descriptions of all 150 agents + every training prompt as an example of its agent",
        "threshold_tuning": {
            "amo": f"choose_margin on val at target OOS recall {p.target_oos_recall} (the pipeline's rule)",
            "amo_margin_0": "margin 0: the learned separator alone",
            "cosine, classifier": "on val, the highest in-scope accuracy with OOS recall >= 0.70 "
                                  "(amo.benchmarking.tune_margin, router_clinc150.py's rule)",
        },
        "threads": args.threads,
        "systems": {name: rounded(m) for name, m in systems.items()},
        "diagnostics": {
            "amo_baseline_threshold_rule": {"how": "amo's scores with the baselines' threshold rule "
                                                   "(tune_margin on val); not the pipeline's rule",
                                            **rounded(diagnostics["amo_baseline_threshold_rule"])},
            "ceilings": {"how": CEILINGS_HOW,
                         **{name: rounded(ceilings(scores, splits["test"], agents))
                            for name, scores in test_scores_of.items()}},
        },
        "amo_training": {"fit_seconds": round(fit_seconds, 1), "epochs_run": len(ranker.history_),
                         "best_epoch": best["epoch"], "best_val_loss": best.get("val_loss"),
                         "history": ranker.history_, "chosen_margin": round(chosen, 4),
                         "score_ms_per_prompt_batched": round(score_ms, 3),
                         "parameters": sum(q.numel() for q in ranker.model_.parameters())},
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"amo margin (choose_margin on val, target OOS recall {p.target_oos_recall}): {chosen:.4f}; "
          f"fit {fit_seconds:.0f} s, {len(ranker.history_)} epochs (best {best['epoch']})")
    for name, metrics in result["systems"].items():
        print(f"{name:14s} " + "  ".join(f"{k}={metrics[k]:.4f}" for k in REPORTED)
              + f"  margin={metrics['margin']:.4f}")
    d = result["diagnostics"]["amo_baseline_threshold_rule"]
    print("diagnostic: amo with the baselines' rule " + "  ".join(f"{k}={d[k]:.4f}" for k in REPORTED))
    for name in test_scores_of:
        ceiling = result["diagnostics"]["ceilings"][name]
        print(f"{name:14s} ceilings " + "  ".join(f"{k}={v:.4f}" for k, v in ceiling.items() if k != "how"))
    print(f"wrote {args.out} ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
