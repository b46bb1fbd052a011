"""Stage `train_router`: tune the encoder when params ask, embed agents and prompts, fit the
ranker (amo.ranker) with its separator, build the agent index the bundle serves (descriptions
plus every training prompt as an example of its agents), and choose the margin over the
separator on the validation split.

A retrain warm-starts from the champion's ranker (`router.warm_start`, amo.ranker): the promoted
bundle's, unless `--champion` names another router folder. It goes cold when warm start is off,
there is no champion, the champion was embedded with another encoder, has another ranker layout or
too few rows, or ends a run of `max_generations` warm retrains. `lineage.json` in the router folder
names the parent a warm router started from (the champion is not a DVC dependency: this file is
the record of it); the metrics say why a retrain went cold, so a cold router's bytes depend on its
declared inputs only.

    amo train-router --data data --embeddings artifacts/embeddings --out artifacts/router --metrics metrics/train_router.json --plots metrics/plots/router
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from amo import data as contracts
from amo.config import Params
from amo.data import write_csv, write_json
from amo.embeddings import encoder_identity, text_keys
from amo.encoder_tuning import prepare_encoder, stage_encoder, tuned_encoder_dir
from amo.metrics import router_metrics
from amo.ranker import WEIGHTS, AgentRanker
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
LINEAGE = "lineage.json"  # which champion the ranker warm-started from, or why it went cold


def champion_ranker(params: Params, champion: Path | None, encoder: str) -> tuple[AgentRanker | None, dict[str, Any]]:
    """The champion's ranker to warm-start from (a router folder, or a bundle folder holding one
    under router/) when `router.warm_start` allows it, else None; and the lineage record saying
    which, or why not."""
    w = params.router.warm_start
    record: dict[str, Any] = {"mode": "cold", "parent": None, "encoder": encoder}
    # The champion as the project names it (registry/bundles/ID), not this machine's absolute
    # path: the record goes into the committed metrics.
    shown = (str(champion.resolve().relative_to(Path.cwd().resolve()))
             if champion is not None and champion.resolve().is_relative_to(Path.cwd().resolve()) else str(champion))
    if champion is not None and (champion / "router" / WEIGHTS).is_file():
        manifest = champion / "manifest.json"
        record["parent"] = {"path": shown, "bundle_id": json.loads(manifest.read_text()).get("bundle_id")
                            if manifest.is_file() else None}
        champion = champion / "router"
    elif champion is not None:
        record["parent"] = {"path": shown, "bundle_id": None}

    def cold(reason: str) -> tuple[None, dict[str, Any]]:
        log.info("router: cold retrain: %s", reason)
        return None, {**record, "reason": reason}

    if not w.enabled:
        return cold("router.warm_start.enabled is false")
    if champion is None:
        return cold("no champion: nothing promoted in the registry")
    if not (champion / WEIGHTS).is_file():
        return cold(f"the champion ({shown}) carries no ranker weights (built before warm start)")
    lineage = json.loads((champion / LINEAGE).read_text()) if (champion / LINEAGE).is_file() else {}
    if lineage.get("encoder") != encoder:
        return cold(f"the encoder changed: the champion embedded with {lineage.get('encoder')}, this run with {encoder}")
    try:
        parent = AgentRanker.load(champion)
    except (ValueError, KeyError, OSError) as exc:
        return cold(f"the champion's ranker cannot be read: {exc}")
    why = AgentRanker.from_params(params.router).compatible(parent)
    if why is not None:
        return cold(why)
    assert parent.crossfit_ is not None
    if len(parent.crossfit_.keys) < w.min_rows:
        return cold(f"the champion trained on {len(parent.crossfit_.keys)} rows < router.warm_start.min_rows "
                    f"= {w.min_rows}: a cold retrain is cheap")
    if parent.generation_ + 1 > w.max_generations:
        return cold(f"{parent.generation_} warm retrains in a row since the last cold one: "
                    f"router.warm_start.max_generations = {w.max_generations}")
    return parent, {**record, "mode": "warm", "reason": None}


def train(params: Params, agents: list[contracts.Agent], train: list[contracts.RoutingExample],
          val: list[contracts.RoutingExample], encoder: Any, parent: AgentRanker | None = None
          ) -> tuple[AgentRanker, AgentIndex, dict[str, Any], list[dict[str, float]]]:
    """The fitted ranker (warm-started from `parent` when given), the index it serves (training
    prompts as examples), the selection rule chosen on `val`, and the val trade-off the margin
    sets, margin by margin (pure: no files)."""
    p = params.router
    index = AgentIndex.build(agents, encoder)
    x_train = encoder.encode([e.prompt for e in train])
    x_val = encoder.encode([e.prompt for e in val])
    g_val = grade_matrix(val, index.ids)
    keys = text_keys([e.prompt for e in train])
    ranker = AgentRanker.from_params(p).fit(index, x_train, grade_matrix(train, index.ids), val=(x_val, g_val),
                                            keys=keys, parent=parent, replay=p.warm_start.replay)
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
        plots: Path | None = None, champion: Path | None = None) -> dict[str, Any]:
    """champion: the router (or bundle) folder to warm-start from; None: a cold retrain."""
    start = time.perf_counter()
    agents = contracts.read_agents(data / "agents.jsonl")
    train_rows = contracts.read_routing(data / "routing" / "train.jsonl")
    val_rows = contracts.read_routing(data / "routing" / "val.jsonl")
    tuned = tuned_encoder_dir(out)
    shutil.rmtree(tuned, ignore_errors=True)  # never serve a stale tuned encoder
    prepare_encoder(params.encoder, train_rows, agents, tuned, log=lambda r: log.info("encoder %s", r))
    encoder_seconds = time.perf_counter() - start
    encoder = stage_encoder(params.encoder, out, embeddings)
    parent, lineage = champion_ranker(params, champion, encoder_identity(encoder.path))
    ranker, index, selection, sweep = train(params, agents, train_rows, val_rows, encoder, parent)
    reason = lineage.pop("reason")  # in the metrics: a cold router's bytes never depend on why it went cold
    if parent is None:
        lineage["parent"] = None
    lineage.update(generation=ranker.generation_, rows=len(train_rows), **(ranker.warm_ or {}))
    ranker.save(out)
    index.save(out)
    write_json(out / SELECTION, selection)
    write_json(out / LINEAGE, lineage)
    if plots is not None:
        write_plots(plots, ranker, sweep)
    # A warm start's epoch 0 is the parent's weights, kept when no epoch beats them on val.
    start_loss = (ranker.warm_ or {}).get("start_val_loss")
    epochs: list[dict[str, float]] = [{"epoch": 0, "val_loss": start_loss}] if start_loss is not None else []
    epochs += ranker.history_
    best = min(epochs, key=lambda r: r.get("val_loss", r.get("train_loss", 0.0))) if epochs else {"epoch": 0}
    warm_start: dict[str, Any] = {"mode": lineage["mode"], "reason": reason, "parent": lineage["parent"],
                                  **{k: lineage[k] for k in ("new_rows", "replay_rows") if k in lineage}}
    result = {"agents": len(agents), "train_prompts": len(train_rows), "val_prompts": len(val_rows),
              "examples": len(index.examples), "crossfit_passes": ranker.passes_,
              "epochs_run": len(ranker.history_), "best_epoch": best["epoch"],
              "val_loss": best.get("val_loss"), "margin": selection["margin"], "val": selection["val"],
              "val_separator_only": selection["val_separator_only"],
              "encoder_finetuned": params.encoder.finetune.enabled,
              "warm_start": warm_start,
              "ranker_seconds": ranker.timings_,
              "encoder_seconds": round(encoder_seconds, 2), "seconds": round(time.perf_counter() - start, 2)}
    write_json(metrics, result)
    return result
