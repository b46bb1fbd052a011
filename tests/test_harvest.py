"""`amo data harvest`: logged decisions with feedback become graded routing rows and traces,
deduplicated against the data, checked by the validation suites, appended with provenance and
announced; unknown agents and unlogged prompts are reported, never dropped silently."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_decisions import serve_logged
from tiny_bundle import write_tiny_data
from typer.testing import CliRunner

from amo import data as contracts
from amo.cli import app
from amo.config import DataParams
from amo.decisions import DecisionLog
from amo.harvest import harvest
from amo.validate import DataValidationError, validate_data

ROOT = Path(__file__).resolve().parents[1]


def _route(*agents: str) -> dict[str, Any]:
    return {"agents": [{"id": a, "score": 3.0 - i} for i, a in enumerate(agents)], "separator": 0.5,
            "abstained": not agents}


# (request id, prompt (None: not logged), served agents, feedback)
TRAFFIC: list[tuple[str, str | None, tuple[str, ...], dict[str, Any]]] = [
    ("ok-two", "my parcel 4 never came and I want my money back", ("order_status", "returns_refunds"),
     {"outcome": "ok"}),
    ("wrong-price", "what does the green kettle cost now", ("product_search",),
     {"outcome": "wrong", "agents": ["price_lookup"], "path": ["product_search", "price_lookup"]}),
    ("wrong-oos", "write me a poem about autumn", ("product_search",), {"outcome": "wrong", "agents": []}),
    ("ok-abstained", "who is the president of mars", (), {"outcome": "ok", "path": []}),
    ("wrong-unknown", "where is the lamp I bought", ("product_search",), {"outcome": "wrong"}),
    ("partial", "find a blue sofa and its price", ("product_search",),
     {"outcome": "partial", "agents": ["product_search", "price_lookup"]}),
    ("in-data", "Where is my order 1234", ("order_status",), {"outcome": "ok"}),
    ("gift", "balance of my gift card please", ("product_search",),
     {"outcome": "wrong", "agents": ["gift_cards"]}),
    ("no-prompt", None, ("order_status",), {"outcome": "ok"}),
    ("repeat", "WHAT does the green kettle cost now ", ("price_lookup",), {"outcome": "ok"}),
    ("no-feedback", "track parcel 5", ("order_status",), {}),
]


def write_log(folder: Path) -> None:
    log = DecisionLog(folder, log_prompts=True)
    for request_id, prompt, agents, feedback in TRAFFIC:
        log.log_prompts = prompt is not None
        log.decide(request_id, "route", "tiny-1", prompt or "a private prompt", _route(*agents), None, 1.0)
        if feedback:
            log.feedback(request_id, feedback["outcome"], feedback.get("agents"), feedback.get("path"), "tiny-1")
    log.feedback("not-logged", "ok", None, None, "tiny-1")
    log.stop()


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    write_tiny_data(tmp_path / "data")
    return tmp_path / "data"


def _rows(data_dir: Path, kind: str) -> dict[str, Any]:
    return {r["prompt"]: r for path in sorted((data_dir / kind).glob("*.jsonl")) for r in contracts.iter_jsonl(path)}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_harvest_appends_graded_rows_and_reports_the_rest(data_dir: Path, tmp_path: Path) -> None:
    """ok confirms the served selection (an abstention as out of scope), wrong/partial with agents
    give the corrected grades, a path gives a trace; a prompt in the data or repeated is dropped,
    an unknown agent and a wrong without agents are refused by request id, an unlogged prompt is
    counted; the data still validates and each row's provenance is written."""
    write_log(tmp_path / "log")
    report = harvest(DataParams(), data_dir, tmp_path / "log")
    routing, traces = _rows(data_dir, "routing"), _rows(data_dir, "traces")
    assert routing["my parcel 4 never came and I want my money back"]["labels"] == {
        "order_status": 2, "returns_refunds": 1}
    assert routing["write me a poem about autumn"]["labels"] == {}
    assert routing["who is the president of mars"]["labels"] == {}
    assert routing["find a blue sofa and its price"]["labels"] == {"product_search": 2, "price_lookup": 1}
    # the latest feedback on the kettle prompt wins: the repeat's ok of price_lookup
    assert routing["WHAT does the green kettle cost now "]["labels"] == {"price_lookup": 2}
    assert "what does the green kettle cost now" not in routing
    assert traces["what does the green kettle cost now"]["path"] == ["product_search", "price_lookup"]
    assert traces["who is the president of mars"] == {"prompt": "who is the president of mars", "path": [],
                                                      "outcome": "abstained"}
    assert "track parcel 5" not in routing and "balance of my gift card please" not in routing
    assert report["rows_in"] == 10 and report["appended"] == {"routing": 5, "traces": 2}
    assert report["duplicates_dropped"] == {"routing": 2, "traces": 0}
    assert sorted((r["request_id"], r["reason"], r.get("agent")) for r in report["refused"]) == [
        ("gift", "unknown_agent", "gift_cards"), ("not-logged", "decision_not_in_log", None),
        ("wrong-unknown", "no_correction", None)]
    assert report["prompt_not_logged"] == 1 and "log_prompts" in report["prompt_not_logged_note"]
    validate_data(data_dir, tasks=[])
    provenance = list(contracts.iter_jsonl(Path(report["provenance"])))
    assert Path(report["provenance"]).parent == data_dir / "provenance"
    assert {(p["kind"], p["request_id"]) for p in provenance} == {
        ("routing", "ok-two"), ("routing", "wrong-oos"), ("routing", "ok-abstained"), ("routing", "partial"),
        ("routing", "repeat"), ("traces", "wrong-price"), ("traces", "ok-abstained")}
    assert all(p["bundle_id"] == "tiny-1" for p in provenance)
    again = harvest(DataParams(), data_dir, tmp_path / "log")
    assert again["appended"] == {"routing": 0, "traces": 0} and again["duplicates_dropped"] == {
        "routing": 7, "traces": 2}


def test_since_keeps_later_decisions_only(data_dir: Path, tmp_path: Path) -> None:
    """--since after every decision harvests nothing; a bad time is refused by value."""
    write_log(tmp_path / "log")
    report = harvest(DataParams(), data_dir, tmp_path / "log", since="2999-01-01")
    assert report["rows_in"] == 0 and report["appended"] == {"routing": 0, "traces": 0}
    with pytest.raises(ValueError, match="'yesterday' is not an ISO 8601 time"):
        harvest(DataParams(), data_dir, tmp_path / "log", since="yesterday")


def test_a_validation_failure_leaves_the_data_untouched(data_dir: Path, tmp_path: Path) -> None:
    """Rows the suites refuse (prompts over data.max_prompt_chars) write nothing, not even provenance."""
    write_log(tmp_path / "log")
    before = _snapshot(data_dir)
    with pytest.raises(DataValidationError, match="prompt"):
        harvest(DataParams(max_prompt_chars=40), data_dir, tmp_path / "log")
    assert _snapshot(data_dir) == before


def test_two_harvests_at_once_append_each_row_once(data_dir: Path, tmp_path: Path) -> None:
    """Two harvests of the same log at the same time: the lock orders them, and the second finds
    every row already in the data."""
    write_log(tmp_path / "log")
    reports: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda: reports.append(harvest(DataParams(), data_dir, tmp_path / "log")))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(sum(r["appended"].values()) for r in reports) == [0, 7]
    validate_data(data_dir, tasks=[])


def test_served_feedback_is_harvested_and_announced(data_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Over real HTTP: a route logged with its prompt, feedback correcting it, then `amo data
    harvest --log --data --report` appends the corrected row, writes the report and announces
    the data change as `amo data add` does (emit_data_updated, why "amo data harvest")."""
    with serve_logged(tmp_path, log_prompts=True) as url:
        request_id = httpx.post(f"{url}/route", json={"prompt": "how much for the red kettle"}).json()["request_id"]
        assert httpx.post(f"{url}/feedback", json={"request_id": request_id, "outcome": "wrong",
                                                  "agents": ["price_lookup"]}).status_code == 200
    announced: list[tuple[Path, str]] = []
    monkeypatch.setattr("amo.orchestration.emit_data_updated", lambda folder, repo, why: announced.append(
        (folder, why)) or {"event_id": "e-1", "api_url": "http://prefect", "data_hash": "h"})
    monkeypatch.chdir(ROOT)  # the project's params.yaml
    result = CliRunner().invoke(app, ["data", "harvest", "--log", str(tmp_path / "log"), "--data", str(data_dir),
                                      "--report", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["appended"] == {"routing": 1, "traces": 0} and report["refused"] == []
    assert _rows(data_dir, "routing")["how much for the red kettle"]["labels"] == {"price_lookup": 2}
    assert announced == [(data_dir, "amo data harvest")] and "event amo.data.updated e-1" in result.output
    nothing = CliRunner().invoke(app, ["data", "harvest", "--log", str(tmp_path / "log"), "--data", str(data_dir)])
    assert nothing.exit_code == 0 and len(announced) == 1  # nothing new: nothing announced
    bad = CliRunner().invoke(app, ["data", "harvest", "--log", str(tmp_path / "log"), "--data", str(data_dir),
                                   "--since", "soon"])
    assert bad.exit_code == 2 and "'soon' is not an ISO 8601 time" in bad.output


@pytest.mark.integration
def test_harvest_announces_amo_data_updated_on_a_real_prefect_api(prefect_api: str, data_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With a Prefect API, `amo data harvest` emits `amo.data.updated` with the harvested data's
    hash and why "amo data harvest", the event the on-new-data deployment triggers on."""
    import time

    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    from amo import orchestration as orch

    write_log(tmp_path / "log")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    result = CliRunner().invoke(app, ["data", "harvest", "--log", str(tmp_path / "log"), "--data", str(data_dir)])
    assert result.exit_code == 0, result.output
    data_hash = orch.data_fingerprint(data_dir)
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while not found and time.monotonic() < deadline:
            page = client.read_events(EventFilter(event=EventNameFilter(name=[orch.DATA_UPDATED])), limit=50)
            found = [e.payload for e in page.events if e.payload.get("data_hash") == data_hash]
            time.sleep(0.5)
    assert found and found[0]["why"] == "amo data harvest"
