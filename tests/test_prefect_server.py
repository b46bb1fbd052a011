"""One real Prefect server on 127.0.0.1 (a free port, its own PREFECT_HOME): `python flows/serve.py`
serves the deployments of a tiny trained repository, `amo data update` emits `amo.data.updated`
after an agent's description changed, and the retrain/on-new-agent-data run reaches Completed.

Deselect with `-m "not integration"`; CI runs it (the default selection).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import git_env

from amo import orchestration as orch

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BIN = Path(sys.executable).parent
DEPLOYMENTS = {"retrain/nightly", "on-new-data/on-new-agent-data", "data-sensor/every-interval", "promote/manual"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group this test started (by its id), then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def start_server(home: Path, log: Any) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """`prefect server start --host 127.0.0.1 --port <free>` with its own PREFECT_HOME and analytics
    off, once /api/health answers; returns the process and {url, env, pid, healthy_after_s}."""
    port = free_port()
    env = {k: v for k, v in git_env().items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    start = time.monotonic()
    while True:
        try:
            if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() - start > 120:
            stop(proc)
            raise RuntimeError(f"prefect server did not become healthy (exit {proc.returncode})")
        time.sleep(0.5)
    return proc, {"url": env["PREFECT_API_URL"], "env": env, "pid": proc.pid,
                  "healthy_after_s": round(time.monotonic() - start, 1)}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A real Prefect server for this test, stopped by its PID afterwards."""
    with open(tmp_path / "server.log", "wb") as log:
        proc, info = start_server(tmp_path / "prefect_home", log)
        try:
            yield info
        finally:
            stop(proc)


def api(server: dict[str, Any], path: str, body: dict[str, Any] | None = None) -> Any:
    """POST to the server's API; on a busy machine a read may take long, so wait up to a minute."""
    response = httpx.post(f"{server['url']}{path}", json=body or {}, timeout=60)
    response.raise_for_status()
    return response.json()


def wait_for_completed_run(server: dict[str, Any], deployment_id: str, timeout: float) -> dict[str, Any]:
    """The deployment's first Completed flow run; or, once every run ended without one (or at the
    timeout), the latest run, with every run's state under "all_runs" (what a failure shows)."""
    deadline = time.monotonic() + timeout
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        runs = api(server, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}})
        done = [r for r in runs if r["state_type"] == "COMPLETED"]
        if done:
            return done[0]
        if runs and all(r["state_type"] in ("FAILED", "CRASHED", "CANCELLED") for r in runs):
            break
        time.sleep(2)
    states = [{"name": r.get("name"), "state": r.get("state_type"), "created": r.get("created"),
               "message": (r.get("state") or {}).get("message")} for r in runs]
    return {**runs[0], "all_runs": states} if runs else {"all_runs": states}


def wait_for_deployments(server: dict[str, Any], serving: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """Wait until the serving process registered the four deployments; the on-new-agent-data one."""
    deadline = time.monotonic() + timeout
    names: set[str] = set()
    while not names >= DEPLOYMENTS:
        if serving.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"deployments not served (exit {serving.poll()}); have {sorted(names)}")
        time.sleep(1)
        deployments = api(server, "/deployments/filter")  # first: a deployment's flow exists before it
        flows = {f["id"]: f["name"] for f in api(server, "/flows/filter")}
        names = {f"{flows[d['flow_id']]}/{d['name']}" for d in deployments}
    return next(d for d in api(server, "/deployments/filter") if d["name"] == "on-new-agent-data")


def announce_changed_agent(repo: Path, env: dict[str, str]) -> tuple[datetime, str]:
    """Change an agent's description in place, then `amo data update`: the time and its output."""
    agents = repo / "data/agents.jsonl"
    rows = [json.loads(line) for line in agents.read_text().splitlines()]
    rows[0]["description"] += " It also answers questions about gift cards."
    agents.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    emitted = datetime.now(UTC)
    out = subprocess.run([str(BIN / "amo"), "data", "update"], cwd=repo, env=env, capture_output=True,
                         text=True, check=True).stdout
    return emitted, out


def test_new_agent_data_event_starts_a_retrain_that_completes(server: dict[str, Any],
                                                             trained_repo: dict[str, Any],
                                                             tmp_path: Path) -> None:
    """An `amo.data.updated` event from `amo data update` starts retrain/on-new-agent-data with the
    event's data hash; the run completes, retrains on the new data and records its hash."""
    repo = tmp_path / "repo"
    shutil.copytree(trained_repo["repo"], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["orchestration"]["sensor_interval_seconds"] = 3600  # this test announces the data itself
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    old_bundle = json.loads((repo / "build/bundle/manifest.json").read_text())["bundle_id"]

    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 (closed in the finally)
    serving = subprocess.Popen([sys.executable, "flows/serve.py"], cwd=repo, env=server["env"], stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deployment = wait_for_deployments(server, serving, timeout=90)
        emitted, out = announce_changed_agent(repo, server["env"])
        new_hash = orch.data_fingerprint(repo / "data")
        assert "event amo.data.updated" in out and new_hash in out

        # 480 s (was 240), and every run's state in the message: once on CI (shared cores) the test
        # ended on a duplicate run refused by the retrain lock, without showing what the other run did.
        run = wait_for_completed_run(server, deployment["id"], timeout=480)
        assert run.get("state_type") == "COMPLETED", (run.get("all_runs"),
                                                      (tmp_path / "serve.log").read_text()[-4000:])
        started = datetime.fromisoformat(run["start_time"])
        ended = datetime.fromisoformat(run["end_time"])
        print(f"\nevent emitted -> retrain started: {(started - emitted).total_seconds():.1f} s; "
              f"retrain ran {(ended - started).total_seconds():.1f} s")
        assert run["parameters"]["data_hash"] == new_hash
        # One data version, one event, one run: the data sensor ticking at the same moment as
        # `amo data update` does not announce it again (once on CI its duplicate run was refused by
        # the retrain lock and ended Failed).
        runs = api(server, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}}})
        assert [r["id"] for r in runs] == [run["id"]]
        assert orch.last_data_hash(repo) == new_hash
        manifest = json.loads((repo / "build/bundle/manifest.json").read_text())
        assert manifest["bundle_id"] != old_bundle
        assert manifest["data_hash"] == yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
        history = [json.loads(line) for line in (repo / "registry/history.jsonl").read_text().splitlines()]
        assert history[-1]["bundle_id"] == manifest["bundle_id"]
    finally:
        stop(serving)
        log.close()
