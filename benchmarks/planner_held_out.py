"""Agents held out of the planner's traces (issue 13): does the planner plan them when it follows
the router, and at what cost elsewhere?

    python benchmarks/planner_held_out.py --dataset ultratool
    python benchmarks/planner_held_out.py --dataset seal_tools --min-traces 1 --held-out 30

The importer (`amo.importers.<dataset>`, seed 13) gives the agents, the routing splits and the
trace splits (by prompt; traces train = routing train + val). Each draw (seed d) picks
--held-out agents at random among those called in at least --min-traces test traces and as
many training traces, and removes every TRAINING trace that calls one of them: the planner never
sees them. Two routers, both amo's pipeline router (`AgentRanker.from_params(params.router)`,
params.yaml untouched, early stopping on the val split, serving index = agent descriptions plus
the routing train rows as examples, margin by `choose_margin` at the target OOS recall):

- known: fitted on the whole routing train split, so it knows the held-out agents (their routing
  rows stay; only the planner's traces lose them). One fit serves every draw.
- description: every routing train and val row labelling a held-out agent is removed too, the
  ranker is fitted on an index without the held-out agents, and they are added at serving by
  their description only (the cheap index step; `agent_margins` gives them max(margin, 0)).
  One fit per draw (the first --description-draws draws).

In each, the planner (`TreePlanner.from_params(params.planner)`) is fitted as the fit_planner
stage fits it, on the kept training traces with the router's scores for them (in-sample, as the
pipeline), and on all test traces these systems plan:

- amo_after: the plan as served, following the route (`plan_scores(..., selected=route)`, the
  route = `select` with params.router's min_k / max_k and `agent_margins`), params.yaml as is
  (planner.follow_min_traces = 5);
- amo_before: the same with `follow_min_traces=0` (a `model_copy(update=...)` of the planner's
  params, nothing else changed): an abstained route still gets no plan, a top agent the trees
  leave out is never put in;
- amo_trees (diagnostic): the trees alone, `selected=None` (no route at all);
- router_order: the route's agents above the separator in score order (at least one when no
  training trace abstains, at most planner.max_path_len), as in benchmarks/planner.py;
- nearest_neighbour: the path of the most similar kept training prompt (cosine);
- most_frequent: the most frequent kept training path.

Metrics. On the held-out agents H (sets, summed over traces): recall = planned gold H calls /
gold H calls on the test traces that call one; precision = planned H agents that are gold / all
planned H agents on every test trace (a planner that puts H agents everywhere pays here); F1.
The same for the other agents the kept traces call fewer than follow_min_traces times (unseen:
0, rare: 1..4; present in test), where following also acts. Node F1 / link F1 / exact path
(amo.metrics.planner_metrics) on the traces with an H agent, on the others, and on all; the
after-vs-before sign test on per-trace node F1 (amo.registry.sign_test). Router diagnostics:
abstained routes, the route's own recall / precision on H, the share of gold H calls among the
3 best-scored agents (separator ignored), and the gold H calls amo_after misses by where the
route had them (its top agent, below the top, not selected). A reference run with nothing held
out (known router, all training traces) gives the natural unseen / rare agents.

Seal-Tools (4,076 agents) does not run yet: AgentRanker.fit's loss (amo.router.listwise_loss)
builds (batch, C, C) tensors, C = agents + 1, about 35 GB for a batch of 128 (the run was
killed by the OOM killer); it needs that loss computed in O(batch * C) memory.

Embeddings and fitted rankers are cached in benchmarks/.cache/. Writes
benchmarks/results/planner_held_out_<dataset>.json after every run (partial results survive).
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from planner import RESULTS, digest, path_metrics
from router_clinc150 import as_examples
from router_ranker_clinc150 import command

from amo.benchmarking import cached_encode
from amo.config import load_params
from amo.data import Agent, RoutingExample
from amo.importers import load
from amo.metrics import planner_rows
from amo.models import Encoder, resolve_encoder
from amo.planner import TreePlanner
from amo.ranker import AgentRanker
from amo.registry import sign_test
from amo.routing import AgentIndex, agent_margins, choose_margin, grade_matrix, select

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("amo_before", "amo_after", "amo_trees", "router_order", "nearest_neighbour", "most_frequent")


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["ultratool", "seal_tools"], required=True)
    parser.add_argument("--source", type=Path, help="default: ../shared/datasets/<dataset>")
    parser.add_argument("--seed", type=int, default=13, help="importer split seed")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache")
    parser.add_argument("--held-out", type=int, default=10, help="agents held out per draw (K)")
    parser.add_argument("--min-traces", type=int, default=3,
                        help="a held-out agent is called in at least this many test and training traces")
    parser.add_argument("--draws", type=int, default=3, help="draws of the held-out agents (seeds 0..n-1)")
    parser.add_argument("--description-draws", type=int, default=1,
                        help="the first n draws also run the description-only router (a ranker fit each)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


# -- held-out agents ----------------------------------------------------------------------------
def calls(paths: Sequence[Sequence[str]]) -> Counter[str]:
    """Traces calling each agent (a path calling it twice counts once)."""
    return Counter(a for path in paths for a in set(path))


def draw_held_out(train: Sequence[Sequence[str]], test: Sequence[Sequence[str]], k: int, min_traces: int,
                  seed: int) -> tuple[list[str], int]:
    """k agents drawn (seeded) among those called in >= min_traces test and training traces, and
    how many agents were eligible."""
    in_train, in_test = calls(train), calls(test)
    eligible = sorted(a for a in in_test if in_test[a] >= min_traces and in_train[a] >= min_traces)
    if len(eligible) < k:
        raise SystemExit(f"--held-out {k}: only {len(eligible)} agents are called in >= {min_traces} test and "
                         f"training traces; lower --held-out or --min-traces")
    return sorted(np.random.default_rng(seed).choice(eligible, k, replace=False).tolist()), len(eligible)


# -- the router ---------------------------------------------------------------------------------
def fitted_ranker(params: Any, index: AgentIndex, x_train: np.ndarray, g_train: np.ndarray, x_val: np.ndarray,
                  g_val: np.ndarray, cache: Path) -> tuple[AgentRanker, float, bool]:
    """AgentRanker.from_params(params).fit(...) as train_router fits it (from the cache when the
    same settings and data were fitted before), the seconds its fit took, and whether it was cached."""
    arrays = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes()
                                     for a in (index.embeddings, x_train, g_train, x_val, g_val))).hexdigest()
    directory = cache / "rankers" / digest(params.model_dump(), index.ids, [a.domain for a in index.agents], arrays)
    if (directory / "fit.json").is_file():
        return AgentRanker.load(directory), json.loads((directory / "fit.json").read_text())["seconds"], True
    start = time.perf_counter()
    ranker = AgentRanker.from_params(params).fit(
        index, x_train, g_train, val=(x_val, g_val),
        progress=lambda r: print(f"    ranker epoch {r['epoch']}: {r}", flush=True))
    seconds = time.perf_counter() - start
    ranker.save(directory)
    (directory / "fit.json").write_text(json.dumps({"seconds": seconds}) + "\n")
    return ranker, seconds, False


def router(params: Any, agents: list[Agent], agent_x: np.ndarray, train: list[RoutingExample],
           val: list[RoutingExample], x_train: np.ndarray, x_val: np.ndarray, held_out: set[str],
           cache: Path) -> dict[str, Any]:
    """The pipeline's router fitted on `train` / `val` with the agents of `held_out` absent from
    its index (none: the whole catalogue), served with every agent and the train rows as examples."""
    fit_cols = [i for i, a in enumerate(agents) if a.id not in held_out]
    fit_index = AgentIndex([agents[i] for i in fit_cols], agent_x[fit_cols])
    g_val = grade_matrix(val, fit_index.ids)
    ranker, seconds, cached = fitted_ranker(params, fit_index, x_train, grade_matrix(train, fit_index.ids),
                                            x_val, g_val, cache)
    chosen = choose_margin(ranker.score(x_val, fit_index.with_examples(train, embeddings=x_train)),
                           g_val[:, :-1].max(1) == 0, params.target_oos_recall)
    margin = 0.0 if chosen is None else chosen
    served = AgentIndex(agents, agent_x).with_examples(train, embeddings=x_train)
    best = min(ranker.history_, key=lambda r: r.get("val_loss", r["train_loss"]))
    return {"ranker": ranker, "served": served, "margin": margin, "margins": agent_margins(served, margin),
            "record": {"fit_seconds": round(seconds, 1), "from_cache": cached, "routing_train": len(train),
                       "routing_val": len(val), "agents_in_fit_index": len(fit_cols),
                       "epochs_run": len(ranker.history_), "best_epoch": best["epoch"],
                       "margin": margin, "margin_chosen_on": "val" if chosen is not None else
                       "none (val has no out-of-scope prompt): separator only"}}


# -- metrics ------------------------------------------------------------------------------------
def agent_scores(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]], group: set[str]) -> dict[str, Any]:
    """Recall, precision and F1 of the planned agents restricted to `group` (sets per trace,
    summed over traces): recall over the gold group calls, precision over the planned group agents."""
    hit = planned = wanted = 0
    for p, g in zip(predicted, gold):
        p_in, g_in = set(p) & group, set(g) & group
        hit, planned, wanted = hit + len(p_in & g_in), planned + len(p_in), wanted + len(g_in)
    recall = hit / wanted if wanted else None
    precision = hit / planned if planned else None
    f1 = 2 * hit / (planned + wanted) if planned + wanted else None
    return {"recall": None if recall is None else round(recall, 4),
            "precision": None if precision is None else round(precision, 4),
            "f1": None if f1 is None else round(f1, 4), "gold_calls": wanted, "planned": planned, "hit": hit}


def top_k_share(scores: np.ndarray, ids: Sequence[str], gold: Sequence[Sequence[str]], group: set[str],
                k: int) -> float | None:
    """Share of the gold calls of `group` agents whose agent is among the k best-scored agents
    (the separator ignored): how often the ranker puts them near the top, above the separator or not."""
    hits = wanted = 0
    for row, g in zip(scores, gold):
        top = {ids[i] for i in np.argsort(-row[:-1], kind="stable")[:k]}
        hits, wanted = hits + len(set(g) & group & top), wanted + len(set(g) & group)
    return round(hits / wanted, 4) if wanted else None


def missed(predicted: Sequence[Sequence[str]], routes: Sequence[Sequence[str]], gold: Sequence[Sequence[str]],
           group: set[str]) -> dict[str, int]:
    """Gold calls of `group` agents a plan leaves out, by where the route had them: its top agent
    (what following adds), selected below the top, or not selected."""
    out = {"route_top": 0, "route_below_top": 0, "not_in_route": 0}
    for p, route, g in zip(predicted, routes, gold):
        for agent in set(g) & group - set(p):
            where = "route_top" if route[:1] == [agent] else "route_below_top" if agent in route else "not_in_route"
            out[where] += 1
    return out


def subset(values: Sequence[Any], rows: Sequence[int]) -> list[Any]:
    return [values[i] for i in rows]


def evaluate(plans: dict[str, list[list[str]]], gold: list[list[str]], held_out: set[str],
             groups: dict[str, set[str]]) -> dict[str, Any]:
    """Per system: the held-out agents' scores, each group's, and path metrics on the traces with
    a held-out agent, without one, and on all; amo_after against amo_before trace by trace."""
    with_h = [i for i, g in enumerate(gold) if set(g) & held_out]
    without = [i for i, g in enumerate(gold) if not set(g) & held_out]
    out: dict[str, Any] = {}
    for name, predicted in plans.items():
        out[name] = {
            "held_out_agents": agent_scores(predicted, gold, held_out),
            **{f"{g}_agents": agent_scores(predicted, gold, agents) for g, agents in groups.items()},
            "traces_with_held_out": path_metrics(subset(predicted, with_h), subset(gold, with_h)) if with_h else None,
            "traces_without_held_out": path_metrics(subset(predicted, without), subset(gold, without))
            if without else None,
            "all_traces": path_metrics(predicted, gold),
        }
    before, after = (planner_rows(plans[n], gold)["node_f1"] for n in ("amo_before", "amo_after"))
    compared = {}
    for label, rows in (("traces_with_held_out", with_h), ("all_traces", range(len(gold)))):
        worse, better, p = sign_test(subset(before, rows), subset(after, rows))
        compared[label] = {"after_better": worse, "after_worse": better, "one_sided_p": round(p, 4)}
    out["after_vs_before_node_f1"] = compared
    out["plans_changed_by_following"] = sum(a != b for a, b in zip(plans["amo_after"], plans["amo_before"]))
    return out


# -- one run: a router, kept training traces, every system on the test traces -------------------
def run(params: Any, routed: dict[str, Any], agents: list[Agent], train: list[dict], test: list[dict],
        e_train: np.ndarray, e_test: np.ndarray, held_out: set[str]) -> dict[str, Any]:
    start = time.perf_counter()
    ids = [a.id for a in agents]
    keep = [i for i, t in enumerate(train) if not set(t["path"]) & held_out]
    prompts, paths = [train[i]["prompt"] for i in keep], [list(train[i]["path"]) for i in keep]
    e_kept = e_train[keep]
    ranker, served, margins = routed["ranker"], routed["served"], routed["margins"]
    s_kept, s_test = ranker.score(e_kept, served), ranker.score(e_test, served)

    p = params.planner
    planner_start = time.perf_counter()
    after = TreePlanner.from_params(p).fit(prompts, e_kept, s_kept[:, :-1], s_kept[:, -1].tolist(), paths, ids)
    before_params = p.model_copy(update={"follow_min_traces": 0})
    before = TreePlanner.from_params(before_params).fit(prompts, e_kept, s_kept[:, :-1], s_kept[:, -1].tolist(),
                                                        paths, ids)
    planner_seconds = time.perf_counter() - planner_start

    r = params.router
    routes = [[a for a, _ in select(row, ids, min_k=r.min_k, max_k=r.max_k, margin=margins).agents] for row in s_test]
    min_k = 0 if any(not path for path in paths) else 1
    counts = Counter(tuple(path) for path in paths)
    frequent = list(max(counts, key=lambda k: (counts[k], k)))
    unit = e_kept / np.linalg.norm(e_kept, axis=1, keepdims=True)
    nearest = np.argmax((e_test / np.linalg.norm(e_test, axis=1, keepdims=True)) @ unit.T, axis=1)
    test_prompts, gold = [t["prompt"] for t in test], [list(t["path"]) for t in test]
    systems: dict[str, Callable[[int], list[str]]] = {
        "amo_before": lambda i: before.plan_scores(test_prompts[i], e_test[i], ids, s_test[i], explain=False,
                                                   selected=routes[i]).path,
        "amo_after": lambda i: after.plan_scores(test_prompts[i], e_test[i], ids, s_test[i], explain=False,
                                                 selected=routes[i]).path,
        "amo_trees": lambda i: after.plan_scores(test_prompts[i], e_test[i], ids, s_test[i], explain=False).path,
        "router_order": lambda i: [a for a, _ in select(s_test[i], ids, min_k=min_k, max_k=p.max_path_len,
                                                        margin=margins).agents],
        "nearest_neighbour": lambda i: paths[int(nearest[i])],
        "most_frequent": lambda i: frequent,
    }
    plans = {name: [list(plan(i)) for i in range(len(test))] for name, plan in systems.items()}

    kept_calls = calls(paths)
    in_test = {a for g in gold for a in g} - held_out
    groups = {"unseen": {a for a in in_test if kept_calls[a] == 0},
              "rare": {a for a in in_test if 0 < kept_calls[a] < p.follow_min_traces}}
    with_h = [i for i, g in enumerate(gold) if set(g) & held_out]
    result = {
        "held_out": sorted(held_out),
        "counts": {"held_out_agents": len(held_out), "training_traces": len(train), "training_traces_kept": len(keep),
                   "training_traces_removed": len(train) - len(keep), "test_traces": len(test),
                   "test_traces_with_held_out": len(with_h),
                   "held_out_gold_calls": sum(len(set(g) & held_out) for g in gold),
                   "unseen_agents_in_test": len(groups["unseen"]), "rare_agents_in_test": len(groups["rare"]),
                   "test_traces_with_unseen": sum(bool(set(g) & groups["unseen"]) for g in gold),
                   "test_traces_with_rare": sum(bool(set(g) & groups["rare"]) for g in gold)},
        "router": {**routed["record"],
                   "route_abstained_on_test": sum(not route for route in routes),
                   # following adds only the route's top agent: how often that is a gold held-out agent
                   "route_top_is_gold_held_out": sum(routes[i][:1] == [a] for i in with_h
                                                     for a in set(gold[i]) & held_out),
                   "route_held_out_agents": agent_scores(routes, gold, held_out),
                   "held_out_gold_in_top3_scores": top_k_share(s_test, ids, gold, held_out, 3),
                   "held_out_missed_by_amo_after": missed(plans["amo_after"], routes, gold, held_out)},
        "systems": evaluate(plans, gold, held_out, groups),
        "planner": {"before_params": {"follow_min_traces": before_params.follow_min_traces},
                    "after_params": {"follow_min_traces": p.follow_min_traces},
                    "fit_seconds_both": round(planner_seconds, 1),
                    "router_order_min_k": min_k},
        "seconds": round(time.perf_counter() - start, 1),
    }
    return result


# -- summary --------------------------------------------------------------------------------------
def mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(float(np.mean(present)), 4) if present else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per system, the mean over the runs of the headline figures."""
    out: dict[str, Any] = {"runs": len(runs)}
    for name in SYSTEMS:
        s = [r["systems"][name] for r in runs]
        with_h = [x for x in s if x["traces_with_held_out"]]
        out[name] = {
            "held_out_recall": mean([x["held_out_agents"]["recall"] for x in s]),
            "held_out_precision": mean([x["held_out_agents"]["precision"] for x in s]),
            "held_out_f1": mean([x["held_out_agents"]["f1"] for x in s]),
            "with_held_out_node_f1": mean([x["traces_with_held_out"]["node_f1"] for x in with_h]),
            "with_held_out_exact": mean([x["traces_with_held_out"]["exact_path"] for x in with_h]),
            "all_node_f1": mean([x["all_traces"]["node_f1"] for x in s]),
            "all_exact": mean([x["all_traces"]["exact_path"] for x in s]),
            "unseen_f1": mean([x["unseen_agents"]["f1"] for x in s]),
            "rare_f1": mean([x["rare_agents"]["f1"] for x in s]),
        }
    return out


HEADLINE = ("held_out_recall", "held_out_precision", "held_out_f1", "with_held_out_node_f1", "with_held_out_exact",
            "all_node_f1", "all_exact", "unseen_f1", "rare_f1")


def table(title: str, summary: dict[str, Any]) -> str:
    lines = [f"{title} (mean of {summary['runs']} run(s))",
             f"{'system':<18}" + "".join(f"{h:>12}" for h in ("H recall", "H prec", "H F1", "wH nodeF1", "wH exact",
                                                               "all nodeF1", "all exact", "unseen F1", "rare F1"))]
    for name in SYSTEMS:
        row = summary[name]
        cells = ("-" if row[h] is None else format(row[h], ".3f") for h in HEADLINE)
        lines.append(f"{name:<18}" + "".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = arguments(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    params = load_params(args.params)
    source = args.source or ROOT.parent / "shared" / "datasets" / args.dataset
    data = load(args.dataset, source, args.seed)
    agents = [Agent.from_record(a) for a in data.agents]
    routing = {split: as_examples(rows) for split, rows in data.routing.items()}
    train, test = data.traces["train"], data.traces["test"]
    encoder = Encoder(resolve_encoder(params.encoder.path), params.encoder.batch_size)
    embed_start = time.perf_counter()
    agent_x = cached_encode(encoder, [a.description for a in agents], args.cache)
    x = {split: cached_encode(encoder, [e.prompt for e in rows], args.cache) for split, rows in routing.items()}
    e_train = cached_encode(encoder, [t["prompt"] for t in train], args.cache)
    e_test = cached_encode(encoder, [t["prompt"] for t in test], args.cache)
    embed_seconds = time.perf_counter() - embed_start
    print(f"{args.dataset}: {len(agents)} agents, routing {({k: len(v) for k, v in routing.items()})}, "
          f"traces {len(train)} / {len(test)}; embedded in {embed_seconds:.0f} s", flush=True)

    draws = []
    for d in range(args.draws):
        held, eligible = draw_held_out([t["path"] for t in train], [t["path"] for t in test], args.held_out,
                                       args.min_traces, d)
        draws.append({"seed": d, "held_out": held, "eligible": eligible})

    path = args.out or RESULTS / f"planner_held_out_{args.dataset}.json"
    result: dict[str, Any] = {
        "command": command(f"benchmarks/{Path(__file__).name}", argv),
        "dataset": args.dataset, "n_agents": len(agents), "n_train_traces": len(train), "n_test_traces": len(test),
        "split": f"importer split by prompt hash, seed {args.seed}; traces train = routing train + val",
        "protocol": {"held_out_per_draw": args.held_out, "min_traces": args.min_traces,
                     "eligible": f"agents called in >= {args.min_traces} test traces and >= {args.min_traces} "
                                 "training traces",
                     "removed": "every training trace calling a held-out agent (the planner never sees them)",
                     "draws": draws,
                     "routers": {"known": "fitted on the whole routing train split (held-out agents' rows kept), "
                                          "one fit for every draw",
                                 "description": "routing train and val rows labelling a held-out agent removed; "
                                                "ranker fitted on an index without the held-out agents, which are "
                                                "added at serving by description only"},
                     "planner_training_scores": "in-sample, as the fit_planner stage: the served router scores "
                                                "the kept training prompts, whose routing rows are its examples"},
        "encoder": "all-MiniLM-L6-v2 (frozen), params.yaml encoder.path",
        "params": {"router": params.router.model_dump(), "planner": params.planner.model_dump(),
                   "before_override": {"planner.follow_min_traces": 0}},
        "threads": args.threads, "machine": "2 cores, shared with other jobs",
        "complete": False,
    }

    def write() -> None:
        result["seconds"] = {"embedding": round(embed_seconds, 1), "total": round(time.perf_counter() - started, 1)}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")

    print("router known: fitting on the whole routing train split", flush=True)
    known = router(params.router, agents, agent_x, routing["train"], routing["val"], x["train"], x["val"], set(),
                   args.cache)
    print(f"  {known['record']}", flush=True)
    result["reference"] = run(params, known, agents, train, test, e_train, e_test, set())
    result["known"] = {"router": known["record"], "runs": []}
    result["description"] = {"runs": []}
    write()
    for draw in draws:
        held = set(draw["held_out"])
        print(f"draw {draw['seed']}: held out {sorted(held)}", flush=True)
        one = run(params, known, agents, train, test, e_train, e_test, held)
        result["known"]["runs"].append(one)
        result["known"]["mean"] = summarise(result["known"]["runs"])
        print(f"  known: {one['counts']} in {one['seconds']} s", flush=True)
        write()
        if draw["seed"] >= args.description_draws:
            continue
        rows = {split: [i for i, e in enumerate(routing[split]) if not set(e.labels) & held]
                for split in ("train", "val")}
        print(f"  router description: fitting without {len(routing['train']) - len(rows['train'])} train and "
              f"{len(routing['val']) - len(rows['val'])} val rows", flush=True)
        described = router(params.router, agents, agent_x, subset(routing["train"], rows["train"]),
                           subset(routing["val"], rows["val"]), x["train"][rows["train"]], x["val"][rows["val"]],
                           held, args.cache)
        one = run(params, described, agents, train, test, e_train, e_test, held)
        one["router"]["routing_rows_removed"] = {split: len(routing[split]) - len(rows[split]) for split in rows}
        result["description"]["runs"].append(one)
        result["description"]["mean"] = summarise(result["description"]["runs"])
        print(f"  description: {one['router']} in {one['seconds']} s", flush=True)
        write()
    result["reference_summary"] = summarise([result["reference"]])
    result["complete"] = True
    write()

    print()
    print(table(f"{args.dataset}, nothing held out (reference; H empty)", result["reference_summary"]))
    print(table(f"{args.dataset}, router knows H (routing rows kept)", result["known"]["mean"]))
    if result["description"]["runs"]:
        print(table(f"{args.dataset}, H known by description only", result["description"]["mean"]))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
