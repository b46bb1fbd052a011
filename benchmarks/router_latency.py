"""Route latency for one prompt, encoder included: torch vs onnxruntime, on this machine.

    python benchmarks/router_latency.py --source ../shared/datasets/clinc150

The agents are a data set's first `--agents` agents (CLINC150: its 150 intents). A router is
fitted briefly on the data set's training prompts (latency does not depend on the weights), then
one test prompt at a time is routed end to end:
  torch: sentence-transformers encoder + torch scorer + select
  onnx:  ONNX encoder (tokenizers + onnxruntime) + ONNX scorer + select
Both run with `--threads` threads (1); after a warm-up the two paths alternate on the same prompts
in a random order per prompt, so load from other processes on the shared machine falls on both
alike. Wall-clock and this thread's CPU time are both recorded. Writes
benchmarks/results/router_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from router_clinc150 import common_arguments, embed, train_router

from amo.config import RouterParams, load_params
from amo.data import Agent, RoutingExample
from amo.importers import load
from amo.models import Encoder, resolve_encoder
from amo.onnx_encoder import OnnxEncoder, export_encoder
from amo.onnx_router import OnnxScorer, export_router
from amo.router import ListwiseRouter
from amo.routing import Route, grade_matrix, select


def percentiles(wall: list[float], cpu: list[float]) -> dict[str, float]:
    """Wall-clock p50/p99 (the targets), plus this thread's CPU time, which other processes
    competing for the cores do not inflate."""
    ms, cpu_ms = np.array(wall) * 1000, np.array(cpu) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3), "min_ms": round(float(ms.min()), 3),
            "cpu_p50_ms": round(float(np.percentile(cpu_ms, 50)), 3),
            "cpu_p99_ms": round(float(np.percentile(cpu_ms, 99)), 3)}


def route_paths(router: ListwiseRouter, encoder: Encoder, descriptions: list[str], agents: np.ndarray,
                ids: list[str], r: RouterParams, folder: Path, threads: int) -> dict[str, Callable[[str], Route]]:
    """One prompt -> Route, two ways: sentence-transformers + torch scorer, and the ONNX encoder +
    ONNX scorer exported into `folder` (onnxruntime with `threads` threads)."""
    export_encoder(encoder.path, folder)
    onnx_encoder = OnnxEncoder(folder, threads=threads)
    scorer = OnnxScorer(export_router(router, folder / "router.onnx"), threads=threads)
    onnx_agents = onnx_encoder.encode(descriptions)

    def route_torch(prompt: str) -> Route:
        scores = router.score(encoder.encode([prompt]), agents)[0]
        return select(scores, ids, min_k=r.min_k, max_k=r.max_k, margin=r.margin)

    def route_onnx(prompt: str) -> Route:
        scores = scorer.score(onnx_encoder.encode([prompt]), onnx_agents)[0]
        return select(scores, ids, min_k=r.min_k, max_k=r.max_k, margin=r.margin)

    return {"torch": route_torch, "onnx": route_onnx}


def time_routes(paths: dict[str, Callable[[str], Route]], prompts: list[str], runs: int, warmup: int,
                seed: int) -> dict[str, Any]:
    """Time each route path on the same prompts, alternating in a random order per prompt, after
    `warmup` untimed rounds; also counts how often the paths select the same agents."""
    rng = random.Random(seed)
    for i in range(warmup):
        for route in paths.values():
            route(prompts[i % len(prompts)])
    wall: dict[str, list[float]] = {name: [] for name in paths}
    cpu: dict[str, list[float]] = {name: [] for name in paths}
    same_selection = 0
    load_before = os.getloadavg()
    for i in range(runs):
        prompt = prompts[(warmup + i) % len(prompts)]
        order = list(paths)
        rng.shuffle(order)
        answers = {}
        for name in order:
            start, start_cpu = time.perf_counter(), time.thread_time()
            answers[name] = paths[name](prompt)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.thread_time() - start_cpu)
        same_selection += len({tuple(a for a, _ in answer.agents) for answer in answers.values()}) == 1
    load_after = os.getloadavg()
    out: dict[str, Any] = {name: percentiles(wall[name], cpu[name]) for name in paths}
    if {"torch", "onnx"} <= set(paths):
        out["speedup_p50"] = round(float(np.median(wall["torch"]) / np.median(wall["onnx"])), 2)
        out["cpu_speedup_p50"] = round(float(np.median(cpu["torch"]) / np.median(cpu["onnx"])), 2)
    out.update({
        "same_selection_fraction": round(same_selection / runs, 4), "runs": runs, "warmup": warmup,
        "machine": {"cpus": os.cpu_count(), "shared": True,
                    "note": "the load averages before and after say how busy the 2 cores were",
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in load_after]}})
    return out


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                              "clinc150", "router_latency.json", epochs=3, batch_size=128)
    parser.add_argument("--dataset", default="clinc150", help="an importer name")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="route settings")
    parser.add_argument("--scorer", default="mlp")
    parser.add_argument("--oos-weight", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--agents", type=int, default=150)
    parser.add_argument("--fit-prompts", type=int, default=3000, help="train/val prompts for the fit")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import onnxruntime
    import torch

    args = arguments(argv)
    torch.set_num_threads(args.threads)
    data = load(args.dataset, args.source)
    agents = [Agent.from_record(a) for a in data.agents[: args.agents]]
    ids = [a.id for a in agents]
    keep = set(ids)
    splits = {name: [RoutingExample(r["prompt"], {a: g for a, g in r["labels"].items() if a in keep})
                     for r in rows] for name, rows in data.routing.items()}
    prompts = [e.prompt for e in splits.pop("test")]
    # latency does not depend on the weights: a short fit (--epochs, --fit-prompts) gives a real scorer
    splits = {name: rows[: args.fit_prompts] for name, rows in splits.items()}
    encoder = Encoder(resolve_encoder(args.encoder))
    agent_x, x = embed(encoder, agents, splits, args.cache)
    router, _ = train_router(args, args.scorer, args.proj_dim, x["train"], grade_matrix(splits["train"], ids),
                             agent_x, (x["val"], grade_matrix(splits["val"], ids)))
    with tempfile.TemporaryDirectory() as tmp:
        paths = route_paths(router, encoder, [a.description for a in agents], agent_x, ids,
                            load_params(args.params).router, Path(tmp), args.threads)
        latency = time_routes(paths, prompts, args.runs, args.warmup, args.seed)

    result = {
        "command": "python " + shlex.join(["benchmarks/router_latency.py", *(argv or sys.argv[1:])]),
        "n_agents": len(ids),
        **latency,
        "targets": {"onnx_p50_le_5ms": latency["onnx"]["p50_ms"] <= 5.0,
                    "speedup_ge_2x": latency["speedup_p50"] >= 2.0},
        "threads": args.threads, "dataset": args.dataset, "prompts": len(prompts),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "route_path": {"torch": "sentence-transformers encode + torch scorer + select",
                       "onnx": "tokenizers + ONNX encoder + ONNX scorer + select"},
        "settings": {k: v for k, v in vars(args).items() if k not in ("source", "cache", "out")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    for name in ("torch", "onnx"):
        row = latency[name]
        print(f"{name:<6} p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  "
              f"(cpu p50 {row['cpu_p50_ms']:.2f} ms)")
    print(f"speedup at p50: {latency['speedup_p50']}x over {len(ids)} agents, {args.runs} runs, "
          f"{args.threads} thread(s)")
    return result


if __name__ == "__main__":
    main()
