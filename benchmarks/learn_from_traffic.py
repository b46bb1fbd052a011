"""Learning from traffic on the demo copilot (issue 15's last figure): does the loop improve the router?

    python benchmarks/learn_from_traffic.py --repo ../scratch/demo2 [--share 0.3]

`--repo` is a trained demo project (after `dvc repro` and `amo promote`); it is never modified: its
trained state is copied into `--work` (default benchmarks/.cache/learn_from_traffic/, wiped first)
as benchmarks/new_agent.py does. There, with this checkout's code:

1. `before`: the champion's router in-scope accuracy on the test split as it is now, kept aside
   in `--work`/untouched (agents, routing and trace test files), which nothing below changes.
2. Traffic: `amo.demo.traffic` writes prompts only in the wordings the demo generator holds back
   from training, none of them a prompt the data holds in any split (asserted: no test prompt is
   sent). `amo serve` (decision log on by default, AMO_LOG_PROMPTS=true, arms off) answers each
   on POST /route; POST /feedback gives the verdict from its gold labels: ok when the served
   selection is the gold agents in grade order, else wrong with the gold agents ([] = out of scope).
3. `amo data harvest` (its report), then `dvc repro` retrains (validate, embed the new texts,
   train_router, export_router, fit_planner, evaluate, bundle; arms untouched).
4. `after`: the retrained bundle's router in-scope accuracy on the untouched test split. Also
   both bundles on a second, never harvested traffic set (`fresh_traffic`, another seed), and
   the served routes' top-1 share during the traffic.

Merges `learn_from_traffic`, `before` and `after` into benchmarks/results/feedback_loop.json
(benchmarks/feedback_loop.py's keys are kept) and prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "feedback_loop.json"
sys.path.insert(0, str(ROOT / "benchmarks"))

import httpx
from new_agent import copy_repo, current
from reliability import _wait_healthy, free_port

from amo import data as contracts


def key(prompt: str) -> str:
    return prompt.strip().lower()  # amo.validate's comparison key


def gold_order(labels: dict[str, int]) -> list[str]:
    return sorted(labels, key=lambda agent: -labels[agent])


def in_scope_accuracy(bundle: Path, data: Path) -> dict[str, Any]:
    from amo.assessment import assess_bundle

    router = assess_bundle(bundle, data)["router"]
    return {"in_scope_accuracy": round(router["in_scope_accuracy"], 4), "oos_recall": round(router["oos_recall"], 4),
            "selection_f1": round(router["selection_f1"], 4), "prompts": router["prompts"]}


def test_folder(folder: Path, data: Path, routing: list[dict[str, Any]]) -> Path:
    """A data folder holding only what assess_bundle reads: `data`'s agents and trace test file,
    and `routing` as the routing test file."""
    (folder / "routing").mkdir(parents=True)
    (folder / "traces").mkdir(parents=True)
    shutil.copy2(data / "agents.jsonl", folder / "agents.jsonl")
    shutil.copy2(data / "traces" / "test.jsonl", folder / "traces" / "test.jsonl")
    contracts.write_jsonl(folder / "routing" / "test.jsonl", routing)
    return folder


def run(work: Path, env: dict[str, str], *args: str) -> float:
    start = time.monotonic()
    logs = work / "bench-logs"
    with open(logs / f"{Path(args[0]).name}-{len(list(logs.iterdir()))}.log", "w") as log:
        subprocess.run(list(args), cwd=work, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    return round(time.monotonic() - start, 1)


def replay(work: Path, env: dict[str, str], traffic: list[dict[str, Any]]) -> dict[str, Any]:
    """`amo serve` in `work`; each prompt routed, then its verdict from the gold labels."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(work / "bench-logs" / "serve.log", "w") as log:
        server = subprocess.Popen([str(Path(sys.executable).parent / "amo"), "serve", "--port", str(port)],
                                  cwd=work, env=dict(env, AMO_LOG_PROMPTS="true", AMO_ARMS="off"), stdout=log,
                                  stderr=subprocess.STDOUT)
        try:
            _wait_healthy(url, server)
            outcomes = {"ok": 0, "wrong": 0}
            top1 = in_scope = 0
            with httpx.Client(timeout=60) as http:
                for row in traffic:
                    answer = http.post(f"{url}/route", json={"prompt": row["prompt"]})
                    answer.raise_for_status()
                    served = [a["id"] for a in answer.json()["route"]["agents"]]
                    gold = gold_order(row["labels"])
                    if gold:
                        in_scope += 1
                        top1 += bool(served) and served[0] == gold[0]
                    verdict: dict[str, Any] = {"outcome": "ok"} if served == gold else {"outcome": "wrong",
                                                                                        "agents": gold}
                    sent = http.post(f"{url}/feedback", json={"request_id": answer.json()["request_id"], **verdict})
                    assert sent.status_code == 200, sent.text
                    outcomes[verdict["outcome"]] += 1
        finally:
            server.terminate()
            server.wait(30)
    return {"routed": len(traffic), "feedback": outcomes, "served_top1_in_scope": round(top1 / max(in_scope, 1), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, default=ROOT)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".cache" / "learn_from_traffic")
    parser.add_argument("--share", type=float, default=0.3, help="Traffic size as a share of the demo's "
                        "routing prompts per agent (0.3: as many as val and test together).")
    args = parser.parse_args()
    from amo.demo import traffic as demo_traffic

    started = time.monotonic()
    work = args.work.resolve()
    copy_repo(args.repo.resolve(), work)
    (work / "bench-logs").mkdir()  # the runtime's decision log goes to its default, logs/decisions
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMO_", "PREFECT_API_URL"))}
    # the copy's params.yaml may predate the log's default (or turn it off): name the default
    env.update(PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1",
               DVC_NO_ANALYTICS="1", AMO_DECISION_LOG="logs/decisions")
    data = work / "data"
    untouched = test_folder(work / "untouched", data, list(contracts.iter_jsonl(data / "routing" / "test.jsonl")))
    known = [r["prompt"] for part in ("routing/train", "routing/val", "routing/test", "traces/train", "traces/test")
             for r in contracts.iter_jsonl(data / f"{part}.jsonl")]
    traffic = demo_traffic(known, share=args.share)
    fresh = demo_traffic(known + [r["prompt"] for r in traffic], share=args.share / 2, seed=2013)
    test_keys = {key(r["prompt"]) for r in contracts.iter_jsonl(untouched / "routing" / "test.jsonl")}
    # test prompts never enter the traffic (nor any other prompt the data holds)
    assert not test_keys & {key(r["prompt"]) for r in traffic + fresh}
    assert not {key(p) for p in known} & {key(r["prompt"]) for r in traffic + fresh}
    fresh_data = test_folder(work / "fresh", data, fresh)

    champion = work / "registry" / "bundles" / str(current(work))
    before = {"test": in_scope_accuracy(champion, untouched), "fresh_traffic": in_scope_accuracy(champion, fresh_data)}
    print(json.dumps({"before": before}), flush=True)
    served = replay(work, env, traffic)
    seconds = {"harvest": run(work, env, "amo", "data", "harvest", "--report", str(work / "harvest.json"))}
    report = json.loads((work / "harvest.json").read_text())
    seconds["dvc_repro"] = run(work, env, str(Path(sys.executable).parent / "dvc"), "repro")
    after = {"test": in_scope_accuracy(work / "build" / "bundle", untouched),
             "fresh_traffic": in_scope_accuracy(work / "build" / "bundle", fresh_data)}
    test_after = {key(r["prompt"]) for r in contracts.iter_jsonl(untouched / "routing" / "test.jsonl")}
    assert test_after == test_keys  # the measure's test split is the one from before the harvest
    result = {
        "command": shlex.join(["python", "benchmarks/learn_from_traffic.py", *sys.argv[1:]]),
        "repo": str(args.repo), "champion": current(work),
        "retrained_bundle": json.loads((work / "build" / "bundle" / "manifest.json").read_text())["bundle_id"],
        "traffic": {"prompts": len(traffic), "out_of_scope": sum(not r["labels"] for r in traffic),
                    "multi_agent": sum(len(r["labels"]) > 1 for r in traffic),
                    "wordings": "only the demo generator's held-back wordings (amo.demo.traffic, seed 1013)",
                    "test_prompts_in_traffic": 0, **served},
        "harvest": {k: report[k] for k in ("rows_in", "appended", "duplicates_dropped", "refused_by_reason",
                                           "prompt_not_logged", "split")},
        "fresh_traffic_prompts": len(fresh), "before": before, "after": after, "seconds": seconds,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "wall_seconds": round(time.monotonic() - started, 1)}
    saved = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    # the two figures: router in-scope accuracy on the untouched test split
    saved.update({"learn_from_traffic": result, "before": before["test"]["in_scope_accuracy"],
                  "after": after["test"]["in_scope_accuracy"]})
    RESULT.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    print(json.dumps({k: saved[k] for k in ("before", "after", "learn_from_traffic")}, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
