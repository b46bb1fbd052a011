"""A new agent's journey on a trained copy of the project: `amo agents add --publish` derives an
index-only bundle from the champion (no retraining), re-measures it on the current test data,
promotes it through the gate, and the served runtime routes and plans to the new agent."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import git_env

from amo.brain import Brain
from amo.bundle import verify_bundle

pytestmark = [pytest.mark.slow, pytest.mark.integration]  # a retrain flow, then `amo serve`
AMO = str(Path(sys.executable).parent / "amo")
GIFT = "sells and redeems store gift cards: buy a gift card, check a gift card balance, send an e-gift card"
GIFT_PROMPTS = ["I want to buy a gift card for my sister", "what is the balance on my gift card",
                "send an e-gift card to my friend for her birthday", "can I redeem a gift card code"]


def amo(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AMO, *args], cwd=repo, env=git_env(), capture_output=True, text=True, timeout=600,
                          check=False)


@pytest.fixture()
def repo(trained_repo: dict[str, Any], tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(trained_repo["repo"], copy, symlinks=True)
    return copy


def current(repo: Path) -> str:
    return json.loads((repo / "registry/current.json").read_text())["bundle_id"]


def serve(repo: Path) -> tuple[subprocess.Popen[str], str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["serve"] = {**params.get("serve", {}), "poll_seconds": 0.2}
    (repo / "serve.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    process = subprocess.Popen([AMO, "--params", "serve.yaml", "serve", "--port", str(port)], cwd=repo,
                               env=dict(git_env(), OMP_NUM_THREADS="1"), text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).json().get("bundle_id"):
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError("amo serve did not come up")


def test_new_agent_is_served_routed_and_planned_without_retraining(repo: Path) -> None:
    """After `amo agents add ID --publish`, the runtime serves a bundle derived from the champion
    whose only changed files are the agent index, with metrics measured for it on the current
    test data and the new data version; prompts routed first to the new agent are planned with it."""
    champion = current(repo)
    champion_manifest = verify_bundle(repo / "registry/bundles" / champion)
    process, url = serve(repo)
    try:
        start = time.monotonic()
        done = amo(repo, "agents", "add", "gift_cards", "--description", GIFT, "--publish")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "PROMOTED" in done.stdout and "same, current test data" in done.stdout
        new = current(repo)
        assert new != champion
        while httpx.get(f"{url}/healthz").json()["bundle_id"] != new:
            assert time.monotonic() - start < 60, "the runtime did not pick the new bundle up within a minute"
            time.sleep(0.2)
        manifest = verify_bundle(repo / "registry/bundles" / new)
        assert manifest["derived"]["parent"] == champion and manifest["derived"]["changes"]["added"] == ["gift_cards"]
        changed = {f for f in manifest["files"] if manifest["files"][f] != champion_manifest["files"].get(f)}
        assert changed == {"router/agents.json", "router/agent_index.safetensors"}
        assert manifest["data_hash"] == yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
        assert manifest["data_hash"] != champion_manifest["data_hash"]
        assert "per_agent" in manifest["metrics"]  # measured for this bundle, not the champion's copy
        # Its arms are the champion's files, so it carries their scores, and the gate judged them.
        assert manifest["metrics"]["arms"] == champion_manifest["metrics"]["arms"]
        assert manifest["metrics"]["arms_measured_in"] == champion
        for arm in champion_manifest["metrics"]["arms"]:
            assert f"ok: arms.{arm} = " in done.stdout and "vs base model" in done.stdout, done.stdout
        # The served ranker scores the new agent from its description alone: higher for its own
        # prompts than for another agent's (the tiny test router is too weak to assert a top-1
        # share; benchmarks/ measures that); whenever the route selects it first, the plan has it.
        brain = Brain(repo / "registry/bundles" / new)
        column = brain.agent_ids.index("gift_cards")
        own = brain.score_many(GIFT_PROMPTS)[:, column]
        other = brain.score_many(["where is my order 1234", "track the parcel I ordered last week",
                                  "has my package shipped yet", "when does my order arrive"])[:, column]
        assert own.mean() > other.mean(), (own, other)
        for prompt in GIFT_PROMPTS:
            answer = httpx.post(f"{url}/plan", json={"prompt": prompt}).json()
            assert answer["bundle_id"] == new
            if answer["route"]["agents"] and answer["route"]["agents"][0]["id"] == "gift_cards":
                assert "gift_cards" in answer["plan"]["path"], answer
    finally:
        process.terminate()
        process.wait(20)

    again = amo(repo, "agents", "publish")
    assert again.returncode == 0 and "nothing to publish" in again.stdout and current(repo) == new


def test_publish_refused_by_the_gate_leaves_the_champion(repo: Path) -> None:
    """An index-only bundle the gate rejects exits 3 and leaves `current` and the history's
    champion as they were; bad agent data is refused before data.dvc moves."""
    champion = current(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["gate"]["floors"]["planner.exact_path"] = 1.01
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = amo(repo, "agents", "add", "gift_cards", "--description", GIFT, "--publish")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "REJECTED" in done.stdout and current(repo) == champion

    version = (repo / "data.dvc").read_text()
    with open(repo / "data/agents.jsonl", "a") as handle:
        handle.write(json.dumps({"id": "Bad Id", "description": "x"}) + "\n")
    refused = amo(repo, "agents", "publish")
    assert refused.returncode == 1 and "agents.jsonl" in refused.stderr
    assert (repo / "data.dvc").read_text() == version and current(repo) == champion


def test_new_rows_reach_the_served_index_and_classifier_without_retraining(repo: Path, tmp_path: Path) -> None:
    """A new agent's first routing rows, added with `amo data add` and published with `amo agents
    publish`, become its examples in the agent index and give it a classifier column fitted on
    them (the other columns, the ranker and the planner byte-identical): no retraining."""
    from amo.routing import Classifier

    assert amo(repo, "agents", "add", "gift_cards", "--description", GIFT, "--publish").returncode == 0
    described = current(repo)
    before = Classifier.load(repo / "registry/bundles" / described / "router")
    assert "gift_cards" not in before.agent_ids
    wordings = ["buy a {} gift card for my {}", "check the balance of my {} gift card from my {}",
                "send a {} e-gift card to my {}", "redeem the {} gift card my {} gave me"]
    rows = [{"prompt": w.format(amount, who), "labels": {"gift_cards": 1}}
            for w in wordings for amount, who in [("$20", "sister"), ("$50", "boss"), ("$100", "uncle")]]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    added = amo(repo, "data", "add", "--routing", str(tmp_path / "rows.jsonl"))
    assert added.returncode == 0, added.stdout + added.stderr
    published = amo(repo, "agents", "publish")
    assert published.returncode == 0 and "PROMOTED" in published.stdout, published.stdout + published.stderr
    new = current(repo)
    manifest = verify_bundle(repo / "registry/bundles" / new)
    parent = verify_bundle(repo / "registry/bundles" / described)
    assert manifest["derived"]["changes"]["classifier_columns_added"] == ["gift_cards"]
    changed = {f for f in manifest["files"] if manifest["files"][f] != parent["files"].get(f)}
    assert changed == {"router/agent_index.safetensors", "router/classifier.safetensors"}
    after = Classifier.load(repo / "registry/bundles" / new / "router")
    assert after.agent_ids == (*before.agent_ids, "gift_cards")
    assert (after.weights[:-1] == before.weights).all() and (after.bias[:-1] == before.bias).all()
    brain = Brain(repo / "registry/bundles" / new)
    assert brain.scorer.classifier.agent_ids == after.agent_ids  # what the runtime serves
    column = brain.agent_ids.index("gift_cards")
    own = brain.score_many(GIFT_PROMPTS)[:, column]
    assert (own > Brain(repo / "registry/bundles" / described).score_many(GIFT_PROMPTS)[:, column]).mean() >= 0.75
