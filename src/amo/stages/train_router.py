"""Stage `train_router`: tune the encoder when params ask, embed agents and prompts, fit the
listwise ranker with its separator.

    amo train-router --data data --out artifacts/router --metrics metrics/train_router.json
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from amo import data as contracts
from amo.config import Params
from amo.data import write_json
from amo.encoder_tuning import prepare_encoder, stage_encoder, tuned_encoder_dir
from amo.router import ListwiseRouter
from amo.routing import AgentIndex, grade_matrix

log = logging.getLogger("amo")


def train(params: Params, agents: list[contracts.Agent], train: list[contracts.RoutingExample],
          val: list[contracts.RoutingExample], encoder: Any) -> tuple[ListwiseRouter, AgentIndex]:
    """The fitted router and the agent index it was trained against (pure: no files)."""
    index = AgentIndex.build(agents, encoder)
    x_train = encoder.encode([e.prompt for e in train])
    x_val = encoder.encode([e.prompt for e in val])
    p = params.router
    router = ListwiseRouter(hidden=p.hidden, dropout=p.dropout, epochs=p.epochs, lr=p.lr,
                            weight_decay=p.weight_decay, batch_size=p.batch_size, seed=p.seed,
                            proj_dim=p.proj_dim, scorer=p.scorer, oos_weight=p.oos_weight)
    router.fit(x_train, grade_matrix(train, index.ids), index.embeddings,
               val=(x_val, grade_matrix(val, index.ids)))
    return router, index


def run(params: Params, data: Path, out: Path, metrics: Path) -> dict[str, Any]:
    start = time.perf_counter()
    agents = contracts.read_agents(data / "agents.jsonl")
    train_rows = contracts.read_routing(data / "routing" / "train.jsonl")
    val_rows = contracts.read_routing(data / "routing" / "val.jsonl")
    tuned = tuned_encoder_dir(out)
    shutil.rmtree(tuned, ignore_errors=True)  # never serve a stale tuned encoder
    prepare_encoder(params.encoder, train_rows, agents, tuned, log=lambda r: log.info("encoder %s", r))
    encoder_seconds = time.perf_counter() - start
    router, index = train(params, agents, train_rows, val_rows, stage_encoder(params.encoder, out))
    router.save(out)
    index.save(out)
    best = min(router.history_, key=lambda r: r.get("val_loss", r["train_loss"]))
    result = {"agents": len(agents), "train_prompts": len(train_rows), "val_prompts": len(val_rows),
              "best_epoch": best["epoch"], "val_loss": best.get("val_loss"),
              "encoder_finetuned": params.encoder.finetune.enabled,
              "encoder_seconds": round(encoder_seconds, 2), "seconds": round(time.perf_counter() - start, 2)}
    write_json(metrics, result)
    return result
