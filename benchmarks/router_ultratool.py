"""UltraTool: selection-set F1 on multi-label routing (a question's tools are all relevant), amo's
router vs a zero-shot cosine router vs a one-vs-rest logistic-regression classifier.

    python benchmarks/router_ultratool.py --source ../shared/datasets/ultratool

The 436 tools are the candidates; the importer's seeded split by question gives train/val/test.
Every system selects the tools scoring above its threshold (amo: its separator plus a margin;
cosine: a similarity; classifier: a per-tool probability), best first, at most --max-k; the
threshold is tuned on val for selection-set F1. Writes benchmarks/results/router_ultratool.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import torch
from router_clinc150 import common_arguments, embed, routing_data

from amo.benchmarking import compare_multilabel
from amo.models import Encoder, resolve_encoder
from amo.router import ListwiseRouter
from amo.routing import grade_matrix

KEYS = ("selection_f1", "ndcg_at_5", "in_scope_accuracy", "domain_accuracy")


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                              "ultratool", "router_ultratool.json", epochs=20, batch_size=32)
    parser.add_argument("--scorer", default="mlp")
    parser.add_argument("--max-k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=13, help="the importer's split seed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = arguments(argv)
    torch.set_num_threads(args.threads)
    agents, splits = routing_data("ultratool", args.source, args.seed)
    ids = [a.id for a in agents]
    agent_x, x = embed(Encoder(resolve_encoder(args.encoder)), agents, splits, args.cache)

    start = time.perf_counter()
    router = ListwiseRouter(hidden=args.hidden, dropout=args.dropout, epochs=args.epochs, lr=args.lr,
                            weight_decay=args.weight_decay, batch_size=args.batch_size, seed=0,
                            proj_dim=args.proj_dim, scorer=args.scorer)
    router.fit(x["train"], grade_matrix(splits["train"], ids), agent_x,
               val=(x["val"], grade_matrix(splits["val"], ids)))
    train_seconds = time.perf_counter() - start
    systems = {}
    for name, (_, metrics) in compare_multilabel(router, x, splits, agents, agent_x,
                                                           args.classifier_c, args.max_k).items():
        systems[name] = {k: round(metrics[k], 4) for k in (*KEYS, "margin")}
        print(f"{name:11s} " + "  ".join(f"{k}={systems[name][k]:.3f}" for k in KEYS), flush=True)
    seen = {agent for e in splits["train"] for agent in e.labels}
    result = {
        "command": "python " + shlex.join(["benchmarks/router_ultratool.py", *(argv or sys.argv[1:])]),
        "dataset": (f"UltraTool English test.jsonl via amo.importers.ultratool (seed {args.seed}): "
                    + ", ".join(f"{k} {len(v)}" for k, v in splits.items()) + f"; {len(ids)} tools, "
                    f"{len(seen)} of them relevant somewhere in train"),
        "test_prompts_with_a_tool_unseen_in_train": sum(bool(set(e.labels) - seen) for e in splits["test"]),
        "threshold_tuning": "on val, maximising selection-set F1, same rule for all; at most max_k tools",
        "metrics_note": "in_scope_accuracy = the top selected tool is relevant (graded top); "
                        "domain_accuracy = its domain matches",
        "encoder": "all-MiniLM-L6-v2 (frozen)",
        "threads": args.threads,
        "amo_train_seconds": round(train_seconds, 1),
        "settings": {k: v for k, v in vars(args).items() if k not in ("source", "cache", "out")},
        "systems": systems,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
