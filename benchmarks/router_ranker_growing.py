"""Growing agents on CLINC150 with amo's pipeline router (amo.ranker.AgentRanker): train without
one domain's 15 intents, add them as agents without retraining, and (few-shot) give each new
agent k example prompts at the index step; for every held-out domain in turn.

    python benchmarks/router_ranker_growing.py --source ../shared/datasets/clinc150

The protocol of benchmarks/router_growing.py: for each of the 10 domains, amo's router
(`AgentRanker.from_params(load_params("params.yaml").router)`, params.yaml's settings untouched)
is fitted on the train split minus that domain's prompts with only the other 135 agents in its
index (val likewise, for early stopping); its serving index holds those training prompts as
examples. The logistic-regression classifier (amo.benchmarking.fit_classifier) is trained on the
same prompts (it cannot name an agent it never saw); cosine similarity needs no training. At test
all 150 agents are candidates (the 15 new ones known only by their descriptions) and the whole
test split is routed, out-of-scope prompts included. Thresholds come from the reduced val split:
amo's margin by the pipeline's rule (`choose_margin` at params.yaml's target OOS recall), the
baselines' by router_clinc150.py's rule (amo.benchmarking.tune_margin). new_f1 / old_f1: macro F1
over the held-out / the other intents (router_growing.py's definitions).

Few-shot, in the same run: for k in --shots (0, 1, 5, 20), k training prompts per new agent (a
fixed random order per agent, so the k sets are nested) are added to amo's serving index only
(`served.with_examples(rows, embeddings=...)`, and the index step's classifier column for each new
agent, `AgentRanker.index_step`: no refit of the ranker, margin unchanged), against the
classifier *retrained* on the fold's prompts plus those k per new agent (threshold re-tuned on
the reduced val). Cosine does not use examples (its figures repeat across k).

Writes, after every fold (partial results survive): benchmarks/results/router_growing_ranker.json
(per fold "amo" | "cosine" | "classifier" -> new_f1, old_f1), router_few_shot.json and
router_few_shot_plot.csv (k, system, new_f1 averaged over the folds done; a DVC plot).
The trade-off, in the same run: the lead over the separator a new agent needs (the pipeline's
max(margin, 0)) moved by an offset at decision time, the same scores per fold, new- against
trained-agent F1 per offset beside cosine's and the classifier's points:
benchmarks/results/router_growing_tradeoff.json and router_growing_tradeoff.csv (a DVC plot).
`--domains a,b` runs a subset; `--workers N` runs N folds at once (spawned processes, one thread
each). Embeddings come from benchmarks/.cache/.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from router_clinc150 import RESULTS, embed, routing_data
from router_growing import f1s, held_out
from router_ranker_clinc150 import command, out_of_scope

from amo.benchmarking import cosine_scores, fit_classifier, tune_margin
from amo.config import load_params
from amo.models import Encoder, resolve_encoder
from amo.ranker import AgentRanker
from amo.routing import AgentIndex, agent_margins, choose_margin, grade_matrix

SYSTEMS = ("amo", "cosine", "classifier")
OFFSETS = tuple(round(float(v), 2) for v in np.arange(-1.0, 2.01, 0.25))  # the trade-off's knob


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/datasets/clinc150"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/.cache"))
    parser.add_argument("--out", type=Path, default=RESULTS / "router_growing_ranker.json")
    parser.add_argument("--few-shot-out", type=Path, default=RESULTS / "router_few_shot.json")
    parser.add_argument("--plot", type=Path, default=RESULTS / "router_few_shot_plot.csv")
    parser.add_argument("--tradeoff-out", type=Path, default=RESULTS / "router_growing_tradeoff.json")
    parser.add_argument("--tradeoff-plot", type=Path, default=RESULTS / "router_growing_tradeoff.csv")
    parser.add_argument("--domains", default="", help="comma-separated subset; default: all ten")
    parser.add_argument("--shots", default="0,1,5,20", help="examples per new agent (few-shot)")
    parser.add_argument("--shot-seed", type=int, default=0, help="order in which a new agent's examples are added")
    parser.add_argument("--classifier-c", type=float, default=10.0, help="the baseline classifier's C")
    parser.add_argument("--seed", type=int, default=0, help="the baseline classifier's seed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1,
                        help="folds run at once, each in a process of its own (the figures do not depend on it)")
    return parser.parse_args(argv)


def run_fold(domain: str, args: argparse.Namespace, params, agents, splits, agent_x, x,
             shots: list[int]) -> tuple[dict, dict]:
    """Fit without `domain`'s intents, add them back as agents (then with k examples each), score."""
    start = time.perf_counter()
    p = params.router
    ids = [a.id for a in agents]
    new, old_columns, train_rows, val_rows = held_out(agents, splits, domain)
    new_columns = [i for i, a in enumerate(agents) if a.id in new]
    old_agents = [agents[i] for i in old_columns]
    old_ids = [a.id for a in old_agents]
    train = [splits["train"][i] for i in train_rows]
    val = [splits["val"][i] for i in val_rows]
    x_train, x_val = x["train"][train_rows], x["val"][val_rows]
    fold: dict = {"held_out_domain": domain, "new_agents": sorted(new), "train_prompts": len(train),
                  "val_prompts": len(val)}

    # amo: fitted on the 135 old agents, as stage train_router fits it
    old_index = AgentIndex(old_agents, agent_x[old_columns])
    g_val = grade_matrix(val, old_ids)
    ranker = AgentRanker.from_params(p).fit(
        old_index, x_train, grade_matrix(train, old_ids), val=(x_val, g_val),
        progress=lambda r: print(f"  {domain} epoch {r['epoch']}: {r}", flush=True))
    fit_seconds = time.perf_counter() - start
    amo_val = ranker.score(x_val, old_index.with_examples(train, embeddings=x_train))
    chosen = choose_margin(amo_val, out_of_scope(g_val), p.target_oos_recall)
    margin = 0.0 if chosen is None else chosen
    # serving: all 150 agents, the new ones by description only (the index step)
    served = AgentIndex(agents, agent_x).with_examples(train, embeddings=x_train)
    amo_test = ranker.score(x["test"], served)
    classify = fit_classifier(x_train, train, ids, c=args.classifier_c, seed=args.seed)
    baselines = {
        "cosine": (cosine_scores(x_val, agent_x[old_columns]), cosine_scores(x["test"], agent_x)),
        "classifier": (classify(x_val)[:, [*old_columns, len(ids)]], classify(x["test"])),
    }
    # the pipeline's rule: agents known only by their description need max(margin, 0)
    fold["amo"] = f1s(amo_test, margin, splits["test"], ids, new, agent_margins(served, margin))
    for name, (val_scores, test_scores) in baselines.items():
        fold[name] = f1s(test_scores, tune_margin(val_scores, val, old_agents), splits["test"], ids, new)
    # the trade-off: the lead a new agent needs over the separator, offset from the pipeline's
    # max(margin, 0) (decision time only: the same scores, the margin of agents with examples unchanged)
    needs = agent_margins(served, margin)
    no_history = served.packed()[2] == 0
    fold["tradeoff"] = {"offset": list(OFFSETS), **{key: [] for key in ("new_f1", "old_f1")}}
    for offset in OFFSETS:
        values = f1s(amo_test, margin, splits["test"], ids, new, needs + offset * no_history)
        fold["tradeoff"]["new_f1"].append(values["new_f1"])
        fold["tradeoff"]["old_f1"].append(values["old_f1"])
    fold["diagnostics"] = {
        "amo_margin_0": f1s(amo_test, 0.0, splits["test"], ids, new),
        "amo_one_margin": f1s(amo_test, margin, splits["test"], ids, new),
        "amo_baseline_threshold_rule": f1s(amo_test, tune_margin(amo_val, val, old_agents), splits["test"], ids, new),
    }
    best = min(ranker.history_, key=lambda r: r.get("val_loss", r["train_loss"]))
    fold["amo_training"] = {"fit_seconds": round(fit_seconds, 1), "epochs_run": len(ranker.history_),
                            "best_epoch": best["epoch"], "best_val_loss": best.get("val_loss")}

    # few-shot: k examples per new agent, index only for amo; the classifier retrained
    rng = np.random.default_rng(args.shot_seed)
    train_labels = [max(e.labels, key=e.labels.get) if e.labels else None for e in splits["train"]]
    order = {ids[c]: rng.permutation([i for i, label in enumerate(train_labels) if label == ids[c]])
             for c in new_columns}
    few = {"held_out_domain": domain, "amo": {"new_f1": [], "old_f1": []},
           "classifier": {"new_f1": [], "old_f1": []}, "cosine": {"new_f1": []}}
    margins = {"amo": [], "classifier": []}
    for k in shots:
        if k == 0:
            amo_k, classifier_k = fold["amo"], fold["classifier"]
        else:
            rows = np.concatenate([order[agent][:k] for agent in sorted(order)]).astype(np.int64)
            examples = [splits["train"][i] for i in rows]
            served_k = served.with_examples(examples, embeddings=x["train"][rows])
            amo_k = f1s(ranker.score(x["test"], served_k, classifier=ranker.index_step(served_k)), margin,
                        splits["test"], ids, new, agent_margins(served_k, margin))
            all_rows = np.concatenate([np.asarray(train_rows, np.int64), rows])
            retrained = fit_classifier(x["train"][all_rows], [splits["train"][i] for i in all_rows], ids,
                                       c=args.classifier_c, seed=args.seed)
            m = tune_margin(retrained(x_val)[:, [*old_columns, len(ids)]], val, old_agents)
            classifier_k = f1s(retrained(x["test"]), m, splits["test"], ids, new)
        for name, values in (("amo", amo_k), ("classifier", classifier_k)):
            few[name]["new_f1"].append(values["new_f1"])
            few[name]["old_f1"].append(values["old_f1"])
            margins[name].append(values["margin"])
        few["cosine"]["new_f1"].append(fold["cosine"]["new_f1"])
        print(f"  {domain} k={k}: amo new {amo_k['new_f1']:.4f} old {amo_k['old_f1']:.4f} | classifier "
              f"retrained new {classifier_k['new_f1']:.4f} old {classifier_k['old_f1']:.4f}", flush=True)
    fold["few_shot"] = {"k": shots, "amo": few["amo"], "classifier_retrained": few["classifier"],
                        "margins": margins}
    fold["seconds"] = round(time.perf_counter() - start, 1)
    return fold, few


def summarise(folds: list[dict], few: list[dict], shots: list[int]) -> dict:
    def mean(values: list[float]) -> float:
        return round(float(np.mean(values)), 4)

    summary: dict = {name: {"new_f1": mean([f[name]["new_f1"] for f in folds]),
                            "old_f1": mean([f[name]["old_f1"] for f in folds])} for name in SYSTEMS}
    summary["folds"] = len(folds)
    summary["amo_new_ge_cosine_new_folds"] = sum(f["amo"]["new_f1"] >= f["cosine"]["new_f1"] for f in folds)
    summary["amo_old_ge_classifier_old_minus_0.01_folds"] = sum(
        f["amo"]["old_f1"] >= f["classifier"]["old_f1"] - 0.01 for f in folds)
    summary["few_shot_new_f1"] = {
        name: {str(k): mean([f[name]["new_f1"][i] for f in few]) for i, k in enumerate(shots)}
        for name in ("amo", "classifier", "cosine")}
    summary["few_shot_old_f1"] = {
        name: {str(k): mean([f[name]["old_f1"][i] for f in few]) for i, k in enumerate(shots)}
        for name in ("amo", "classifier")}
    return summary


def write(args: argparse.Namespace, argv: list[str] | None, params, folds: list[dict], few: list[dict],
          shots: list[int], domains: list[str]) -> dict:
    cmd = command("benchmarks/router_ranker_growing.py", argv)
    summary = summarise(folds, few, shots)
    result = {
        "command": cmd,
        "encoder": "all-MiniLM-L6-v2 (frozen), the same embeddings for every system",
        "router": "amo.ranker.AgentRanker.from_params(load_params('params.yaml').router), params untouched",
        "router_params": params.router.model_dump(),
        "threads": args.threads,
        "protocol": "benchmarks/router_growing.py: one domain held out per fold; train on the other 135 agents' "
                    "prompts; at test all 150 agents are candidates, the 15 new ones known by description only",
        "threshold_tuning": {
            "amo": f"choose_margin on the reduced val at target OOS recall {params.router.target_oos_recall} "
                   "(the pipeline's rule) for agents with examples, max(margin, 0) for agents known only by "
                   "their description (amo.routing.agent_margins); unchanged when examples are added",
            "cosine, classifier": "tune_margin on the reduced val (router_clinc150.py's rule); the retrained "
                                  "classifier is re-tuned",
        },
        "f1": "new_f1 / old_f1: macro F1 over the held-out / the other intents, whole test split (OOS included)",
        "domains_requested": domains,
        "complete": len(folds) == len(domains),
        "mean": summary,
        "folds": folds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.few_shot_out.write_text(json.dumps({"command": cmd, "k": shots, "folds": few}, indent=2) + "\n")
    write_tradeoff(args, cmd, folds)
    with open(args.plot, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["k", "system", "new_f1"])
        for name in ("amo", "classifier", "cosine"):
            for k in shots:
                writer.writerow([k, name, summary["few_shot_new_f1"][name][str(k)]])
    return result


def write_tradeoff(args: argparse.Namespace, cmd: str, folds: list[dict]) -> None:
    """New- against trained-agent F1 over the offset of the new agents' margin (means over the
    folds done), beside the two baselines' points (cosine: the new-agent target, the classifier:
    the trained-agent one), as JSON and as a CSV for a DVC plot."""
    def mean(values: list[float]) -> float:
        return round(float(np.mean(values)), 4)

    curve = [{"offset": offset, "new_f1": mean([f["tradeoff"]["new_f1"][i] for f in folds]),
              "old_f1": mean([f["tradeoff"]["old_f1"][i] for f in folds]),
              "new_ge_cosine_folds": sum(f["tradeoff"]["new_f1"][i] >= f["cosine"]["new_f1"] for f in folds),
              "old_ge_classifier_minus_0.01_folds": sum(
                  f["tradeoff"]["old_f1"][i] >= f["classifier"]["old_f1"] - 0.01 for f in folds)}
             for i, offset in enumerate(OFFSETS)]
    baselines = {name: {"new_f1": mean([f[name]["new_f1"] for f in folds]),
                        "old_f1": mean([f[name]["old_f1"] for f in folds])} for name in ("cosine", "classifier")}
    args.tradeoff_out.write_text(json.dumps({
        "command": cmd,
        "knob": "offset added to the lead over the separator that agents known only by their description need "
                "(the pipeline's max(margin, 0) at offset 0); decision time, the same scores per fold",
        "folds": len(folds), "curve": curve, "baselines": baselines,
        "per_fold": {f["held_out_domain"]: {**f["tradeoff"], "cosine_new_f1": f["cosine"]["new_f1"],
                                            "classifier_old_f1": f["classifier"]["old_f1"]} for f in folds},
    }, indent=2) + "\n")
    with open(args.tradeoff_plot, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["offset", "system", "new_f1", "old_f1"])
        for point in curve:
            writer.writerow([point["offset"], "amo", point["new_f1"], point["old_f1"]])
        for name, values in baselines.items():  # a baseline is a point: one row at each offset draws it as a line
            for offset in OFFSETS:
                writer.writerow([offset, name, values["new_f1"], values["old_f1"]])


def main(argv: list[str] | None = None) -> dict:
    args = arguments(argv)
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    shots = [int(k) for k in args.shots.split(",") if k != ""]
    agents, splits = routing_data("clinc150", args.source)
    agent_x, x = embed(Encoder(resolve_encoder(params.encoder.path)), agents, splits, args.cache)
    domains = args.domains.split(",") if args.domains else list(dict.fromkeys(a.domain for a in agents))
    unknown = set(domains) - {a.domain for a in agents}
    if unknown:
        raise SystemExit(f"unknown domains: {sorted(unknown)}")
    done: dict[str, tuple[dict, dict]] = {}
    result: dict = {}

    def record(domain: str, outcome: tuple[dict, dict]) -> dict:
        """Keep a finished fold and rewrite the result files, folds in the requested order."""
        done[domain] = outcome
        print(json.dumps({k: outcome[0][k] for k in ("held_out_domain", *SYSTEMS, "seconds")}), flush=True)
        finished = [done[d] for d in domains if d in done]
        return write(args, argv, params, [f for f, _ in finished], [w for _, w in finished], shots, domains)

    if args.workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_fold, d, args, params, agents, splits, agent_x, x, shots): d for d in domains}
            for future in as_completed(futures):
                result = record(futures[future], future.result())
    else:
        for domain in domains:
            result = record(domain, run_fold(domain, args, params, agents, splits, agent_x, x, shots))
    folds = [done[d][0] for d in domains]
    summary = result["mean"]
    print(f"\n{'domain':20s} {'amo new':>8s} {'cos new':>8s} {'amo old':>8s} {'clf old':>8s}")
    for f in folds:
        print(f"{f['held_out_domain']:20s} {f['amo']['new_f1']:8.4f} {f['cosine']['new_f1']:8.4f} "
              f"{f['amo']['old_f1']:8.4f} {f['classifier']['old_f1']:8.4f}")
    print(f"{'mean':20s} {summary['amo']['new_f1']:8.4f} {summary['cosine']['new_f1']:8.4f} "
          f"{summary['amo']['old_f1']:8.4f} {summary['classifier']['old_f1']:8.4f}")
    print(f"amo new >= cosine new: {summary['amo_new_ge_cosine_new_folds']}/{len(folds)} folds; "
          f"amo old >= classifier old - 0.01: {summary['amo_old_ge_classifier_old_minus_0.01_folds']}/{len(folds)}")
    print("few-shot new F1 (mean over folds): " + "; ".join(
        f"k={k}: amo {summary['few_shot_new_f1']['amo'][str(k)]:.4f} vs classifier retrained "
        f"{summary['few_shot_new_f1']['classifier'][str(k)]:.4f}" for k in shots))
    print(f"wrote {args.out}, {args.few_shot_out}, {args.plot}")
    return result


if __name__ == "__main__":
    main()
