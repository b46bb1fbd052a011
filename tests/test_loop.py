"""The whole loop of issue 15 on a tiny trained project, over real HTTP and a real Prefect server:
serve → traffic → feedback → harvest → event → retrain → shadow → promote.

Deselect with `-m "not integration"`; CI runs it (the default selection).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import free_port, git_env, wait_until
from test_prefect_server import api, start_server, stop

from amo import data as contracts
from amo import orchestration as orch
from amo.decisions import read_log
from amo.demo import traffic
from amo.registry import Registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BIN = Path(sys.executable).parent
HARVESTED, SHADOWED = 16, 6  # prompts answered and corrected before the retrain; scored in shadow after


def _health(url: str) -> dict[str, Any]:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).json()
    except httpx.TransportError:
        return {}


def _amo(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "amo"), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600)


def _route_with_feedback(url: str, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """POST /route for each row, then POST /feedback from its gold labels (ok when the served
    selection is the gold agents in grade order, else wrong with them); {request id: row}."""
    sent = {}
    for row in rows:
        answer = httpx.post(f"{url}/route", json={"prompt": row["prompt"]}, timeout=60)
        assert answer.status_code == 200, answer.text
        request_id, served = answer.json()["request_id"], [a["id"] for a in answer.json()["route"]["agents"]]
        gold = sorted(row["labels"], key=lambda agent: -row["labels"][agent])
        verdict: dict[str, Any] = {"outcome": "ok"} if served == gold else {"outcome": "wrong", "agents": gold}
        feedback = httpx.post(f"{url}/feedback", json={"request_id": request_id, **verdict}, timeout=60)
        assert feedback.status_code == 200, feedback.text
        sent[request_id] = row
    return sent


def test_served_decisions_become_the_next_bundle_after_a_shadow_check(trained_repo: dict[str, Any],
                                                                      tmp_path: Path) -> None:
    """Decisions the runtime logs by default (prompts on) get feedback from gold labels; `amo data
    harvest` appends them and its `amo.data.updated` event reaches the Prefect server; the retrain
    flow, run on that server, builds a new bundle from them; `amo promote --shadow` makes it the
    challenger, which the runtime scores on live prompts (agreement logged); `amo promote` with
    gate.shadow_min_decisions reports the shadow check and switches the runtime to the new bundle."""
    repo = tmp_path / "repo"
    shutil.copytree(trained_repo["repo"], repo, symlinks=True)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["serve"] = {**(params.get("serve") or {}), "poll_seconds": 0.2}  # decision_log: its default
    params["gate"].update(shadow_min_decisions=SHADOWED, tolerance=1.0)  # the loop under test, not the metric gate
    params["orchestration"]["sensor_interval_seconds"] = 3600
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    champion = json.loads((repo / "registry/current.json").read_text())["bundle_id"]
    data = repo / params["data"]["dir"]
    known = [r["prompt"] for part in ("routing/train", "routing/val", "routing/test", "traces/train", "traces/test")
             for r in contracts.iter_jsonl(data / f"{part}.jsonl")]
    test_prompts = {r["prompt"].strip().lower() for r in contracts.iter_jsonl(data / "routing/test.jsonl")}
    rows = traffic(known, share=0.05)
    assert len(rows) >= HARVESTED + SHADOWED and not test_prompts & {r["prompt"].strip().lower() for r in rows}

    log = open(tmp_path / "prefect.log", "wb")  # noqa: SIM115 (closed in the finally)
    prefect, server = start_server(tmp_path / "prefect_home", log)
    env = dict(git_env(), **{k: v for k, v in server["env"].items() if k.startswith(("PREFECT_", "DO_NOT"))})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    runtime = subprocess.Popen([str(BIN / "amo"), "serve", "--port", str(port)], cwd=repo,
                               env=dict(env, AMO_LOG_PROMPTS="true", AMO_ARMS="off"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_until(lambda: _health(url).get("bundle_id") == champion, 120), "amo serve did not come up"

        # serve -> traffic -> feedback, in the default decision log (logs/decisions in the project)
        corrected = _route_with_feedback(url, rows[:HARVESTED])
        assert {r["request_id"] for r in read_log(repo / "logs/decisions", "feedback")} == set(corrected)

        # harvest -> event on the Prefect server
        harvested = _amo(repo, env, "data", "harvest", "--report", "harvest.json")
        assert harvested.returncode == 0, harvested.stdout + harvested.stderr
        report = json.loads((repo / "harvest.json").read_text())
        assert report["rows_in"] == HARVESTED and report["appended"]["routing"] == HARVESTED, report
        assert "event amo.data.updated" in harvested.stdout
        announced = {"why": "amo data harvest", "data_hash": orch.data_fingerprint(data)}.items()

        def received() -> bool:  # the server stores events a moment after it acknowledges them
            events = api(server, "/events/filter", {"filter": {"event": {"name": [orch.DATA_UPDATED]}}, "limit": 50})
            return any(announced <= e["payload"].items() for e in events["events"])

        assert wait_until(received, 60), api(server, "/events/filter", {"limit": 50})

        # retrain: the retrain flow, on that server, promotion left to the shadow check
        retrained = subprocess.run([sys.executable, "flows/retrain.py", "--no-promote", "--no-push"], cwd=repo, env=env,
                                   capture_output=True, text=True, timeout=900)
        assert retrained.returncode == 0, retrained.stdout[-3000:] + retrained.stderr[-3000:]
        runs = api(server, "/flow_runs/filter", {"flows": {"name": {"any_": ["retrain"]}}})
        assert [r["state_type"] for r in runs] == ["COMPLETED"], runs
        candidate = json.loads((repo / "build/bundle/manifest.json").read_text())["bundle_id"]
        assert candidate != champion
        harvested_prompt = next(iter(corrected.values()))["prompt"]
        assert any(r["prompt"] == harvested_prompt for part in ("train", "val", "test")
                   for r in contracts.iter_jsonl(data / f"routing/{part}.jsonl"))

        # shadow: the new bundle as challenger, scored on live prompts
        shadowed = _amo(repo, env, "promote", "--shadow", "build/bundle")
        assert shadowed.returncode == 0 and f"challenger {candidate}" in shadowed.stdout, shadowed.stderr
        assert wait_until(lambda: _health(url).get("challenger") == candidate, 60)
        live = {}
        for row in rows[HARVESTED:HARVESTED + SHADOWED]:
            answer = httpx.post(f"{url}/plan", json={"prompt": row["prompt"]}, timeout=60)
            assert answer.status_code == 200, answer.text
            live[answer.json()["request_id"]] = row

        def scored() -> dict[str, dict[str, Any]]:
            return {r["request_id"]: r for r in read_log(repo / "logs/decisions", "shadow")
                    if r["challenger"] == candidate}

        assert wait_until(lambda: set(scored()) == set(live), 60), scored()
        # verdicts where both bundles agree: who was right then is a tie, so the gate's quality
        # check is exercised without depending on which tiny router guesses better
        agreed = {request_id: live[request_id] for request_id, r in scored().items() if r["agree"]}
        for request_id, row in agreed.items():
            gold = sorted(row["labels"], key=lambda agent: -row["labels"][agent])
            assert httpx.post(f"{url}/feedback", json={"request_id": request_id, "outcome": "wrong", "agents": gold},
                              timeout=60).status_code == 200

        # promote: the gate reads the shadow check from the log
        promoted = _amo(repo, env, "promote", "build/bundle", "--report", "promotion.md")
        markdown = (repo / "promotion.md").read_text()
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        assert f"shadow: {SHADOWED} decisions scored in shadow >= gate.shadow_min_decisions {SHADOWED}" in markdown
        quality = re.search(rf"right on (\S+) of {len(agreed)} decisions with feedback vs the champion's (\S+)",
                            markdown)
        assert (quality is not None and quality[1] == quality[2]) if agreed else \
            "no feedback on its shadow decisions yet" in markdown, markdown
        assert wait_until(lambda: _health(url).get("bundle_id") == candidate and _health(url).get("challenger") is None,
                          60)
        assert Registry(repo / "registry").challenger_id() is None
        answer = httpx.post(f"{url}/route", json={"prompt": rows[-1]["prompt"]}, timeout=60).json()
        assert answer["bundle_id"] == candidate
    finally:
        runtime.terminate()
        runtime.wait(30)
        stop(prefect)
        log.close()
