"""Feedback-loop figures (issue 15): what the decision log costs, what kill -9 loses, what a harvest does.

    python benchmarks/feedback_loop.py [--clients 16] [--seconds 6] [--rounds 8] [--kills 10] [--control]

On a tiny real bundle (tests/tiny_bundle.py: the real encoder and ONNX router, 4 agents), served
by `amo serve` on 127.0.0.1 (benchmarks/reliability.py's server and load generator):

0. `decision_write_us_p50/p99`: one DecisionLog.decide() in process (the write(2) an answer waits for).
1. `p99_overhead_ratio`: POST /route p99 with the decision log on over off, `--clients` clients
   for `--seconds` each: both servers up at once, loaded one at a time in `--rounds` pairs
   alternating which goes first (ABBA); the ratio of the medians of the runs' p99.
2. `lost_after_kill9`: 4 clients route until `kill -9` of the runtime at a random moment (`--kills`
   points, each on a fresh server); decisions answered to a client but missing from the log after.
   The log's fsync thread is set to 60 s, so only the write-before-answer rule is measured.
3. `harvest`: scripted traffic with prompts logged: new wordings answered with feedback from their
   gold agents (ok when the route was right, else wrong with the gold agents; a path for the
   multi-agent ones), prompts the data already holds, feedback without a correction and traffic
   on an agent the data has since retired (price_lookup); then `amo data harvest`'s report.

Writes benchmarks/results/feedback_loop.json with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "feedback_loop.json"
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from reliability import _wait_healthy, free_port, run_load, start_server, stop

# (prompt, gold agents main first, path) — worded unlike the tiny data's rows
TRAFFIC = [
    ("my parcel 4411 has not shown up yet", ["order_status"], None),
    ("did order 812 leave the warehouse", ["order_status"], ["order_status"]),
    ("the mug arrived cracked, I want my money back", ["returns_refunds"], ["order_status", "returns_refunds"]),
    ("can I send the jacket back for a refund", ["returns_refunds"], None),
    ("look up wool socks for hiking", ["product_search"], ["product_search"]),
    ("do you sell a standing desk", ["product_search"], None),
    ("show me a red kettle and tell me the delivery date of order 9", ["product_search", "order_status"], None),
    ("tell me a story about dragons", [], []),
    ("what is the capital of peru", [], None),
    ("where is my order 1234", ["order_status"], None),  # already in the data (train)
    ("track my order 31", ["order_status"], None),  # already in the data (test)
    ("how much are the blue headphones", ["price_lookup"], ["product_search", "price_lookup"]),  # retired
    ("is the air fryer cheaper this week", ["price_lookup"], None),  # retired
]
RETIRED = "price_lookup"


def serve_params(work: Path, tiny_lm: Path, name: str, **serve: Any) -> Path:
    import yaml
    from tiny_bundle import tiny_params

    raw = tiny_params(tiny_lm)
    raw["registry"] = {"path": str(work / "registry")}
    raw["serve"] = {"poll_seconds": 0.5, **serve}
    path = work / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def served(work: Path, params: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(work, params, port, server_threads=1)
    _wait_healthy(url, server)
    return server, url


def overhead(work: Path, tiny_lm: Path, clients: int, seconds: float, rounds: int,
             control: bool = False) -> dict[str, Any]:
    """Route p99 with the log on and off: both servers up at once, loaded one at a time in
    `rounds` ABBA-ordered pairs, so the machine's drifting load falls on both alike. With
    `control`, "on" logs nothing either (an A/A run: the ratio this machine gives by chance)."""
    modes = {"on": serve_params(work, tiny_lm, "on", decision_log=None if control else str(work / "log-load")),
             "off": serve_params(work, tiny_lm, "off", decision_log=None)}
    servers = {mode: served(work, params) for mode, params in modes.items()}
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    try:
        for i in range(rounds):
            for mode in (("on", "off") if i % 2 == 0 else ("off", "on")):
                runs[mode].append(run_load(servers[mode][1], clients, seconds))
    finally:
        for server, _ in servers.values():
            stop(server)
    p99 = {mode: statistics.median(r["p99_ms"] for r in results) for mode, results in runs.items()}
    pairs = [on["p99_ms"] / off["p99_ms"] for on, off in zip(runs["on"], runs["off"])]
    logged = sum(p.read_bytes().count(b"\n") for p in (work / "log-load").glob("decisions-*.jsonl"))
    return {"p99_overhead_ratio": round(p99["on"] / p99["off"], 3),
            "p99_ratio_per_round": [round(r, 3) for r in pairs],
            "p99_ms": {mode: [r["p99_ms"] for r in results] for mode, results in runs.items()},
            "p50_ms": {mode: [r["p50_ms"] for r in results] for mode, results in runs.items()},
            "rps": {mode: [r["rps"] for r in results] for mode, results in runs.items()},
            "failed": sum(r["failed"] for results in runs.values() for r in results),
            "decisions_logged_during_load": logged}


def write_cost(work: Path, n: int = 20_000) -> dict[str, float]:
    """Microseconds one DecisionLog.decide() takes in this process (the answer path's share), with
    the fsync thread running, over `n` decisions of a typical size."""
    from amo.decisions import DecisionLog

    log = DecisionLog(work / "log-cost", log_prompts=True, fsync_seconds=0.05)
    log.start()
    route = {"agents": [{"id": "order_status", "score": 2.3141}, {"id": "returns_refunds", "score": 1.0172}],
             "separator": 0.4242, "abstained": False}
    times = []
    for i in range(n):
        start = time.perf_counter()
        log.decide(f"r{i:015d}", "plan", "20261207T025753Z-4447c83b46", f"where is my order {i} and can I return it",
                   route, {"path": ["order_status", "returns_refunds"], "abstained": False}, 6.2)
        times.append(time.perf_counter() - start)
    log.stop()
    times.sort()
    return {"decision_write_us_p50": round(1e6 * times[n // 2], 1),
            "decision_write_us_p99": round(1e6 * times[int(n * 0.99)], 1)}


def kill_points(work: Path, tiny_lm: Path, kills: int, seed: int = 0) -> dict[str, Any]:
    """`kills` servers, each killed with SIGKILL while 4 clients route; answered ids missing after."""
    from conftest import answered_until_killed

    from amo.decisions import read_log

    rng = random.Random(seed)
    points = []
    for point in range(kills):
        folder = work / f"log-kill{point}"
        server, url = served(work, serve_params(work, tiny_lm, f"kill{point}", decision_log=str(folder),
                                                decision_fsync_seconds=60.0))
        answered = answered_until_killed(url, server.pid, lambda _: time.sleep(rng.uniform(0.5, 3.0)))
        server.wait()
        logged = {r["request_id"] for r in read_log(folder, "decisions")}
        points.append({"answered": len(answered), "logged": len(logged),
                       "lost": len(set(answered) - logged)})
    return {"lost_after_kill9": sum(p["lost"] for p in points), "kill_points": points}


def harvest_run(work: Path, tiny_lm: Path) -> dict[str, Any]:
    """Scripted traffic with feedback, then `amo data harvest` on data that has retired RETIRED."""
    import httpx
    from tiny_bundle import write_tiny_data

    from amo import data as contracts

    folder = work / "log-harvest"
    server, url = served(work, serve_params(work, tiny_lm, "harvest", decision_log=str(folder), log_prompts=True))
    sent = {"feedback": 0}
    try:
        for prompt, gold, path in TRAFFIC:
            route = httpx.post(f"{url}/route", json={"prompt": prompt}, timeout=30).json()
            served_agents = [a["id"] for a in route["route"]["agents"]]
            verdict: dict[str, Any] = ({"outcome": "ok"} if served_agents == gold
                                       else {"outcome": "wrong", "agents": gold})
            if path is not None:
                verdict["path"] = path
            answer = httpx.post(f"{url}/feedback", json={"request_id": route["request_id"], **verdict}, timeout=30)
            assert answer.status_code == 200, answer.text
            sent["feedback"] += 1
        # a verdict without a correction
        route = httpx.post(f"{url}/route", json={"prompt": "is my lamp coming"}, timeout=30).json()
        httpx.post(f"{url}/feedback", json={"request_id": route["request_id"], "outcome": "wrong"}, timeout=30)
        sent["feedback"] += 1
    finally:
        stop(server)
    data = work / "data-harvest"
    write_tiny_data(data)
    # the data retires RETIRED after the traffic: its agent record and every row naming it go
    for path in [data / "agents.jsonl", *(data / "routing").glob("*.jsonl"), *(data / "traces").glob("*.jsonl")]:
        rows = [r for r in contracts.iter_jsonl(path) if r.get("id") != RETIRED
                and RETIRED not in (r.get("labels") or {}) and RETIRED not in r.get("path", [])]
        contracts.write_jsonl(path, rows)
    report_path = work / "harvest-report.json"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    subprocess.run([str(Path(sys.executable).parent / "amo"), "--params", str(ROOT / "params.yaml"), "data",
                    "harvest", "--log", str(folder), "--data", str(data), "--report", str(report_path)],
                   cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)
    report = json.loads(report_path.read_text())
    return {"traffic": len(TRAFFIC) + 1, **sent, "rows_in": report["rows_in"], "appended": report["appended"],
            "duplicates_dropped": report["duplicates_dropped"], "refused": report["refused"],
            "prompt_not_logged": report["prompt_not_logged"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--control", action="store_true", help="Only an A/A run (the log off on both "
                        "servers), added to the results file as `control`.")
    args = parser.parse_args()
    from conftest import build_tiny_lm
    from tiny_bundle import build_tiny_bundle

    from amo.config import GateParams
    from amo.registry import Registry

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tiny_lm = build_tiny_lm(work / "tiny_lm")
        bundle = build_tiny_bundle(work / "build", tiny_lm)
        Registry(work / "registry").promote(bundle, GateParams(floors={}, tolerance=1.0))
        if args.control:
            control = overhead(work, tiny_lm, args.clients, args.seconds, args.rounds, control=True)
            saved = json.loads(RESULT.read_text())
            saved["control"] = {"command": shlex.join(["python", "benchmarks/feedback_loop.py", *sys.argv[1:]]),
                                "p99_ratio": control["p99_overhead_ratio"], "p99_ms": control["p99_ms"],
                                "p99_ratio_per_round": control["p99_ratio_per_round"],
                                "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
            RESULT.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
            print(json.dumps(saved["control"]))
            return
        result: dict[str, Any] = {
            "command": shlex.join(["python", "benchmarks/feedback_loop.py", *sys.argv[1:]]),
            "bundle": "tiny bundle from tests/tiny_bundle.py: real all-MiniLM-L6-v2 encoder + ONNX router, 4 agents",
            "clients": args.clients, "seconds_per_run": args.seconds, "rounds": args.rounds,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
        result.update(write_cost(work))
        result.update(overhead(work, tiny_lm, args.clients, args.seconds, args.rounds))
        print(json.dumps({k: result[k] for k in ("p99_overhead_ratio", "p99_ms")}), flush=True)
        result.update(kill_points(work, tiny_lm, args.kills))
        print(json.dumps({"lost_after_kill9": result["lost_after_kill9"]}), flush=True)
        result["harvest"] = harvest_run(work, tiny_lm)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    # Keys other runs write into the same file (--control, benchmarks/learn_from_traffic.py) are
    # kept; a --control block measured before this run is moved aside as stale, not passed off as its A/A.
    earlier = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    kept = {k: earlier[k] for k in ("before", "after", "learn_from_traffic") if k in earlier}
    if "control" in earlier:
        kept["control_from_an_earlier_run"] = earlier["control"]
    RESULT.write_text(json.dumps({**kept, **result}, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
