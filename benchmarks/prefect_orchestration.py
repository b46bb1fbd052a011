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
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from conftest import build_tiny_lm, make_tiny_repo
from test_prefect_server import (
    announce_changed_agent,
    api,
    start_server,
    stop,
    wait_for_completed_run,
    wait_for_deployments,
)

from amo import orchestration as orch


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
    # --workdir is only a scratch folder: the command that reproduces the figures leaves it out.
    result: dict = {"command": "python benchmarks/prefect_orchestration.py",
                    "machine": "2 cores shared with other jobs, OMP_NUM_THREADS=1, tiny LM"}
    proc, server = start_server(work / "prefect_home", subprocess.DEVNULL)
    env = server["env"]
    serving = None
    try:
        result["server"] = {"url": server["url"], "healthy_after_s": server["healthy_after_s"]}
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
        ended: dict[int, float] = {}
        while len(ended) < len(pair):
            for i, p in enumerate(pair):
                if i not in ended and p.poll() is not None:
                    ended[i] = round(time.monotonic() - start, 1)
            time.sleep(0.2)
        outcomes = []
        for i, p in enumerate(pair):
            _, err = p.communicate()
            busy = [line for line in err.splitlines() if "another retrain is running" in line]
            outcomes.append({"exit": p.returncode, "exited_after_s": ended[i],
                             "message": busy[0].strip()[-400:] if busy else None})
        result["two_concurrent_retrains"] = outcomes

        params = repo / "params.yaml"
        params.write_text(params.read_text().replace("sensor_interval_seconds: 60", "sensor_interval_seconds: 3600"))
        serving = subprocess.Popen([sys.executable, "flows/serve.py"], cwd=repo, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deployment = wait_for_deployments(server, serving, timeout=600)
        emitted, _ = announce_changed_agent(repo, env)
        run = wait_for_completed_run(server, deployment["id"], timeout=900)
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
