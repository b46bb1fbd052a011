"""Stage `train_router`: tune the encoder when params ask, embed agents and prompts, fit the
ranker (amo.ranker) with its separator, build the agent index the bundle serves (descriptions
plus every training prompt as an example of its agents), and choose the margin over the
separator on the validation split.

    amo train-router --data data --embeddings artifacts/embeddings --out artifacts/router --metrics metrics/train_router.json --plots metrics/plots/router
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from amo import data as contracts
from amo.config import Params
from amo.data import write_csv, write_json
from amo.encoder_tuning import prepare_encoder, stage_encoder, tuned_encoder_dir
from amo.metrics import router_metrics
from amo.ranker import AgentRanker
from amo.routing import (
    SELECTION,
    AgentIndex,
    agent_margins,
    choose_margin,
    grade_matrix,
    rankings,
    select,
)

log = logging.getLogger("amo")
SWEEP_POINTS = 41  # margins drawn in the val trade-off plot


def train(params: Params, agents: list[contracts.Agent], train: list[contracts.RoutingExample],
          val: list[contracts.RoutingExample], encoder: Any
          ) -> tuple[AgentRanker, AgentIndex, dict[str, Any], list[dict[str, float]]]:
    """The fitted ranker, the index it serves (training prompts as examples), the selection
    rule chosen on `val`, and the val trade-off the margin sets, margin by margin (pure: no files)."""
    p = params.router
    index = AgentIndex.build(agents, encoder)
    x_train = encoder.encode([e.prompt for e in train])
    x_val = encoder.encode([e.prompt for e in val])
    g_val = grade_matrix(val, index.ids)
    ranker = AgentRanker.from_params(p).fit(index, x_train, grade_matrix(train, index.ids), val=(x_val, g_val))
    served = index.with_examples(train, embeddings=x_train)
    scores = ranker.score(x_val, served)
    margin = choose_margin(scores, g_val[:, :-1].max(1) == 0, p.target_oos_recall)

    ranked = rankings(scores, served.ids)  # the same at every margin

    def on_val(m: float) -> dict[str, float]:
        margins = agent_margins(served, m)
        routes = [select(row, served.ids, min_k=p.min_k, max_k=p.max_k, margin=margins) for row in scores]
        return {k: round(v, 4) for k, v in router_metrics(routes, val, ranked).items()}

    selection = {"margin": 0.0 if margin is None else margin, "target_oos_recall": p.target_oos_recall,
                 "chosen_on": "val" if margin is not None else "none (val has no out-of-scope prompt): separator only",
                 "val": on_val(0.0 if margin is None else margin), "val_separator_only": on_val(0.0)}
    # The trade-off the margin sets on val: in-scope accuracy against OOS recall, lead by lead.
    leads = np.unique(np.round(scores[:, :-1].max(1) - scores[:, -1], 3))
    grid = np.unique(np.quantile(leads, np.linspace(0, 1, SWEEP_POINTS))) if len(leads) else np.zeros(0)
    sweep = []
    for m in grid:
        figures = on_val(float(m))
        sweep.append({"margin": float(m), "in_scope_accuracy": figures["in_scope_accuracy"],
                      "oos_recall": figures["oos_recall"]})
    return ranker, served, selection, sweep


def write_plots(folder: Path, ranker: AgentRanker, sweep: list[dict[str, float]]) -> None:
    """loss.csv (train and val loss per epoch) and margin.csv (the val trade-off) for dvc plots."""
    write_csv(folder / "loss.csv", ["epoch", "train_loss", "val_loss"],
              [[r["epoch"], r["train_loss"], r.get("val_loss", "")] for r in ranker.history_])
    write_csv(folder / "margin.csv", ["margin", "in_scope_accuracy", "oos_recall"],
              [[s["margin"], s["in_scope_accuracy"], s["oos_recall"]] for s in sweep])


def run(params: Params, data: Path, out: Path, metrics: Path, embeddings: Path | None = None,
        plots: Path | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    agents = contracts.read_agents(data / "agents.jsonl")
    train_rows = contracts.read_routing(data / "routing" / "train.jsonl")
    val_rows = contracts.read_routing(data / "routing" / "val.jsonl")
    tuned = tuned_encoder_dir(out)
    shutil.rmtree(tuned, ignore_errors=True)  # never serve a stale tuned encoder
    prepare_encoder(params.encoder, train_rows, agents, tuned, log=lambda r: log.info("encoder %s", r))
    encoder_seconds = time.perf_counter() - start
    encoder = stage_encoder(params.encoder, out, embeddings)
    ranker, index, selection, sweep = train(params, agents, train_rows, val_rows, encoder)
    ranker.save(out)
    index.save(out)
    write_json(out / SELECTION, selection)
    if plots is not None:
        write_plots(plots, ranker, sweep)
    best = min(ranker.history_, key=lambda r: r.get("val_loss", r["train_loss"]))
    result = {"agents": len(agents), "train_prompts": len(train_rows), "val_prompts": len(val_rows),
              "examples": len(index.examples), "epochs_run": len(ranker.history_), "best_epoch": best["epoch"],
              "val_loss": best.get("val_loss"), "margin": selection["margin"], "val": selection["val"],
              "val_separator_only": selection["val_separator_only"],
              "encoder_finetuned": params.encoder.finetune.enabled,
              "encoder_seconds": round(encoder_seconds, 2), "seconds": round(time.perf_counter() - start, 2)}
    write_json(metrics, result)
    return result
