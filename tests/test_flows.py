"""The Prefect flows, run for real against a temporary Prefect API (prefect_test_harness) on a tiny
copy of the project: the retrain follows dvc.yaml, promotes, pushes and can be restored elsewhere;
a second concurrent retrain is refused; bad data is not retried; the data sensor emits its event;
arms on a 2-worker Dask cluster give the sequential run's results."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, flows, git_env, restored

from amo import orchestration as orch
from amo.bundle import verify_bundle

os.environ.setdefault("OMP_NUM_THREADS", "1")


def run(cwd: Path, *args: str) -> str:
    result = subprocess.run(list(args), check=False, cwd=cwd, env=git_env(), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.mark.slow  # a subprocess, a spawned process or a trained model: not in make test-fast
def test_flow_steps_are_the_dvc_stages() -> None:
    """Every stage of `dvc stage list` is a step of the retrain flow, in dvc.yaml's order, and no other."""
    steps = orch.stage_names(ROOT)
    listed = run(ROOT, str(Path(sys.executable).parent / "dvc"), "stage", "list", "--name-only").split()
    assert steps == [s for s in listed if s in steps] and sorted(steps) == sorted(listed)
    tasks = yaml.safe_load((ROOT / "params.yaml").read_text())["arms"]["tasks"]
    assert {f"finetune_arm@{t}" for t in tasks} <= set(steps)
    assert steps.index("validate") == 0 and steps[-1] == "bundle"
    assert set(orch.stage_groups(ROOT)) - {"finetune_arm"} <= set(flows().CONCERNS)


def test_prefect_yaml_declares_the_served_deployments_with_params_yaml_schedules() -> None:
    """prefect.yaml (for `prefect deploy` on a process pool) names the same four deployments as
    flows/serve.py, each entrypoint a flow of flows/retrain.py, with params.yaml's cron, zone and
    sensor interval, and a trigger Prefect accepts on amo.data.updated."""
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    o = yaml.safe_load((ROOT / "params.yaml").read_text())["orchestration"]
    by_name = {d["name"]: d for d in spec["deployments"]}
    served = {d.name: d for d in flows("serve").deployments(ROOT)}
    assert set(by_name) == set(served)
    for name, deployment in by_name.items():
        path, function = deployment["entrypoint"].split(":")
        assert path == "flows/retrain.py" and getattr(flows(), function).name == served[name].flow_name
    assert by_name["nightly"]["schedules"] == [{"cron": o["nightly_cron"], "timezone": o["timezone"]}]
    assert by_name["every-interval"]["schedules"] == [{"interval": o["sensor_interval_seconds"]}]
    trigger = DeploymentEventTrigger.model_validate(by_name["on-new-agent-data"]["triggers"][0])
    assert trigger.expect == {orch.DATA_UPDATED}


@pytest.mark.slow
@pytest.mark.integration
def test_retrain_runs_the_graph_promotes_and_pushes(trained_repo: dict[str, Any]) -> None:
    """The retrain flow runs dvc.yaml's stages in order (one task run per arm), promotes the bundle it
    built with the override in its manifest, pushes to the remote, and leaves Markdown artifacts."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter

    repo, result = trained_repo["repo"], trained_repo["result"]
    assert result["stages"] == orch.stage_names(repo)
    assert result["overrides"] == {"router.epochs": 6} and result["promotion"]["accepted"]
    manifest = json.loads((repo / "build/bundle/manifest.json").read_text())
    assert manifest["params"]["router"]["epochs"] == 6
    assert json.loads((repo / "registry/current.json").read_text())["bundle_id"] == manifest["bundle_id"]
    assert result["pushed"] and any(p.is_file() for p in trained_repo["remote"].rglob("*"))
    assert orch.last_data_hash(repo) == orch.data_fingerprint(repo / "data") == result["data_hash"]
    # The retrain is a DVC experiment, and the bundle it built names it.
    assert manifest["experiment"] == result["experiment"] and result["experiment"].startswith("retrain-")
    dvc = str(Path(sys.executable).parent / "dvc")
    listed = subprocess.run([dvc, "exp", "list", "--name-only"], cwd=repo, capture_output=True, text=True, check=True)
    assert result["experiment"] in listed.stdout.split()
    # ... pushed to the git remote `origin` (`dvc exp pull origin NAME` elsewhere gets it back).
    refs = subprocess.run(["git", "ls-remote", str(trained_repo["origin"])], capture_output=True, text=True,
                          check=True).stdout
    assert any(line.startswith(tuple("0123456789abcdef")) and line.endswith("/" + result["experiment"])
               and "refs/exps/" in line for line in refs.splitlines()), refs
    assert not (repo / ".amo/experiment").exists()  # a plain `dvc repro` afterwards names no experiment
    with get_client(sync_client=True) as client:
        names = {run.name for run in client.read_task_runs()}
        keys = ["amo-validation", "amo-data-docs", "amo-arms", "amo-evaluation", "amo-promotion", "amo-retrain",
                "amo-retrain-metrics"]
        run_id = trained_repo["flow_run_id"]  # this retrain and its subflows, not other tests' runs
        artifacts = {a.key: a.data for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)),
            flow_run_filter=FlowRunFilter(operator="or_", id={"any_": [run_id]},
                                          parent_flow_run_id={"any_": [run_id]}))}
    assert {f"finetune_arm@{t}" for t in ("product_extraction", "query_rewrite")} <= names
    assert set(artifacts) == set(keys)
    assert "PROMOTED" in artifacts["amo-promotion"] and manifest["bundle_id"] in artifacts["amo-promotion"]
    assert "| evaluation | router.in_scope_accuracy |" in artifacts["amo-evaluation"]
    table = json.loads(artifacts["amo-retrain-metrics"])  # a table artifact: one row per metric
    assert {"file": "evaluation", "metric": "router.in_scope_accuracy"}.items() <= next(
        r for r in table if r["metric"] == "router.in_scope_accuracy").items()
    assert artifacts["amo-data-docs"] == f"[data docs]({(repo.resolve() / 'gx/data_docs/index.html').as_uri()})"


@pytest.mark.slow
@pytest.mark.integration
def test_stage_output_is_in_the_task_run_logs_line_by_line(trained_repo: dict[str, Any]) -> None:
    """The router stage's own lines (an epoch each) reach its task run's log as they are printed."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId, TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=["train_router"])))
        logs = client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[r.id for r in runs])))
    lines = [log.message for log in logs]
    assert any(line.startswith("train_router | ") and "router epoch 1/" in line for line in lines), lines[:20]


@pytest.mark.slow
@pytest.mark.integration
def test_rejected_promotion_fails_the_flow_run_with_its_reason(trained_repo: dict[str, Any],
                                                               tmp_path: Path) -> None:
    """A bundle the gate rejects ends the promote flow run Failed, naming the failed check; both
    bundles were scored on the same current test data; the champion stays current."""
    from amo.bundle import new_bundle_id, read_manifest, write_manifest

    repo = trained_repo["repo"]
    # The retrain promoted build/bundle (promoting the current bundle, or the same contents under
    # another id, is a no-op): the candidate is the same files said to come from other data, so
    # the gate runs.
    candidate = tmp_path / "candidate"
    shutil.copytree(repo / "build/bundle", candidate)
    manifest = {k: v for k, v in read_manifest(candidate).items() if k != "digest"}
    created = "2099-01-01T00:00:00Z"
    write_manifest(candidate, {**manifest, "created": created, "data_hash": "another-data-version",
                               "bundle_id": new_bundle_id(created, manifest["files"])})
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    raw = yaml.safe_load(original)
    raw["gate"]["floors"]["planner.exact_path"] = 1.01  # no planner reaches it
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    current = (repo / "registry/current.json").read_text()
    try:
        state = flows().promote(repo=str(repo), bundle=str(candidate), return_state=True)
    finally:
        params_file.write_text(original)
    assert state.is_failed(), state
    assert "rejected by the gate" in state.message and "planner.exact_path" in state.message
    decision = state.result(raise_on_failure=False)
    assert any("same, current test data" in reason for reason in decision["reasons"])
    assert (repo / "registry/current.json").read_text() == current


@pytest.mark.slow
@pytest.mark.integration
def test_second_concurrent_retrain_is_refused_and_nothing_corrupted(trained_repo: dict[str, Any]) -> None:
    """Two retrains started together on one repository: one completes, the other is refused by
    the Prefect global concurrency limit, named in its message; the bundle, registry and dvc.lock
    stay consistent."""
    repo = trained_repo["repo"]
    states: dict[str, Any] = {}

    def start(name: str) -> None:
        states[name] = flows().retrain(repo=str(repo), push=False, return_state=True)

    threads = [threading.Thread(target=start, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    completed = [s for s in states.values() if s.is_completed()]
    failed = [s for s in states.values() if s.is_failed()]
    assert len(completed) == 1 and len(failed) == 1, [s.message for s in states.values()]
    assert "another retrain is running" in failed[0].message
    assert orch.concurrency_limit_name(repo) in failed[0].message  # a Prefect server runs: its limit
    verify_bundle(repo / "build/bundle")
    current = json.loads((repo / "registry/current.json").read_text())["bundle_id"]
    verify_bundle(repo / "registry/bundles" / current)
    assert "Data and pipelines are up to date" in run(repo, "dvc", "status")


@pytest.mark.slow
@pytest.mark.integration
def test_fresh_clone_restores_the_bundle_inputs_from_the_remote(trained_repo: dict[str, Any],
                                                                tmp_path: Path) -> None:
    """After the pushed retrain is committed, a fresh clone + `dvc pull` restores the data the
    manifest names (same data.dvc hash) and every trained artifact bit-for-bit: each file of the
    promoted bundle but its runtime.json is one of the pulled artifacts, byte for byte."""
    repo = trained_repo["repo"]
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "retrained")
    run(tmp_path, "git", "clone", "-q", str(repo), "clone")
    clone = tmp_path / "clone"
    orch.pull(clone, f"file://{trained_repo['remote']}")
    promoted = verify_bundle(repo / "build/bundle")
    assert orch.data_fingerprint(clone / "data") == orch.data_fingerprint(repo / "data")
    assert yaml.safe_load((clone / "data.dvc").read_text())["outs"][0]["md5"] == promoted["data_hash"]
    pulled = {}
    for path in sorted((clone / "artifacts").rglob("*")):
        if path.is_file():
            pulled[_sha(path)] = path
            assert _sha(path) == _sha(repo / path.relative_to(clone)), path
    missing = {name for name, sha in promoted["files"].items() if sha not in pulled}
    assert missing <= {"runtime.json"}, missing


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.integration
def test_arms_on_a_dask_cluster_match_the_sequential_run(trained_repo: dict[str, Any], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """With AMO_DASK_ADDRESS set (a LocalCluster of 2 single-thread workers) the arm fan-out runs on
    Dask, and each arm's adapter and metrics equal the sequential run's."""
    from distributed import Client, LocalCluster

    repo, copy = trained_repo["repo"], tmp_path / "copy"
    shutil.copytree(repo, copy, ignore=shutil.ignore_patterns("cache", "tmp", "arms"))
    assert not (copy / "artifacts/arms").exists() and not (copy / ".dvc/cache").exists()
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        monkeypatch.setenv("AMO_DASK_ADDRESS", cluster.scheduler_address)
        stages = flows().finetune_arms(repo=str(copy))
        with Client(cluster) as client:
            ran = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.task_prefixes))
    assert sorted(stages) == sorted(orch.arm_stages(repo, None)) and ran
    for stage in stages:
        task = stage.split("@", 1)[1]
        assert _sha(copy / f"artifacts/arms/{task}/adapter_model.safetensors") == \
            _sha(repo / f"artifacts/arms/{task}/adapter_model.safetensors"), task
        metrics = [(r / f"metrics/arms/{task}.json").read_bytes() for r in (copy, repo)]
        assert metrics[0] == metrics[1], task  # byte for byte: no timing in an arm's scores


@pytest.mark.slow
@pytest.mark.integration
def test_bad_data_fails_validation_without_retry(trained_repo: dict[str, Any]) -> None:
    """A dangling agent id fails the validate flow once (no retry even with retries configured),
    with the stage's name, file, row and field in the message and in the validation artifact."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter

    repo = trained_repo["repo"]
    routing, params_file = repo / "data/routing/train.jsonl", repo / "params.yaml"
    original = routing.read_text()
    params = yaml.safe_load(params_file.read_text())
    params["orchestration"]["stage_retries"] = 2
    with restored(repo, "data/routing/train.jsonl", "params.yaml", "metrics/validation.json", "metrics/validation"):
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        routing.write_text(original + json.dumps({"prompt": "a brand new prompt", "labels": {"ghost": 2}}) + "\n")
        state = flows().validate_data(repo=str(repo), return_state=True)
    assert state.is_failed()
    row = f"row {original.count(chr(10)) + 1}"
    assert "stage validate failed" in state.message and "train.jsonl" in state.message and row in state.message
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]}))
        report = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["amo-validation"])),
                                       flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]}))
    assert [r.run_count for r in runs] == [1]
    assert "ghost" in report[0].data and "False" in report[0].data


@pytest.mark.slow
@pytest.mark.integration
def test_refused_data_never_moves_data_dvc(trained_repo: dict[str, Any]) -> None:
    """A retrain whose validation refuses the data fails there and leaves data.dvc as it was."""
    repo = trained_repo["repo"]
    routing, pointer = repo / "data/routing/train.jsonl", repo / "data.dvc"
    original, before = routing.read_text(), pointer.read_text()
    try:
        routing.write_text(original + json.dumps({"prompt": "one more new prompt", "labels": {"ghost": 2}}) + "\n")
        state = flows().retrain(repo=str(repo), push=False, promote_bundle=False, return_state=True)
    finally:
        routing.write_text(original)
    assert state.is_failed() and "validate" in state.message
    assert pointer.read_text() == before


@pytest.mark.integration
def test_data_sensor_emits_one_event_per_change(prefect_api: str, tmp_path: Path) -> None:
    """The sensor flow emits `amo.data.updated` with the new hash when the data changed, and
    nothing when it did not."""
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/agents.jsonl").write_text('{"id": "a", "description": "an agent that answers"}\n')
    first = flows().data_sensor(repo=str(tmp_path))
    assert first == orch.data_fingerprint(tmp_path / "data")
    assert flows().data_sensor(repo=str(tmp_path)) is None
    hashes: list[str] = []
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while first not in hashes and time.monotonic() < deadline:
            time.sleep(0.5)
            page = client.read_events(EventFilter(event=EventNameFilter(name=[orch.DATA_UPDATED])), limit=50)
            hashes = [e.payload.get("data_hash") for e in page.events]
    assert hashes.count(first) == 1
