"""CLINC150: does any setting of amo's scoring head close its gap to logistic regression?

    python benchmarks/router_clinc150_heads.py --source ../shared/datasets/clinc150 \
        --finetune-encoder --ft-epochs 3 --ft-lr 5e-5 --threads 2

On one encoder (frozen, or tuned as in router_clinc150.py and cached there), trains amo's router
with each setting in SETTINGS and the logistic-regression classifier once, and writes per system:
test top-1 in-scope accuracy when never abstaining, the test ceiling (best in-scope accuracy of
any threshold holding test OOS recall >= 0.70; read off the test set, a diagnostic), and the
figures at the val-tuned threshold (the rule of router_clinc150.py). Writes
benchmarks/results/router_clinc150_heads.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import torch
from router_clinc150 import (
    CEILINGS_HOW,
    common_arguments,
    embedded_clinc150,
    encoder_label,
    evaluate_system,
    finetune_arguments,
)

from amo.benchmarking import ceilings, fit_classifier
from amo.router import ListwiseRouter

BASE = {"scorer": "bilinear", "proj_dim": 384, "hidden": 64, "dropout": 0.1, "epochs": 20, "lr": 2e-3,
        "weight_decay": 1e-4, "batch_size": 128, "oos_weight": 1.0}
SETTINGS = {  # name -> changes to BASE (router_clinc150.py's bilinear:384 run)
    "bilinear:384": {},
    "weight_decay_0.05": {"weight_decay": 0.05},
    "lr_5e-4_30_epochs": {"lr": 5e-4, "epochs": 30},
    "oos_weight_5": {"oos_weight": 5.0},
    "batch_512_40_epochs": {"batch_size": 512, "epochs": 40},
    "mlp:128": {"scorer": "mlp", "proj_dim": 128, "hidden": 256},
}


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = finetune_arguments(common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                                                 "clinc150", "router_clinc150_heads.json", epochs=20,
                                                 batch_size=128))
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names from SETTINGS")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def summary(val_scores, test_scores, splits, agents) -> dict[str, float]:
    tuned = evaluate_system(val_scores, test_scores, splits, agents)
    return {**{k: round(v, 4) for k, v in ceilings(test_scores, splits["test"], agents).items()},
            "tuned_in_scope_accuracy": round(tuned["in_scope_accuracy"], 4),
            "tuned_oos_recall": round(tuned["oos_recall"], 4)}


def main(argv: list[str] | None = None) -> dict:
    args = arguments(argv)
    torch.set_num_threads(args.threads)
    agents, splits, agent_x, x, grades, tuning = embedded_clinc150(args)
    ids = [a.id for a in agents]

    classify = fit_classifier(x["train"], splits["train"], ids, c=args.classifier_c, seed=args.seed)
    systems = {"classifier": summary(classify(x["val"]), classify(x["test"]), splits, agents)}
    print("classifier", systems["classifier"], flush=True)
    for name in args.settings.split(","):
        settings = {**BASE, **SETTINGS[name]}
        start = time.perf_counter()
        router = ListwiseRouter(seed=args.seed, **settings).fit(x["train"], grades["train"], agent_x,
                                                                val=(x["val"], grades["val"]))
        systems[f"amo {name}"] = {**summary(router.score(x["val"], agent_x), router.score(x["test"], agent_x),
                                            splits, agents),
                                  "best_epoch": min(router.history_, key=lambda r: r["val_loss"])["epoch"],
                                  "train_seconds": round(time.perf_counter() - start, 1), "settings": settings}
        print(f"amo {name}", systems[f"amo {name}"], flush=True)

    result = {
        "command": "python " + shlex.join(["benchmarks/router_clinc150_heads.py", *(argv or sys.argv[1:])]),
        "encoder": encoder_label(tuning),
        "encoder_finetune": tuning,
        "ceilings": CEILINGS_HOW,
        "systems": systems,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
