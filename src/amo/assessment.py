"""A bundle scored on the current test data, the way the runtime serves it.

The promotion gate calls this for the candidate and for the champion, so both are judged on the
same prompts and traces (today's test split, new agents' rows included), never on numbers each
bundle carried from its own, older split.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from amo import data as contracts
from amo.brain import Brain
from amo.bundle import ARMS_MEASURED_IN, RUNTIME, read_manifest
from amo.metrics import planner_metrics, planner_rows, router_metrics, router_rows
from amo.onnx_encoder import ENCODER_FILES
from amo.routing import rankings


def _top_agents(labels: dict[str, int]) -> list[str]:
    top = max(labels.values())
    return sorted(agent for agent, grade in labels.items() if grade == top)


_SCORED: dict[tuple[str, str], dict[str, Any]] = {}  # (bundle files, test data) -> scores, per process


def _key(bundle: Path, data: Path) -> tuple[str, str]:
    """What the scores depend on: the bundle's file hashes (not its manifest, which `measure`
    rewrites) and the bytes of the test splits."""
    files = json.dumps(read_manifest(bundle)["files"], sort_keys=True)
    test = hashlib.sha256()
    for path in (data / "routing" / "test.jsonl", data / "traces" / "test.jsonl"):
        test.update(path.read_bytes())
    return hashlib.sha256(files.encode()).hexdigest(), test.hexdigest()


_EMBEDDED: dict[str, dict[str, np.ndarray]] = {}  # encoder identity -> prompt -> vector, per process


def _embeddings(brain: Brain, prompts: list[str]) -> np.ndarray:
    """The prompts' vectors by `brain`'s encoder, embedded once per encoder identity (the hashes of
    the encoder files the manifest seals): a candidate and its champion that share an encoder, as
    every index-only bundle does, embed the test prompts once between them."""
    files = brain.manifest["files"]
    sealed = {name: files.get(f"router/{name}") for name in ENCODER_FILES}
    identity = json.dumps(sealed if all(sealed.values()) else brain.manifest["models"]["encoder"], sort_keys=True)
    known = _EMBEDDED.setdefault(identity, {})
    missing = list(dict.fromkeys(p for p in prompts if p not in known))
    if missing:
        known.update(zip(missing, brain.embed(missing)))
    return np.array([known[p] for p in prompts], np.float32).reshape(len(prompts), -1)


def assess_bundle(bundle: Path, data: Path) -> dict[str, Any]:
    """Router and planner metrics of `bundle` on `data`'s test splits, overall, per agent and
    per row, plus the arms' scores its own arm stages measured (the arms are byte-identical files, gated
    against the base model and the champion's arms). The same files on the same test data are
    scored once per process (the cheap path measures its bundle, then the gate scores it)."""
    key = _key(bundle, data)
    if key not in _SCORED:
        _SCORED[key] = _score(bundle, data)
    stored = read_manifest(bundle)["metrics"]  # the gate verified the bundle first
    # Every arm the bundle serves is gated: one without scores fails the gate by name.
    served = json.loads((bundle / RUNTIME).read_text()).get("arms", [])
    arms = {name: {} for name in served} | stored.get("arms", {})
    carried = {ARMS_MEASURED_IN: stored[ARMS_MEASURED_IN]} if ARMS_MEASURED_IN in stored else {}
    return {**copy.deepcopy(_SCORED[key]), "arms": arms, **carried}


def _score(bundle: Path, data: Path) -> dict[str, Any]:
    brain = Brain(bundle)
    routing = contracts.read_routing(data / "routing" / "test.jsonl")
    traces = contracts.read_traces(data / "traces" / "test.jsonl")
    prompts = [e.prompt for e in routing]
    scores = brain.score_many(prompts, _embeddings(brain, prompts))
    routes = [brain.route_scores(row) for row in scores]
    ranked = rankings(scores, brain.agent_ids)
    router = router_metrics(routes, routing, ranked)
    trace_prompts = [t.prompt for t in traces]
    plans = [plan.path for _, plan in brain.plan_many(trace_prompts, _embeddings(brain, trace_prompts))]
    planner = planner_metrics(plans, [t.path for t in traces])

    # Per agent: how often a prompt whose top label is the agent is routed to it first, and how
    # often a trace that calls it is planned with it.
    routed: dict[str, list[bool]] = defaultdict(list)
    for route, example in zip(routes, routing):
        if example.labels:
            first = route.agents[0][0] if route.agents else None
            for agent in _top_agents(example.labels):
                routed[agent].append(first == agent)
    planned: dict[str, list[bool]] = defaultdict(list)
    for path, trace in zip(plans, traces):
        for agent in set(trace.path):
            planned[agent].append(agent in path)
    per_agent = {agent: {**({"route_top1": round(float(np.mean(routed[agent])), 4), "prompts": len(routed[agent])}
                            if agent in routed else {}),
                         **({"plan_contains": round(float(np.mean(planned[agent])), 4),
                             "traces": len(planned[agent])} if agent in planned else {})}
                 for agent in sorted(set(routed) | set(planned))}
    return {"router": router, "planner": planner,
            "per_agent": per_agent, "data": {"routing_test": len(routing), "traces_test": len(traces)},
            # Per test row, so the gate can tell a real regression from a few flipped rows.
            "rows": {"router": router_rows(routes, routing, ranked),
                     "planner": planner_rows(plans, [t.path for t in traces])}}
