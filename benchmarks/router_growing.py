"""Growing agents on CLINC150: train without one domain's 15 intents, then add them as agents
without retraining; F1 on the new agents and on the old ones, for every held-out domain in turn.

    python benchmarks/router_growing.py --source ../shared/datasets/clinc150

For each domain: amo's router is trained on the train split minus that domain's prompts, with
only the other 135 agents as candidates (val likewise, for early stopping and the margin); the
logistic-regression classifier is trained on the same prompts (it cannot name an agent it never
saw, so its new-agent F1 is 0); the cosine router needs no training. At test time all 150 agents
are candidates (the new ones only embedded: the cheap index step) and the whole test split is
routed, out-of-scope prompts included. new_f1 / old_f1: macro F1 over the held-out / the other
intents. Thresholds are tuned on the reduced val split with the rule of router_clinc150.py.
Writes benchmarks/results/router_growing.json and router_growing_plot.csv (a DVC plot).

    python benchmarks/router_growing.py --source ../shared/datasets/clinc150 --finetune-encoder \
        --ft-loss listwise --ft-epochs 1 --ft-lr 5e-5 --domains banking,meta

first fine-tunes the encoder for each fold on that fold's training prompts and its 135 old agents
(the new agents' prompts and descriptions stay unseen, as in production, where an agent is added
after the encoder was tuned); writes router_growing_finetuned.json and its plot CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from router_clinc150 import (
    RESULTS,
    common_arguments,
    embed,
    finetune_arguments,
    finetuned_out,
    routing_data,
    tuned_encoder,
)

from amo.benchmarking import (
    cosine_scores,
    fit_classifier,
    gold_label,
    macro_f1,
    route_all,
    top_label,
    tune_margin,
)
from amo.data import RoutingExample
from amo.models import Encoder, resolve_encoder
from amo.router import ListwiseRouter
from amo.routing import grade_matrix


def held_out(agents: list, splits: dict, domain: str) -> tuple[set[str], list[int], list[int], list[int]]:
    """One fold: the held-out domain's agent ids, the other agents' columns, and the train and
    val rows that label none of the held-out agents."""
    new = {a.id for a in agents if a.domain == domain}

    def keep(name: str) -> list[int]:
        return [i for i, e in enumerate(splits[name]) if not set(e.labels) & new]

    return new, [i for i, a in enumerate(agents) if a.id not in new], keep("train"), keep("val")


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = finetune_arguments(common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                                                 "clinc150", "router_growing.json", epochs=8, batch_size=128))
    parser.add_argument("--plot", type=Path, default=RESULTS / "router_growing_plot.csv")
    parser.add_argument("--domains", default="", help="comma-separated subset; default: all ten")
    parser.add_argument("--scorer", default="mlp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="folds run in parallel processes")
    return finetuned_out(parser.parse_args(argv), argv, "router_growing_finetuned.json",
                         plot="router_growing_finetuned_plot.csv")


def f1s(scores: np.ndarray, margin: float, test: list[RoutingExample], ids: list[str],
        new: set[str], margins: np.ndarray | None = None) -> dict[str, float]:
    """New- and old-agent macro F1 at `margin` (or per-agent `margins`, reported as `margin`)."""
    predicted = [top_label(r) for r in route_all(scores, ids, margin if margins is None else margins)]
    gold = [gold_label(e) for e in test]
    return {"new_f1": round(macro_f1(predicted, gold, [i for i in ids if i in new]), 4),
            "old_f1": round(macro_f1(predicted, gold, [i for i in ids if i not in new]), 4),
            "margin": round(margin, 4)}


_SHARED: dict = {}  # set in main before the worker processes fork


def run_fold(domain: str) -> dict:
    """Train without `domain`'s intents, add them back as agents, and score every system."""
    args, agents, splits, agent_x, x = (_SHARED[k] for k in ("args", "agents", "splits", "agent_x", "x"))
    torch.set_num_threads(args.threads)
    ids = [a.id for a in agents]
    start = time.perf_counter()
    new, old_columns, train_rows, val_rows = held_out(agents, splits, domain)
    old_agents = [agents[i] for i in old_columns]
    old_ids = [a.id for a in old_agents]
    train = [splits["train"][i] for i in train_rows]
    val = [splits["val"][i] for i in val_rows]
    fold: dict = {"held_out_domain": domain, "new_agents": sorted(new)}
    if args.finetune_encoder:  # tuned on this fold's training prompts and old agents only
        path, tuning = tuned_encoder(args, old_agents, train)
        agent_x, x = embed(Encoder(path), agents, splits, args.cache)
        fold["encoder_finetune"] = {"path": str(path), "seconds": tuning["seconds"]}
    router = ListwiseRouter(hidden=args.hidden, dropout=args.dropout, epochs=args.epochs, lr=args.lr,
                            weight_decay=args.weight_decay, batch_size=args.batch_size,
                            seed=args.seed, proj_dim=args.proj_dim, scorer=args.scorer)
    router.fit(x["train"][train_rows], grade_matrix(train, old_ids), agent_x[old_columns],
               val=(x["val"][val_rows], grade_matrix(val, old_ids)))
    classify = fit_classifier(x["train"][train_rows], train, ids, c=args.classifier_c, seed=args.seed)

    systems = {
        "amo": (router.score(x["val"][val_rows], agent_x[old_columns]), router.score(x["test"], agent_x)),
        "cosine": (cosine_scores(x["val"][val_rows], agent_x[old_columns]), cosine_scores(x["test"], agent_x)),
        "classifier": (classify(x["val"][val_rows])[:, [*old_columns, len(ids)]], classify(x["test"])),
    }
    for name, (val_scores, test_scores) in systems.items():
        margin = tune_margin(val_scores, val, old_agents)
        fold[name] = f1s(test_scores, margin, splits["test"], ids, new)
    fold["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(fold), flush=True)
    return fold


def main(argv: list[str] | None = None) -> dict:
    args = arguments(argv)
    torch.set_num_threads(args.threads)
    agents, splits = routing_data("clinc150", args.source)
    agent_x, x = embed(Encoder(resolve_encoder(args.encoder)), agents, splits, args.cache)
    domains = args.domains.split(",") if args.domains else list(dict.fromkeys(a.domain for a in agents))
    _SHARED.update(args=args, agents=agents, splits=splits, agent_x=agent_x, x=x)
    if args.workers > 1:  # folds are independent: one single-threaded process each
        with multiprocessing.get_context("fork").Pool(args.workers) as pool:
            folds = pool.map(run_fold, domains, chunksize=1)
    else:
        folds = [run_fold(domain) for domain in domains]

    def mean(system: str, key: str) -> float:
        return round(float(np.mean([f[system][key] for f in folds])), 4)

    summary = {name: {"new_f1": mean(name, "new_f1"), "old_f1": mean(name, "old_f1")}
               for name in ("amo", "cosine", "classifier")}
    for values in summary.values():
        values["new_over_old"] = round(values["new_f1"] / values["old_f1"], 4) if values["old_f1"] else 0.0
    result = {
        "command": "python " + shlex.join(["benchmarks/router_growing.py", *(argv or sys.argv[1:])]),
        "encoder": ("all-MiniLM-L6-v2 fine-tuned per fold on that fold's train prompts and its 135 old agents "
                    f"({args.ft_loss}), the same tuned encoder for every system of the fold"
                    if args.finetune_encoder else "all-MiniLM-L6-v2 (frozen)"),
        "threads": args.threads,
        "workers": args.workers,
        "settings": {k: v for k, v in vars(args).items() if k not in ("source", "cache", "out", "plot")},
        "target": "new-agent F1 >= 0.8 x trained-agent F1",
        "mean": summary,
        "folds": folds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    with open(args.plot, "w", newline="") as handle:  # long format: one bar per domain and system
        writer = csv.writer(handle)
        writer.writerow(["fold", "held_out_domain", "system", "new_f1", "old_f1"])
        for f in folds:
            for system in ("amo", "cosine", "classifier"):
                writer.writerow([f"{f['held_out_domain']} / {system}", f["held_out_domain"], system,
                                 f[system]["new_f1"], f[system]["old_f1"]])
    print(json.dumps(summary, indent=2))
    return result


if __name__ == "__main__":
    main()
