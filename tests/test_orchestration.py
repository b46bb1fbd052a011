"""The plain functions under the Prefect flows: lock, overrides, data fingerprint, reports, config."""

from __future__ import annotations

import contextvars
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from amo import orchestration as orch
from amo.config import ConfigError, load_params, parse_params

HOLD = """
import sys, time
from pathlib import Path
from amo.orchestration import retrain_lock
with retrain_lock(Path(sys.argv[1]), owner="holder"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _hold_lock(repo: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(repo), str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_retrain_fails_at_once_naming_the_holder(tmp_path: Path) -> None:
    """While another process holds the retrain lock, a second one with no wait fails with the holder's pid."""
    holder = _hold_lock(tmp_path, 30)
    try:
        start = time.monotonic()
        with (pytest.raises(orch.RetrainBusy, match=f"another retrain is running.*\"pid\": {holder.pid}"),
              orch.retrain_lock(tmp_path, timeout=0)):
            pass
        assert time.monotonic() - start < 2
    finally:
        holder.kill()
        holder.wait()


def test_second_retrain_waits_for_the_lock_within_its_timeout(tmp_path: Path) -> None:
    """A second retrain with a timeout waits until the first releases the lock, then runs."""
    holder = _hold_lock(tmp_path, 1.5)
    start = time.monotonic()
    with orch.retrain_lock(tmp_path, timeout=30, poll=0.1) as path:
        waited = time.monotonic() - start
        assert json.loads(path.read_text())["pid"] == os.getpid()
    holder.wait()
    assert 0.5 < waited < 30


def test_lock_is_released_when_its_holder_dies(tmp_path: Path) -> None:
    """A killed retrain leaves no stale lock: the kernel drops the fcntl lock with the process."""
    holder = _hold_lock(tmp_path, 60)
    holder.kill()
    holder.wait()
    with orch.retrain_lock(tmp_path, timeout=0):
        pass


def test_lock_serialises_threads(tmp_path: Path) -> None:
    """Two retrains started together never overlap inside the lock."""
    inside, overlaps = [], []

    def work() -> None:
        with orch.retrain_lock(tmp_path, timeout=30, poll=0.05):
            inside.append(1)
            overlaps.append(len(inside))
            time.sleep(0.3)
            inside.pop()

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [1, 1]


def test_overrides_use_dvc_set_param_grammar_and_keep_comments(tmp_path: Path) -> None:
    """`router.epochs=7` and a list value land in params.yaml, comments stay, other keys are untouched."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    before = load_params(tmp_path / "params.yaml")
    changed = orch.apply_overrides(tmp_path, ["router.epochs=7", "arms.tasks.query_rewrite.targets=[q_proj]"])
    assert changed == {"router.epochs": 7, "arms.tasks.query_rewrite.targets": ["q_proj"]}
    after = load_params(tmp_path / "params.yaml")
    assert after.router.epochs == 7 and after.arms.tasks["query_rewrite"].targets == ["q_proj"]
    assert after.planner == before.planner
    assert "# Every number of the pipeline" in (tmp_path / "params.yaml").read_text()


@pytest.mark.parametrize("override", ["router.epochs=0", "router.no_such_key=3"])
def test_bad_override_is_refused_and_params_untouched(tmp_path: Path, override: str) -> None:
    """An override that makes params.yaml invalid, or names no key, is refused; the file is byte-identical."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    original = (tmp_path / "params.yaml").read_bytes()
    with pytest.raises(ValueError, match=r"params override .* refused"):
        orch.apply_overrides(tmp_path, [override])
    assert (tmp_path / "params.yaml").read_bytes() == original


def test_arm_stages_follow_params_and_refuse_unknown_tasks() -> None:
    """The arm fan-out is one stage per params.yaml task; an unknown task name is refused by name."""
    tasks = sorted(yaml.safe_load((ROOT / "params.yaml").read_text())["arms"]["tasks"])
    assert sorted(orch.arm_stages(ROOT, None)) == [f"finetune_arm@{t}" for t in tasks]
    assert orch.arm_stages(ROOT, [tasks[0]]) == [f"finetune_arm@{tasks[0]}"]
    with pytest.raises(KeyError, match="unknown arm task\\(s\\) nope"):
        orch.arm_stages(ROOT, ["nope"])


def test_data_fingerprint_sees_a_new_agents_file(tmp_path: Path) -> None:
    """Dropping a changed agents.jsonl in place changes the fingerprint; once recorded, no change is seen."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "agents.jsonl").write_text('{"id": "a", "description": "an agent that answers"}\n')
    first = orch.data_changed(data, tmp_path)
    assert first == orch.data_fingerprint(data)
    orch.record_data_hash(tmp_path, first, "test")
    assert orch.data_changed(data, tmp_path) is None
    (data / "agents.jsonl").write_text('{"id": "b", "description": "a new agent that answers"}\n')
    assert orch.data_changed(data, tmp_path) not in (None, first)


def test_one_data_version_is_announced_once_even_by_two_announcers_at_once(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The data sensor and `amo data update` can see the same change at the same moment: one
    `amo.data.updated` event goes out (so one retrain starts, not a second one refused by the
    retrain lock); the other caller is told it was already announced. New data is announced again."""
    import prefect.events
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    data = tmp_path / "data"
    data.mkdir()
    (data / "agents.jsonl").write_text('{"id": "a", "description": "an agent that answers"}\n')
    sent: list[str] = []

    def slow_emit(event: str, **_: object) -> object:
        time.sleep(0.3)  # a wide window between the check and the record
        sent.append(event)
        return type("Event", (), {"id": f"event-{len(sent)}"})()

    monkeypatch.setattr(prefect.events, "emit_event", slow_emit)
    monkeypatch.setattr(EventsWorker, "drain_all", classmethod(lambda cls, timeout=None: None))
    results: list[dict] = []
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        callers = [threading.Thread(target=contextvars.copy_context().run,  # the settings live in a context
                                    args=(lambda why=why: results.append(orch.emit_data_updated(data, tmp_path, why)),))
                   for why in ("data-sensor", "amo data update")]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
        assert len(sent) == 1
        assert sorted(r["event_id"] is None for r in results) == [False, True]
        assert [r.get("already_announced") for r in results if r["event_id"] is None] == [True]
        assert {r["data_hash"] for r in results} == {orch.data_fingerprint(data)}
        (data / "agents.jsonl").write_text('{"id": "b", "description": "a new agent that answers"}\n')
        assert orch.emit_data_updated(data, tmp_path, "amo data update")["event_id"] == "event-2"


@pytest.mark.slow  # a subprocess, a spawned process or a trained model: not in make test-fast
def test_data_fingerprint_is_the_md5_dvc_records(tmp_path: Path) -> None:
    """In a DVC repository the sensor's fingerprint is DVC's own: the md5 that `dvc add` then
    writes to data.dvc (and a bundle manifest's data_hash), so one hash names one data version
    in the event, the state file and the bundle."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=tmp_path, check=True, env=env)
    data = tmp_path / "data"
    data.mkdir()
    (data / "agents.jsonl").write_text('{"id": "a", "description": "an agent that answers"}\n')
    recorded = orch.track_data(tmp_path, "data")
    assert recorded.endswith(".dir") and orch.data_fingerprint(data) == recorded
    (data / "agents.jsonl").write_text('{"id": "b", "description": "a new agent that answers"}\n')
    changed = orch.data_fingerprint(data)
    assert changed != recorded and orch.track_data(tmp_path, "data") == changed


def test_stage_error_names_the_stage_and_keeps_dvc_tail(tmp_path: Path) -> None:
    """A failing DVC command raises StageError with the stage name and the end of DVC's output."""
    with pytest.raises(orch.StageError, match="stage nowhere failed") as info:
        orch.run_stage("nowhere", tmp_path)
    assert info.value.tail and info.value.returncode != 0


@pytest.mark.integration  # a real Prefect server
def test_retrain_slot_is_a_prefect_global_concurrency_limit(prefect_api: str, tmp_path: Path) -> None:
    """With a Prefect server, one retrain per repository holds the global concurrency limit
    amo-retrain-<repo> (one slot, created on first use): a second is refused naming it, and the
    slot is free again once the first ends."""
    from prefect import get_client

    repo = tmp_path / "shop copy"
    repo.mkdir()
    with orch.retrain_slot(repo, timeout=0) as held:
        assert held == "Prefect global concurrency limit amo-retrain-shop-copy"
        with (pytest.raises(orch.RetrainBusy, match="'amo-retrain-shop-copy' \\(1 slot\\) is taken"),
              orch.retrain_slot(repo, timeout=0)):
            pytest.fail("two retrains held the slot")
    with orch.retrain_slot(repo, timeout=0):
        pass
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("amo-retrain-shop-copy").limit == 1
    assert not (repo / ".amo").exists()  # no file lock when the server decides


@pytest.mark.slow  # real `dvc repro` in a new repository
def test_stage_lines_are_passed_on_as_they_come(tmp_path: Path) -> None:
    """run_stage hands every line the stage prints to on_line, in order, and still returns it all."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True, env=env)
    (tmp_path / "dvc.yaml").write_text("stages:\n  talk:\n    cmd: echo first line && echo second line\n")
    seen: list[str] = []
    output = orch.run_stage("talk", tmp_path, on_line=seen.append)
    assert seen.index("first line") < seen.index("second line")
    assert "second line" in output


def test_reports_are_markdown_tables(tmp_path: Path) -> None:
    """The metrics report lists every number of metrics/*.json; the decision report shows the verdict."""
    (tmp_path / "arms").mkdir()
    (tmp_path / "evaluation.json").write_text(json.dumps({"router": {"in_scope_accuracy": 0.8125}}))
    (tmp_path / "arms" / "x.json").write_text(json.dumps({"arm": 0.5, "task": "x"}))
    table = orch.metrics_markdown(tmp_path, "All")
    assert "| evaluation | router.in_scope_accuracy | 0.8125 |" in table and "| arms/x | arm | 0.5000 |" in table

    from amo.registry import Decision

    decision = Decision("b2", False, ["FAILED: router.x = 0.1 < floor 0.5"], "b1",
                        {"candidate": {"router": {"x": 0.1}, "per_agent": {"gift_cards": {"route_top1": 0.75}}},
                         "champion": {"router": {"x": 0.9}, "per_agent": {}}, "same_data": True})
    text = orch.decision_markdown(decision)
    assert "REJECTED" in text and "| router.x | 0.1000 | 0.9000 |" in text and "FAILED" in text
    assert "| gift_cards | 0.7500 | — |" in text


def test_orchestration_config_refuses_bad_zone_and_cron() -> None:
    """A timezone that is not an IANA name, or a cron without five fields, is refused by key."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert load_params(ROOT / "params.yaml").orchestration.timezone
    with pytest.raises(ConfigError, match=r"orchestration.timezone"):
        parse_params({**raw, "orchestration": {"timezone": "Mars/Olympus"}})
    with pytest.raises(ConfigError, match=r"orchestration.nightly_cron"):
        parse_params({**raw, "orchestration": {"nightly_cron": "every night"}})


@pytest.mark.slow  # a subprocess, a spawned process or a trained model: not in make test-fast
def test_data_update_without_a_server_says_so(tmp_path: Path) -> None:
    """`amo data update` with no PREFECT_API_URL sends nothing, says why, and records nothing."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "agents.jsonl").write_text('{"id": "a", "description": "an agent that answers"}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    out = subprocess.run([str(Path(sys.executable).parent / "amo"), "-p", str(ROOT / "params.yaml"),
                          "data", "update", "--data", str(data)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "not announced, PREFECT_API_URL is not set" in out and orch.data_fingerprint(data) in out
    assert orch.last_data_hash(tmp_path) is None
