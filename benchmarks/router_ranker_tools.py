"""Multi-label tool routing: amo's pipeline router (amo.ranker.AgentRanker) vs a zero-shot cosine
router vs a one-vs-rest logistic-regression classifier, on UltraTool (436 tools) or Seal-Tools
(4,076 tools, most test tools unseen in training).

    python benchmarks/router_ranker_tools.py --dataset ultratool --source ../shared/datasets/ultratool
    python benchmarks/router_ranker_tools.py --dataset seal_tools --source ../shared/datasets/seal_tools --batch 64

The router is the pipeline's: `AgentRanker.from_params(load_params("params.yaml").router)` with
params.yaml's settings untouched, fitted as stage train_router fits it (index = the tools'
description embeddings, grades from `grade_matrix`, val for early stopping) and served with every
training prompt as an example of each tool it names (`index.with_examples(train, ...)`). Data,
embedding cache, baselines and threshold rule are those of benchmarks/router_ultratool.py and
router_seal_tools.py (amo.benchmarking.compare_multilabel): every system selects the tools scoring
above its threshold, best first, at most --max-k, the threshold tuned on val for selection-set F1.
`amo_pipeline_margin` is the same ranker with the pipeline's own rule instead (`choose_margin` on
val at params.yaml's target OOS recall; 0, the separator alone, when val has no out-of-scope
prompt, as in train_router). --batch sets how many prompts route_features scores at once
((batch, tools, 13) float32 features). Writes benchmarks/results/router_ranker_<dataset>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from router_clinc150 import RESULTS, embed, routing_data
from router_seal_tools import recall_at_5

from amo.benchmarking import compare_multilabel, routing_metrics
from amo.config import load_params
from amo.data import RoutingExample
from amo.models import Encoder, resolve_encoder
from amo.ranker import AgentRanker
from amo.routing import AgentIndex, choose_margin, grade_matrix

KEYS = ("selection_f1", "recall_at_5", "ndcg_at_5", "in_scope_accuracy")


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("ultratool", "seal_tools"), required=True)
    parser.add_argument("--source", type=Path, help="default ../shared/datasets/<dataset>")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/.cache"))
    parser.add_argument("--out", type=Path, help="default benchmarks/results/router_ranker_<dataset>.json")
    parser.add_argument("--classifier-c", type=float, default=10.0, help="the baseline classifier's C")
    parser.add_argument("--max-k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=13, help="the importer's split seed")
    parser.add_argument("--batch", type=int, default=512, help="prompts per route_features call when serving")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    args.source = args.source or Path(f"../shared/datasets/{args.dataset}")
    args.out = args.out or RESULTS / f"router_ranker_{args.dataset}.json"
    return args


class ServedRanker:
    """The fitted ranker over its serving index, with the `score(prompts, agent_x)` of the
    routers compare_multilabel takes (the description embeddings are already in the index)."""

    def __init__(self, ranker: AgentRanker, index: AgentIndex, batch: int) -> None:
        self.ranker, self.index, self.batch = ranker, index, batch

    def score(self, prompts: np.ndarray, agent_x: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        scores = self.ranker.score(prompts, self.index, batch=self.batch)
        print(f"ranker scored {len(prompts)} prompts over {len(self.index.agents)} tools "
              f"in {time.perf_counter() - start:.1f} s", flush=True)
        return scores


def recall_by_history(scores: np.ndarray, examples: list[RoutingExample], ids: list[str],
                      seen: set[str]) -> dict[str, float]:
    """recall@5 counting only the relevant tools seen in training, or only the unseen ones
    (each over the prompts that have such a tool): which regime a system's recall comes from."""
    out = {}
    for name, keep in (("seen", True), ("unseen", False)):
        rows = [(i, RoutingExample(e.prompt, {a: g for a, g in e.labels.items() if (a in seen) == keep}))
                for i, e in enumerate(examples)]
        rows = [(i, e) for i, e in rows if e.labels]
        out[f"recall_at_5_tools_{name}_in_train"] = (
            recall_at_5(scores[[i for i, _ in rows]], [e for _, e in rows], ids) if rows else 0.0)
    return out


def main(argv: list[str] | None = None) -> dict:
    args = arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # the ranker's fold / epoch lines
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    params = load_params(args.params)
    p = params.router
    agents, splits = routing_data(args.dataset, args.source, args.seed)
    ids = [a.id for a in agents]
    agent_x, x = embed(Encoder(resolve_encoder(params.encoder.path)), agents, splits, args.cache)
    grades = {name: grade_matrix(rows, ids) for name, rows in splits.items()}
    print(f"{args.dataset}: {len(ids)} tools, " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()), flush=True)

    fit_start = time.perf_counter()
    index = AgentIndex(agents, agent_x)
    ranker = AgentRanker.from_params(p).fit(index, x["train"], grades["train"], val=(x["val"], grades["val"]))
    fit_seconds = time.perf_counter() - fit_start
    served = ServedRanker(ranker, index.with_examples(splits["train"], embeddings=x["train"]), args.batch)

    compared = compare_multilabel(served, x, splits, agents, agent_x, args.classifier_c, args.max_k)
    out_of_scope = grades["val"][:, :-1].max(1) == 0
    margin = choose_margin(served.score(x["val"], agent_x), out_of_scope, p.target_oos_recall)
    chosen = 0.0 if margin is None else margin
    amo_test = compared["amo"][0]
    compared = {"amo": compared["amo"],
                "amo_pipeline_margin": (amo_test, routing_metrics(amo_test, splits["test"], agents, chosen,
                                                                  args.max_k)),
                "cosine": compared["cosine"], "classifier": compared["classifier"]}
    seen = {agent for e in splits["train"] for agent in e.labels}
    systems = {}
    for name, (test_scores, metrics) in compared.items():
        by_history = recall_by_history(test_scores, splits["test"], ids, seen)
        systems[name] = {"recall_at_5": round(recall_at_5(test_scores, splits["test"], ids), 4),
                         **{k: round(v, 4) for k, v in by_history.items()},
                         **{k: round(float(metrics[k]), 4)
                            for k in ("selection_f1", "ndcg_at_5", "in_scope_accuracy", "domain_accuracy", "margin")}}
        print(f"{name:20s} " + "  ".join(f"{k}={systems[name][k]:.4f}" for k in (*KEYS, *by_history, "margin")),
              flush=True)

    test_calls = [agent for e in splits["test"] for agent in e.labels]
    best = min(ranker.history_, key=lambda r: r.get("val_loss", r["train_loss"]))
    result = {
        "command": "python " + shlex.join(["benchmarks/router_ranker_tools.py",
                                           *(sys.argv[1:] if argv is None else argv)]),
        "dataset": (f"{args.dataset} via amo.importers.{args.dataset} (seed {args.seed}): "
                    + ", ".join(f"{k} {len(v)}" for k, v in splits.items()) + f"; {len(ids)} tools, "
                    f"{len(seen)} of them relevant somewhere in train"),
        "test_prompts_with_a_tool_unseen_in_train": sum(bool(set(e.labels) - seen) for e in splits["test"]),
        "test_relevant_tools_seen_in_train": f"{sum(a in seen for a in test_calls)} of {len(test_calls)}",
        "encoder": "all-MiniLM-L6-v2 (frozen), the same embeddings for every system",
        "router": "amo.ranker.AgentRanker.from_params(load_params('params.yaml').router), params untouched",
        "router_params": p.model_dump(),
        "serving_index": "descriptions of all tools + every training prompt as an example of each tool it names",
        "threshold_tuning": {
            "amo, cosine, classifier": f"on val, the highest selection-set F1, at most {args.max_k} tools "
                                       "(amo.benchmarking.compare_multilabel, router_ultratool.py's rule)",
            "amo_pipeline_margin": f"choose_margin on val at target OOS recall {p.target_oos_recall} (the "
                                   "pipeline's rule; 0 when val has no out-of-scope prompt), at most "
                                   f"{args.max_k} tools",
        },
        "metrics_note": "in_scope_accuracy = the top selected tool is relevant (amo.metrics.router_metrics: any "
                        "top-graded tool is a hit); recall_at_5 = share of a prompt's relevant tools among the "
                        "5 best-scoring (router_seal_tools.recall_at_5); recall_at_5_tools_(un)seen_in_train "
                        "counts only the relevant tools (not) relevant anywhere in train, over the prompts having one",
        "threads": args.threads,
        "systems": systems,
        "amo_training": {"fit_seconds": round(fit_seconds, 1), "epochs_run": len(ranker.history_),
                         "best_epoch": best["epoch"], "best_val_loss": best.get("val_loss"),
                         "history": ranker.history_, "pipeline_margin": round(chosen, 4)},
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['seconds']} s; ranker fit {fit_seconds:.0f} s, "
          f"{len(ranker.history_)} epochs, best {best['epoch']})", flush=True)
    return result


if __name__ == "__main__":
    main()
