"""`amo data add`: a new agent's first rows are checked, then split per agent so the gate
measures it; bad rows are refused by file, row and field, and nothing is written."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from amo import data as contracts
from amo.cli import app
from amo.config import DataParams
from amo.demo import write_demo_data
from amo.intake import add_rows, split_counts
from amo.validate import DataValidationError, validate_data

NEW = "gift_cards"


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    write_demo_data(folder, seed=3)
    with open(folder / "agents.jsonl", "ab") as handle:
        handle.write(contracts.json_line({"id": NEW, "description": "Buys, sends and checks the balance "
                                          "of store gift cards.", "domain": "payments", "tags": []}))
    return folder


def _rows(n: int) -> list[dict]:
    return [{"prompt": f"what is left on gift card number {i} after my purchase", "labels": {NEW: 2}}
            for i in range(n)]


def _traces(n: int) -> list[dict]:
    return [{"prompt": f"send gift card {i} to my sister and tell me when it ships",
             "path": [NEW, "shipping_delivery"], "outcome": "success"} for i in range(n)]


def _write(path: Path, records: list[dict]) -> Path:
    contracts.write_jsonl(path, records)
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _count(path: Path, agent: str) -> int:
    return sum(agent in r.get("labels", {}) or agent in r.get("path", []) for r in contracts.iter_jsonl(path))


def test_split_counts_hold_out_rows_once_an_agent_has_enough() -> None:
    """Twenty rows give 14/3/3; fewer than min_split_rows all train; five rows keep one each out."""
    assert split_counts(20, [0.7, 0.15, 0.15], 5) == [14, 3, 3]
    assert split_counts(4, [0.7, 0.15, 0.15], 5) == [4, 0, 0]
    assert split_counts(5, [0.7, 0.15, 0.15], 5) == [3, 1, 1]
    assert split_counts(10, [0.8, 0.2], 5) == [8, 2]


def test_new_agent_rows_are_split_per_agent_whatever_their_order(data_dir: Path, tmp_path: Path) -> None:
    """A new agent's 20 rows and 10 traces land 14/3/3 and 8/2 across the splits, the data stays
    valid, and the same rows in another order give the same files."""
    rows, traces = _rows(20), _traces(10)
    twin = tmp_path / "twin"
    twin.mkdir()
    twin_data = twin / "data"
    twin_data.mkdir()
    for p in data_dir.rglob("*"):
        if p.is_file():
            (twin_data / p.relative_to(data_dir)).parent.mkdir(parents=True, exist_ok=True)
            (twin_data / p.relative_to(data_dir)).write_bytes(p.read_bytes())

    report = add_rows(DataParams(), data_dir, _write(tmp_path / "rows.jsonl", rows),
                      _write(tmp_path / "traces.jsonl", traces))
    assert report["routing"]["by_agent"][NEW] == {"train": 14, "val": 3, "test": 3}
    assert report["traces"]["by_agent"][NEW] == {"train": 8, "test": 2}
    assert [_count(data_dir / "routing" / f"{s}.jsonl", NEW) for s in ("train", "val", "test")] == [14, 3, 3]
    assert [_count(data_dir / "traces" / f"{s}.jsonl", NEW) for s in ("train", "test")] == [8, 2]
    validate_data(data_dir, tasks=[])

    random.Random(0).shuffle(rows)
    random.Random(1).shuffle(traces)
    add_rows(DataParams(), twin_data, _write(tmp_path / "rows2.jsonl", rows), _write(tmp_path / "t2.jsonl", traces))
    assert _snapshot(twin_data) == _snapshot(data_dir)


def test_bad_rows_are_refused_by_file_row_and_field_and_nothing_is_written(data_dir: Path, tmp_path: Path) -> None:
    """An unknown agent, a prompt already in the test split and a broken line are each named by
    the user's file and row; the data folder is byte-identical afterwards."""
    before = _snapshot(data_dir)
    test_prompt = next(contracts.iter_jsonl(data_dir / "routing" / "test.jsonl"))["prompt"]
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps(r) for r in _rows(3)]
    lines.append(json.dumps({"prompt": "book me a flight to Lisbon", "labels": {"travel_agent": 2}}))
    lines.append(json.dumps({"prompt": test_prompt, "labels": {NEW: 1}}))
    lines.append('{"prompt": "torn')
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataValidationError) as caught:
        add_rows(DataParams(), data_dir, bad)
    where = {(p.file, p.row) for p in caught.value.problems}
    assert {(str(bad), 4), (str(bad), 5), (str(bad), 6)} <= where, caught.value.problems
    assert "travel_agent" in str(caught.value) and "leakage" in str(caught.value)
    assert _snapshot(data_dir) == before
    assert not list(data_dir.parent.glob(".intake-*"))


@pytest.mark.slow  # a subprocess, a spawned process or a trained model: not in make test-fast
def test_two_adds_of_the_same_rows_at_once_add_them_once(data_dir: Path, tmp_path: Path) -> None:
    """Two `amo data add` of overlapping rows at the same time: one adds them, the other waits
    for it and is refused (its prompts are now in the data), so no prompt lands twice."""
    import threading

    outcomes: list[str] = []

    def add(name: str) -> None:
        try:
            add_rows(DataParams(), data_dir, _write(tmp_path / f"{name}.jsonl", _rows(10)))
            outcomes.append("added")
        except DataValidationError as exc:
            outcomes.append("refused: leakage" if "leakage" in str(exc) else f"refused: {exc}")

    threads = [threading.Thread(target=add, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["added", "refused: leakage"]
    assert sum(_count(data_dir / "routing" / f"{s}.jsonl", NEW) for s in ("train", "val", "test")) == 10
    validate_data(data_dir, tasks=[])


def test_cli_data_add_prints_the_split_and_refuses_no_input(data_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`amo data add --routing F --data D` prints the per-agent split; without a file it exits 2."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # params.yaml of the project
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["data", "add", "--routing", str(_write(tmp_path / "r.jsonl", _rows(5))),
                                 "--data", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[:result.output.rindex("}") + 1])["routing"]["by_agent"][NEW] == {
        "train": 3, "val": 1, "test": 1}
    assert runner.invoke(app, ["data", "add", "--data", str(data_dir)]).exit_code == 2


def test_an_abstained_trace_is_added_with_the_out_of_scope_ones(data_dir: Path, tmp_path: Path) -> None:
    """A trace with an empty path (outcome abstained, as the contract allows) is split, not a crash."""
    report = add_rows(DataParams(), data_dir, traces=_write(tmp_path / "t.jsonl", [
        {"prompt": "sing me the gift card song please", "path": [], "outcome": "abstained"}]))
    assert report["traces"]["by_agent"] == {"(out of scope)": {"train": 1, "test": 0}}
