"""The planner on real tool-use traces, side by side with three baselines.

    python benchmarks/planner.py --dataset ultratool
    python benchmarks/planner.py --dataset seal_tools

The importer (`amo.importers.<dataset>`, seed 13) gives the agents, the routing splits and the
trace splits (split by prompt, so no prompt is on both sides). A ListwiseRouter is trained on the
routing train split (validation split for early stopping) with the real encoder, then on the
held-out traces four systems plan a path:

- amo: the TreePlanner fitted on the training traces and the router's scores for them (out of
  fold by default, `--router-folds 2`: two more routers, each fitted without half of the routing
  train split, score the training prompts the way the router scores unseen ones; a planner that
  stacks on the router must not learn from scores the router gives its own training prompts);
- router_order: the agents above the separator in score order (at least one when no training
  trace abstains, at most max_path_len);
- nearest_neighbour: the path of the most similar training prompt (cosine of embeddings);
- most_frequent: the most frequent training path.

Metrics: node F1 (agents as a set), link F1 (consecutive pairs), exact path, overall and by gold
path length (1, 2, 3, 4+), and plan latency p50 in ms per plan with the features given (the
prompt's embedding and router scores are computed beforehand: the encoder and router are NOT
included), one thread, on a machine shared with other jobs. Embeddings and routers are cached in
benchmarks/.cache/. Writes benchmarks/results/planner_<dataset>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from inspect import signature
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
RESULTS = ROOT / "benchmarks" / "results"
BUCKETS = ("1", "2", "3", "4+")


def digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, ensure_ascii=False).encode() + b"\x00")
    return h.hexdigest()[:20]


def cached_encode(encoder: Any, texts: list[str]) -> np.ndarray:
    """Embeddings of `texts`, cached in benchmarks/.cache keyed by the encoder and the texts."""
    path = CACHE / "embeddings" / f"{digest(str(encoder.path), texts)}.npy"
    if path.is_file():
        return np.load(path)
    vectors = encoder.encode(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def cached_router(settings: dict[str, Any], x: np.ndarray, grades: np.ndarray, agents: np.ndarray,
                  val: tuple[np.ndarray, np.ndarray] | None) -> tuple[Any, float]:
    """A fitted ListwiseRouter (from the cache when the same settings and data were fitted before)
    and the seconds its fit took."""
    from amo.router import ListwiseRouter

    key = digest(settings, hashlib.sha256(x.tobytes() + grades.tobytes() + agents.tobytes()).hexdigest(),
                 None if val is None else hashlib.sha256(val[0].tobytes() + val[1].tobytes()).hexdigest())
    directory = CACHE / "routers" / key
    if (directory / "fit.json").is_file():
        return ListwiseRouter.load(directory), json.loads((directory / "fit.json").read_text())["seconds"]
    start = time.perf_counter()
    router = ListwiseRouter(**settings).fit(x, grades, agents, val=val)
    seconds = time.perf_counter() - start
    router.save(directory)
    (directory / "fit.json").write_text(json.dumps({"seconds": seconds, "settings": settings}) + "\n")
    return router, seconds


def cross_fitted_scores(args: argparse.Namespace, routing_train: list[dict], prompts: list[str],
                        embeddings: np.ndarray, scores: np.ndarray, settings: dict[str, Any], agent_emb: np.ndarray,
                        train: tuple[np.ndarray, np.ndarray], batch: int) -> np.ndarray:
    """Router scores for the planner's training prompts as the router gives them to prompts it
    has not seen: a training prompt that is in the router's training split is scored by a router
    fitted without its fold (the others, from the val split, keep the full router's scores)."""
    from amo.importers import stable_fraction

    fold_of = {r["prompt"]: int(stable_fraction(r["prompt"], args.seed) * args.router_folds) for r in routing_train}
    rows = np.array([fold_of[r["prompt"]] for r in routing_train])
    out = scores.copy()
    for fold in range(args.router_folds):
        keep = rows != fold
        router, _ = cached_router(settings, train[0][keep], train[1][keep], agent_emb, val=None)
        mine = [i for i, p in enumerate(prompts) if fold_of.get(p) == fold]
        if mine:
            out[mine] = router.score(embeddings[mine], agent_emb, batch)
    return out


def bucket(path: Sequence[str]) -> str:
    return str(len(path)) if len(path) < 4 else "4+"


def path_metrics(predicted: list[list[str]], gold: list[list[str]]) -> dict[str, float]:
    from amo.metrics import planner_metrics as evaluate_planner

    m = evaluate_planner(predicted, [tuple(g) for g in gold])
    return {"node_f1": round(m["node_f1"], 4), "link_f1": round(m["link_f1"], 4),
            "exact_path": round(m["exact_path"], 4), "n": len(gold)}


def timed(plan: Callable[[int], list[str]], n: int) -> tuple[list[list[str]], float]:
    """Every test item's plan, and the median milliseconds per plan."""
    paths, times = [], []
    for i in range(n):
        start = time.perf_counter_ns()
        paths.append(list(plan(i)))
        times.append(time.perf_counter_ns() - start)
    return paths, float(np.median(times)) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["ultratool", "seal_tools"], required=True)
    parser.add_argument("--source", type=Path,
                        help="default: shared/datasets/<dataset> in the nearest parent folder that has it")
    parser.add_argument("--seed", type=int, default=13, help="importer split seed")
    parser.add_argument("--router-epochs", type=int, default=10, help="fewer than params.yaml: a shared 2-core machine")
    parser.add_argument("--router-max-candidates", type=int, default=128,
                        help="agents per training batch: the relevant ones plus sampled negatives")
    parser.add_argument("--val-max-agents", type=int, default=1000,
                        help="early stopping on the val split only for catalogues up to this size")
    parser.add_argument("--score-pairs", type=int, default=16384, help="prompt-agent pairs per scoring batch")
    parser.add_argument("--router-folds", type=int, default=2,
                        help="k > 1: the planner's training prompts get out-of-fold router scores; "
                             "0: in-sample scores")
    parser.add_argument("--max-path-len", type=int, default=6)
    parser.add_argument("--pca-dims", type=int, default=None, help="default: params.yaml planner.pca_dims")
    parser.add_argument("--candidates", type=int, default=None, help="default: params.yaml planner.candidates")
    parser.add_argument("--neighbours", type=int, nargs="+", default=[0, 10],
                        help="planner.neighbours options; the best option in cross-validation on the "
                             "training traces is used")
    parser.add_argument("--max-depth", type=int, nargs="+", default=[6, 12], help="stop tree depth options")
    parser.add_argument("--next-min-samples-leaf", type=int, nargs="+", default=[10, 30],
                        help="next tree leaf size options")
    parser.add_argument("--min-next", type=float, nargs="+", default=[0.05, 0.25],
                        help="options for the lowest P(next) that continues a plan")
    parser.add_argument("--inner-folds", type=int, default=5,
                        help="cross-validation folds of the training traces that choose the options")
    parser.add_argument("--rerank-neighbours", type=int, nargs="+", default=[0, 5],
                        help="planner.rerank_neighbours options (0: the decoded path is the plan); on a tie "
                             "the first option wins")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)

    from amo.config import load_params
    from amo.data import RoutingExample
    from amo.importers import load, stable_fraction
    from amo.models import Encoder, resolve_encoder
    from amo.planner import TreePlanner
    from amo.router import ListwiseRouter
    from amo.routing import grade_matrix, select

    params = load_params(ROOT / "params.yaml")
    source = args.source or next((d / "shared" / "datasets" / args.dataset for d in ROOT.parents
                                  if (d / "shared" / "datasets" / args.dataset).is_dir()),
                                 Path("../shared/datasets") / args.dataset)
    data = load(args.dataset, source, args.seed)
    ids = [a["id"] for a in data.agents]
    encoder = Encoder(resolve_encoder(params.encoder.path), params.encoder.batch_size)
    agent_emb = cached_encode(encoder, [a["description"] for a in data.agents])

    def routing(split: str) -> tuple[np.ndarray, np.ndarray]:
        examples = [RoutingExample(r["prompt"], dict(r["labels"])) for r in data.routing[split]]
        return cached_encode(encoder, [e.prompt for e in examples]), grade_matrix(examples, ids)

    accepted = signature(ListwiseRouter).parameters
    settings = {k: v for k, v in params.router.model_dump().items() if k in accepted}
    settings["max_candidates"] = args.router_max_candidates
    if args.router_epochs is not None:
        settings["epochs"] = args.router_epochs
    # The router's validation loss scores every val prompt against every agent at once: for a
    # catalogue of thousands that is gigabytes, so large catalogues train for the fixed epochs.
    val = routing("val") if len(ids) <= args.val_max_agents else None
    router, router_seconds = cached_router(settings, *routing("train"), agent_emb, val=val)
    batch = max(1, args.score_pairs // len(ids))  # bounds the (batch, agents, 4D) feature tensor

    train, test = data.traces["train"], data.traces["test"]
    train_prompts, test_prompts = [t["prompt"] for t in train], [t["prompt"] for t in test]
    train_paths, test_paths = [list(t["path"]) for t in train], [list(t["path"]) for t in test]
    e_train, e_test = cached_encode(encoder, train_prompts), cached_encode(encoder, test_prompts)
    s_train, s_test = router.score(e_train, agent_emb, batch), router.score(e_test, agent_emb, batch)
    if args.router_folds > 1:
        s_train = cross_fitted_scores(args, data.routing["train"], train_prompts, e_train, s_train, settings,
                                      agent_emb, routing("train"), batch)

    p = params.planner

    def make(option: dict[str, int]) -> TreePlanner:
        return TreePlanner(pca_dims=p.pca_dims if args.pca_dims is None else args.pca_dims,
                           min_samples_leaf=p.min_samples_leaf, next_max_depth=p.next_max_depth,
                           max_path_len=args.max_path_len, seed=p.seed,
                           candidates=p.candidates if args.candidates is None else args.candidates,
                           folds=p.folds, rerank_max_depth=p.rerank_max_depth,
                           rerank_min_samples_leaf=p.rerank_min_samples_leaf, **option)

    # Model selection on the training traces only: cross-validation (folds by prompt hash) picks whether
    # the nearest training prompts' paths vote (they help where prompts recur, not elsewhere),
    # whether their whole paths compete with the decoded one, and how large the trees grow.
    # A tie keeps the earlier (simpler: no reranking) option.
    options = [{"rerank_neighbours": r, "neighbours": n, "max_depth": d, "next_min_samples_leaf": m, "min_next": t}
               for r in args.rerank_neighbours for n in args.neighbours for d in args.max_depth
               for m in args.next_min_samples_leaf for t in args.min_next]
    # Every training trace is validated once, by a planner fitted on the other inner folds.
    inner = np.array([int(stable_fraction(q, args.seed + 1) * args.inner_folds) for q in train_prompts])
    selection = []
    for option in options:
        predicted: list[list[str]] = [[] for _ in train_paths]
        for fold in range(args.inner_folds):
            fit_rows, val_rows = np.flatnonzero(inner != fold), np.flatnonzero(inner == fold)
            candidate = make(option).fit([train_prompts[i] for i in fit_rows], e_train[fit_rows],
                                         s_train[fit_rows, :-1], s_train[fit_rows, -1].tolist(),
                                         [train_paths[i] for i in fit_rows], ids)
            for i in val_rows:
                predicted[i] = candidate.plan_scores(train_prompts[i], e_train[i], ids, s_train[i], explain=False).path
        selection.append({**option, **path_metrics(predicted, train_paths)})
    unit = e_train / np.linalg.norm(e_train, axis=1, keepdims=True)
    similar = unit @ unit.T
    similar[inner[:, None] == inner[None, :]] = -np.inf  # neighbours from the other folds only
    neighbour_cv = path_metrics([train_paths[int(j)] for j in similar.argmax(axis=1)], train_paths)
    best = max(selection, key=lambda r: (r["exact_path"], r["link_f1"]))
    chosen = {k: best[k] for k in options[0]}
    planner = make(chosen)
    start = time.perf_counter()
    planner.fit(train_prompts, e_train, s_train[:, :-1], s_train[:, -1].tolist(), train_paths, ids)
    fit_seconds = time.perf_counter() - start

    min_k = 0 if any(not path for path in train_paths) else 1
    counts = Counter(tuple(path) for path in train_paths)
    frequent = list(max(counts, key=lambda k: (counts[k], k)))
    unit_train = e_train / np.linalg.norm(e_train, axis=1, keepdims=True)
    systems: dict[str, Callable[[int], list[str]]] = {
        "amo": lambda i: planner.plan_scores(test_prompts[i], e_test[i], ids, s_test[i], explain=False).path,
        "router_order": lambda i: [a for a, _ in select(s_test[i], ids, min_k=min_k, max_k=args.max_path_len).agents],
        "nearest_neighbour":
            lambda i: train_paths[int(np.argmax(unit_train @ (e_test[i] / np.linalg.norm(e_test[i]))))],
        "most_frequent": lambda i: frequent,
    }
    results: dict[str, Any] = {}
    for name, plan in systems.items():
        predicted, p50 = timed(plan, len(test))
        by_length = {}
        for b in BUCKETS:
            rows = [i for i, g in enumerate(test_paths) if bucket(g) == b]
            by_length[b] = path_metrics([predicted[i] for i in rows], [test_paths[i] for i in rows]) if rows else None
        results[name] = {**path_metrics(predicted, test_paths), "p50_ms": round(p50, 4), "by_length": by_length}
        if name == "amo":
            amo_paths = predicted
    _, p50_explained = timed(lambda i: planner.plan_scores(test_prompts[i], e_test[i], ids, s_test[i]).path, len(test))

    seen_paths = set(counts)
    seen_agents = {a for path in train_paths for a in path}
    novel = [i for i, g in enumerate(test_paths) if tuple(g) not in seen_paths]
    new_agent = [i for i, g in enumerate(test_paths) if set(g) - seen_agents]
    out = {
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "dataset": args.dataset, "n_train": len(train), "n_test": len(test), "n_agents": len(ids),
        "split": f"importer split by prompt hash, seed {args.seed}; traces train = routing train + val",
        "systems": results,
        "test_paths_unseen_in_training": {
            "n": len(novel), "amo_exact_path": round(float(np.mean([amo_paths[i] == test_paths[i] for i in novel])), 4)
            if novel else None,
            "amo_predicted_unseen_path": sum(tuple(p) not in seen_paths for p in amo_paths)},
        "test_paths_with_agent_unseen_in_training": {
            "n": len(new_agent), "amo_node_f1": path_metrics([amo_paths[i] for i in new_agent],
                                                             [test_paths[i] for i in new_agent])["node_f1"]
            if new_agent else None},
        "latency": {"what": "ms per plan, features given (embedding + router scores); encoder and router excluded",
                    "threads": 1, "machine": "2 cores, shared with other jobs",
                    "amo_p50_ms_with_rules": round(p50_explained, 4)},
        "router": {"settings": settings, "fit_seconds": round(router_seconds, 1),
                   "early_stopping_on_val": val is not None,
                   "routing_train": len(data.routing["train"]), "routing_val": len(data.routing["val"])},
        "planner": {"params": planner.to_dict()["params"], "fit_seconds": round(fit_seconds, 2),
                    "selection": {"inner_validation": f"{args.inner_folds}-fold cross-validation on the "
                                             f"{len(train)} training traces (folds by prompt hash, seed "
                                             f"{args.seed + 1}); each option is scored on every training trace",
                                             "by_option": selection, "chosen": chosen,
                                             "nearest_neighbour_same_folds": neighbour_cv},
                    "stop_tree_nodes": len(planner.stop_tree_["left"]),
                    "next_tree_nodes": len(planner.next_tree_["left"]),
                    "rerank_tree_nodes": len(planner.rerank_tree_["left"]) if planner.rerank_tree_ else 0},
        "router_order_min_k": min_k,
        "planner_training_scores": f"out-of-fold, {args.router_folds} router folds" if args.router_folds > 1
        else "in-sample: most training prompts are in the router's own training split",
    }
    path = args.out or RESULTS / f"planner_{args.dataset}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"{args.dataset}: n_train={len(train)} n_test={len(test)} agents={len(ids)}")
    print(f"{'system':<18} {'node_f1':>8} {'link_f1':>8} {'exact':>8} {'p50_ms':>8}   exact by length 1/2/3/4+")
    for name, r in results.items():
        lengths = " / ".join("-" if r["by_length"][b] is None else f"{r['by_length'][b]['exact_path']:.2f}"
                             for b in BUCKETS)
        print(f"{name:<18} {r['node_f1']:>8.3f} {r['link_f1']:>8.3f} {r['exact_path']:>8.3f} "
              f"{r['p50_ms']:>8.3f}   {lengths}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
