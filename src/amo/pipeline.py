"""The pipeline's stages, one function each; `dvc.yaml` calls them through the `amo` CLI.

Each stage reads its inputs from the paths below, writes its own output folder, and
returns the metrics it also writes to `metrics/`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from amo import data as contracts
from amo.config import Params

log = logging.getLogger("amo")

ROUTER_DIR = Path("artifacts/router")
TUNED_ENCODER_DIR = ROUTER_DIR / "encoder"  # written by train_router when encoder.finetune.enabled
ONNX_PATH = Path("artifacts/router_onnx/router.onnx")
ARMS_DIR = Path("artifacts/arms")
PLANNER_DIR = Path("artifacts/planner")
METRICS_DIR = Path("metrics")
BUNDLE_DIR = Path("build/bundle")
DATA_DOCS_DIR = Path("gx/data_docs")  # great-expectations data docs of the last validation


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def encoder_dir(params: Params) -> Path:
    """The encoder every stage from train_router on embeds with, and the one the bundle serves."""
    from amo.encoder_tuning import served_encoder

    return served_encoder(params.encoder, TUNED_ENCODER_DIR)


def encoder_for(params: Params) -> Encoder:  # noqa: F821
    from amo.models import Encoder

    return Encoder(encoder_dir(params), params.encoder.batch_size)


def _split(params: Params, kind: str, split: str) -> Path:
    return Path(params.data.dir) / kind / f"{split}.jsonl"


# -- validate ---------------------------------------------------------------------------------
def validate(params: Params) -> dict[str, Any]:
    from amo.validate import validate_data

    d = params.data
    report = validate_data(Path(d.dir), tasks=None,
                           min_description_chars=d.min_description_chars,
                           max_description_chars=d.max_description_chars,
                           max_prompt_chars=d.max_prompt_chars, max_task_chars=d.max_task_chars,
                           report_path=METRICS_DIR / "validation.json", docs_dir=DATA_DOCS_DIR)
    # Small reports per consumer: the router's (agents + routing) and one per task folder. Each
    # training stage depends on its own, so new rows in one task's data do not retrain the
    # router or the other arms.
    root = Path(d.dir).name

    def part(path: Path, *prefixes: str) -> None:
        files = {k: v for k, v in report["files"].items() if k.startswith(prefixes)}
        write_json(path, {"ok": report["ok"], "files": files})

    part(METRICS_DIR / "validation" / "router.json", f"{root}/agents.jsonl", f"{root}/routing/")
    for folder in sorted(p for p in (Path(d.dir) / "tasks").glob("*") if p.is_dir()):
        part(METRICS_DIR / "validation" / "tasks" / f"{folder.name}.json", f"{root}/tasks/{folder.name}/")
    return report


# -- router -----------------------------------------------------------------------------------
def train_router(params: Params) -> dict[str, Any]:
    """Embed agents and prompts with the encoder (fine-tuned first on the train split when
    `encoder.finetune.enabled`); fit the listwise ranker."""
    import shutil

    from amo.encoder_tuning import prepare_encoder
    from amo.router import ListwiseRouter
    from amo.routing import AgentIndex, grade_matrix

    start = time.perf_counter()
    agents = contracts.read_agents(Path(params.data.dir) / "agents.jsonl")
    train = contracts.read_routing(_split(params, "routing", "train"))
    val = contracts.read_routing(_split(params, "routing", "val"))
    shutil.rmtree(TUNED_ENCODER_DIR, ignore_errors=True)  # never serve a stale tuned encoder
    prepare_encoder(params.encoder, train, agents, TUNED_ENCODER_DIR, log=lambda r: log.info("encoder %s", r))
    encoder_seconds = time.perf_counter() - start
    encoder = encoder_for(params)
    index = AgentIndex.build(agents, encoder)
    x_train = encoder.encode([e.prompt for e in train])
    x_val = encoder.encode([e.prompt for e in val])
    p = params.router
    router = ListwiseRouter(hidden=p.hidden, dropout=p.dropout, epochs=p.epochs, lr=p.lr,
                            weight_decay=p.weight_decay, batch_size=p.batch_size, seed=p.seed,
                            proj_dim=p.proj_dim, scorer=p.scorer, oos_weight=p.oos_weight)
    router.fit(x_train, grade_matrix(train, index.ids), index.embeddings,
               val=(x_val, grade_matrix(val, index.ids)))
    router.save(ROUTER_DIR)
    index.save(ROUTER_DIR)
    best = min(router.history_, key=lambda r: r.get("val_loss", r["train_loss"]))
    metrics = {"agents": len(agents), "train_prompts": len(train), "val_prompts": len(val),
               "best_epoch": best["epoch"], "val_loss": best.get("val_loss"),
               "encoder_finetuned": params.encoder.finetune.enabled,
               "encoder_seconds": round(encoder_seconds, 2), "seconds": round(time.perf_counter() - start, 2)}
    write_json(METRICS_DIR / "train_router.json", metrics)
    return metrics


def add_agent(params: Params, agent: contracts.Agent, agents_file: Path | None,
              index_dir: Path | None, encoder: Any = None) -> dict[str, Any]:
    """Append `agent` to the agents file and/or the router's agent index (embedding only its
    description), so it is routable without retraining. Refuses a bad id, a description outside
    params.yaml's bounds, or an id already present, before writing anything."""
    import re

    from amo.routing import AgentError, AgentIndex
    from amo.validate import AGENT_ID_PATTERN

    d = params.data
    if not re.fullmatch(AGENT_ID_PATTERN.strip("^$"), agent.id):
        raise AgentError(f"agent id {agent.id!r} must match {AGENT_ID_PATTERN}")
    if not d.min_description_chars <= len(agent.description.strip()) <= d.max_description_chars:
        raise AgentError(f"agent {agent.id!r}: description must have {d.min_description_chars}-"
                         f"{d.max_description_chars} characters, got {len(agent.description.strip())}")
    if agents_file is None and index_dir is None:
        raise AgentError("nothing to update: give an agents file, an index folder, or both")
    if agents_file is not None:
        existing = contracts.read_agents(agents_file) if agents_file.is_file() else []
        if any(a.id == agent.id for a in existing):
            raise AgentError(f"{agents_file}: agent {agent.id!r} already exists")
    index = None
    if index_dir is not None:
        index = AgentIndex.load(index_dir)  # FileNotFoundError names the missing file
        if agent.id in index.ids:
            raise AgentError(f"{index_dir}: agent {agent.id!r} is already in the index")
    result: dict[str, Any] = {"agent": agent.id}
    if index is not None:
        index = index.add([agent], encoder or encoder_for(params))
        index.save(index_dir)
        result["index"] = {"path": str(index_dir), "agents": len(index.ids)}
    if agents_file is not None:
        record = {"id": agent.id, "description": agent.description, "domain": agent.domain,
                  "tags": list(agent.tags)}
        agents_file.parent.mkdir(parents=True, exist_ok=True)
        with open(agents_file, "a", encoding="utf-8", newline="\n") as handle:
            handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        result["agents_file"] = str(agents_file)
    return result


def export_router(params: Params) -> dict[str, Any]:
    """Export the scorer to ONNX and check it against torch on the real agent index."""
    from amo.onnx_router import OnnxScorer
    from amo.onnx_router import export_router as export
    from amo.router import ListwiseRouter
    from amo.routing import AgentIndex

    router = ListwiseRouter.load(ROUTER_DIR)
    index = AgentIndex.load(ROUTER_DIR)
    export(router, ONNX_PATH)
    probe = index.embeddings[: min(8, len(index.embeddings))]
    gap = float(np.abs(OnnxScorer(ONNX_PATH).score(probe, index.embeddings)
                       - router.score(probe, index.embeddings)).max())
    if gap > 1e-4:
        raise RuntimeError(f"ONNX and torch router scores differ by {gap:.2e} (> 1e-4)")
    metrics = {"max_abs_diff_vs_torch": gap, "onnx_bytes": ONNX_PATH.stat().st_size,
               **export_encoder_onnx(params, [a.description for a in index.agents[:16]])}
    write_json(METRICS_DIR / "export_router.json", metrics)
    return metrics


def export_encoder_onnx(params: Params, probe: list[str]) -> dict[str, Any]:
    """Export the encoder next to the router ONNX (routing then needs no torch) and check it
    against sentence-transformers on real texts."""
    from amo.onnx_encoder import ENCODER_ONNX, OnnxEncoder, export_encoder

    export_encoder(encoder_dir(params), ONNX_PATH.parent)
    gap = float(np.abs(OnnxEncoder(ONNX_PATH.parent).encode(probe)
                       - encoder_for(params).encode(probe)).max()) if probe else 0.0
    if gap > 1e-4:
        raise RuntimeError(f"ONNX and sentence-transformers embeddings differ by {gap:.2e} (> 1e-4)")
    return {"encoder_max_abs_diff_vs_torch": gap,
            "encoder_onnx_bytes": (ONNX_PATH.parent / ENCODER_ONNX).stat().st_size}


# -- arms -------------------------------------------------------------------------------------
def finetune_arm(params: Params, task_name: str) -> dict[str, Any]:
    """Fine-tune one task's LoRA adapter, evaluate it against the base model, save it."""
    from amo.arms import checkpoint_dir, clear_checkpoint, evaluate_arm, save_arm, train_arm
    from amo.models import fingerprint, load_base_model, resolve_base_model

    if task_name not in params.arms.tasks:
        raise KeyError(f"unknown task {task_name!r}; params.yaml arms.tasks has: "
                       f"{', '.join(sorted(params.arms.tasks))}")
    task = params.arms.tasks[task_name]
    train = contracts.read_task(Path(task.data) / "train.jsonl")
    test = contracts.read_task(Path(task.data) / "test.jsonl")
    base_ref = resolve_base_model(params.base_model.path, params.base_model.gguf_file)
    base, tokenizer = load_base_model(base_ref)
    checkpoint = checkpoint_dir(ARMS_DIR / task_name)
    model, result = train_arm(base, tokenizer, task_name, task, train, log=log.info, checkpoint=checkpoint)
    scores = evaluate_arm(model, tokenizer, task_name, task, test)
    metrics = {"task": task_name, "train_examples": len(train), "steps": result.steps,
               "final_loss": result.final_loss, "train_seconds": round(result.seconds, 1), **scores}
    save_arm(model, task_name, task, ARMS_DIR / task_name,
             {"base_model": fingerprint(base_ref), "metrics": metrics})
    write_json(METRICS_DIR / "arms" / f"{task_name}.json", metrics)
    clear_checkpoint(checkpoint)
    return metrics


# -- planner ----------------------------------------------------------------------------------
def router_view(prompts: list[str], index: AgentIndex, encoder: Encoder,  # noqa: F821
                scorer: OnnxScorer) -> tuple[np.ndarray, np.ndarray]:  # noqa: F821
    """Prompt embeddings (N, D) and the router's scores (N, A + 1): one per agent of `index`,
    the separator last."""
    embeddings = encoder.encode(prompts)
    return embeddings, scorer.score(embeddings, index.embeddings)


def _router_parts(params: Params) -> tuple[AgentIndex, Encoder, OnnxScorer]:  # noqa: F821
    """The trained agent index, the encoder and the ONNX scorer, loaded once per stage."""
    from amo.onnx_router import OnnxScorer
    from amo.routing import AgentIndex

    return AgentIndex.load(ROUTER_DIR), encoder_for(params), OnnxScorer(ONNX_PATH)


def fit_planner(params: Params) -> dict[str, Any]:
    from amo.planner import TreePlanner

    traces = contracts.read_traces(_split(params, "traces", "train"))
    prompts = [t.prompt for t in traces]
    index, encoder, scorer = _router_parts(params)
    embeddings, scores = router_view(prompts, index, encoder, scorer)
    p = params.planner
    planner = TreePlanner(pca_dims=p.pca_dims, max_depth=p.max_depth, min_samples_leaf=p.min_samples_leaf,
                          next_max_depth=p.next_max_depth, next_min_samples_leaf=p.next_min_samples_leaf,
                          min_next=p.min_next, neighbours=p.neighbours,
                          max_path_len=p.max_path_len, seed=p.seed, candidates=p.candidates, folds=p.folds,
                          rerank_neighbours=p.rerank_neighbours, rerank_max_depth=p.rerank_max_depth,
                          rerank_min_samples_leaf=p.rerank_min_samples_leaf)
    planner.fit(prompts, embeddings, scores[:, :-1], scores[:, -1].tolist(), [t.path for t in traces], index.ids)
    planner.save(PLANNER_DIR)
    metrics = {"train_traces": len(traces), "stop_tree_nodes": len(planner.stop_tree_["left"]),
               "next_tree_nodes": len(planner.next_tree_["left"]),
               "rerank_tree_nodes": len(planner.rerank_tree_["left"]) if planner.rerank_tree_ else 0}
    write_json(METRICS_DIR / "fit_planner.json", metrics)
    return metrics


# -- evaluate ---------------------------------------------------------------------------------
def evaluate_router(routes: list[Route], examples: list[contracts.RoutingExample],  # noqa: F821
                    rankings: list[list[str]]) -> dict[str, float]:
    from amo.metrics import ndcg_at_k, set_f1

    in_scope = [i for i, e in enumerate(examples) if e.labels]
    oos = [i for i, e in enumerate(examples) if not e.labels]
    abstained = [i for i, r in enumerate(routes) if r.abstained]

    def primary_hit(i: int) -> bool:
        top = max(examples[i].labels.values())
        return bool(routes[i].agents) and examples[i].labels.get(routes[i].agents[0][0]) == top

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else 0.0

    return {
        "in_scope_accuracy": mean([primary_hit(i) for i in in_scope]),
        "oos_recall": mean([routes[i].abstained for i in oos]),
        "oos_precision": mean([not examples[i].labels for i in abstained]),
        "selection_f1": mean([set_f1([a for a, _ in r.agents], e.labels) for r, e in zip(routes, examples)]),
        "ndcg_at_5": mean([ndcg_at_k(rankings[i], examples[i].labels) for i in in_scope]),
        "prompts": len(examples),
    }


def evaluate_planner(predicted: list[list[str]], gold: list[tuple[str, ...]]) -> dict[str, float]:
    from amo.metrics import links, set_f1

    return {
        "exact_path": float(np.mean([list(p) == list(g) for p, g in zip(predicted, gold)])),
        "node_f1": float(np.mean([set_f1(p, g) for p, g in zip(predicted, gold)])),
        "link_f1": float(np.mean([set_f1([f"{a}>{b}" for a, b in links(p)],
                                         [f"{a}>{b}" for a, b in links(g)]) for p, g in zip(predicted, gold)])),
        "traces": len(gold),
    }


def evaluate(params: Params) -> dict[str, Any]:
    """Router and planner on the held-out splits through the exported ONNX scorer (what ships),
    plus each arm's metrics from its own stage."""
    from amo.planner import TreePlanner
    from amo.routing import select

    r = params.router
    index, encoder, scorer = _router_parts(params)
    ids = index.ids
    test = contracts.read_routing(_split(params, "routing", "test"))
    _, scores = router_view([e.prompt for e in test], index, encoder, scorer)
    routes = [select(row, ids, min_k=r.min_k, max_k=r.max_k, margin=r.margin) for row in scores]
    rankings = [[ids[i] for i in np.argsort(-row[:-1], kind="stable")] for row in scores]
    router_metrics = evaluate_router(routes, test, rankings)

    traces = contracts.read_traces(_split(params, "traces", "test"))
    planner = TreePlanner.load(PLANNER_DIR)
    embeddings, t_scores = router_view([t.prompt for t in traces], index, encoder, scorer)
    predicted = [planner.plan_scores(t.prompt, e, ids, row, explain=False).path
                 for t, e, row in zip(traces, embeddings, t_scores)]
    arms = {name: json.loads((METRICS_DIR / "arms" / f"{name}.json").read_text())
            for name in sorted(params.arms.tasks)}
    metrics = {"router": router_metrics, "planner": evaluate_planner(predicted, [t.path for t in traces]),
               "arms": {name: {"arm": m["arm"], "base": m["base"]} for name, m in arms.items()}}
    write_json(METRICS_DIR / "evaluation.json", metrics)
    return metrics
