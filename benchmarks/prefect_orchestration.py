"""Closing figures of the Prefect orchestration, on a real local server and a tiny repository
(tiny base LM, few steps: the configuration of tests/test_flows.py).

    python benchmarks/prefect_orchestration.py [--workdir /tmp/amo-prefect-bench]

1. a full tiny retrain through Prefect (`python flows/retrain.py` against the server);
2. two retrains started together on the same repository: what the second one did;
3. `python flows/serve.py`, an agent description changed, `amo data update`: seconds from the
   event to the retrain/on-new-agent-data run's start, and that run's duration.
Writes benchmarks/results/prefect_orchestration.json. Reuses the tests' helpers (tiny LM, tiny repo,
server start/stop) so the benchmark measures exactly what the tests check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from conftest import build_tiny_lm, git_env, make_tiny_repo
from test_prefect_server import BIN, DEPLOYMENTS, api, free_port, stop

from amo import orchestration as orch


def start_server(home: Path) -> tuple[subprocess.Popen[bytes], dict[str, str], dict[str, str]]:
    port = free_port()
    env = {k: v for k, v in git_env().items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    import httpx

    start = time.monotonic()
    while True:
        try:
            if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    return proc, env, {"url": env["PREFECT_API_URL"], "healthy_after_s": round(time.monotonic() - start, 1)}


def last_run(server: dict[str, str], flow_name: str) -> dict:
    runs = api(server, "/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}}, "sort": "START_TIME_DESC"})
    return runs[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="amo-prefect-bench-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "machine": "2 cores shared with other jobs, OMP_NUM_THREADS=1, tiny LM"}
    proc, env, server = start_server(work / "prefect_home")
    serving = None
    try:
        result["server"] = dict(server)
        repo = make_tiny_repo(work / "repo", build_tiny_lm(work / "tiny_lm"))

        start = time.monotonic()
        done = subprocess.run([sys.executable, "flows/retrain.py"], check=False, cwd=repo, env=env, capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        run = last_run(server, "retrain")
        result["full_tiny_retrain"] = {"wall_s": round(time.monotonic() - start, 1),
                                       "flow_run_s": run["total_run_time"], "state": run["state_type"],
                                       "stages": orch.stage_names(repo)}

        start = time.monotonic()
        pair = [subprocess.Popen([sys.executable, "flows/retrain.py", "--no-push"], cwd=repo, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outcomes = []
        for p in pair:
            out, err = p.communicate()
            busy = [line for line in err.splitlines() if "another retrain is running" in line]
            outcomes.append({"exit": p.returncode, "seconds_after_start": round(time.monotonic() - start, 1),
                             "message": busy[0].strip()[-400:] if busy else None})
        result["two_concurrent_retrains"] = outcomes

        params = repo / "params.yaml"
        params.write_text(params.read_text().replace("sensor_interval_seconds: 60", "sensor_interval_seconds: 3600"))
        serving = subprocess.Popen([sys.executable, "flows/serve.py"], cwd=repo, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        while True:
            flows = {f["id"]: f["name"] for f in api(server, "/flows/filter")}
            if DEPLOYMENTS <= {f"{flows[d['flow_id']]}/{d['name']}" for d in api(server, "/deployments/filter")}:
                break
            time.sleep(1)
        deployment = next(d for d in api(server, "/deployments/filter") if d["name"] == "on-new-agent-data")
        agents = repo / "data/agents.jsonl"
        rows = [json.loads(line) for line in agents.read_text().splitlines()]
        rows[0]["description"] += " It also answers questions about gift cards."
        agents.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        emitted = datetime.now(UTC)
        subprocess.run([str(BIN / "amo"), "data", "update"], cwd=repo, env=env, check=True, capture_output=True)
        while True:
            runs = api(server, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}}})
            if runs and runs[0]["state_type"] in ("COMPLETED", "FAILED", "CRASHED"):
                break
            time.sleep(1)
        run = runs[0]
        started, ended = datetime.fromisoformat(run["start_time"]), datetime.fromisoformat(run["end_time"])
        result["event_to_run"] = {"event_to_run_started_s": round((started - emitted).total_seconds(), 1),
                                  "run_s": round((ended - started).total_seconds(), 1),
                                  "state": run["state_type"], "runner_poll_s": 10}
    finally:
        if serving is not None:
            stop(serving)
        stop(proc)
    out = ROOT / "benchmarks/results/prefect_orchestration.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
