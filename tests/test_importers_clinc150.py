"""The CLINC150 importer on a tiny source in the published format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amo.importers import SourceError, import_dataset, load
from amo.importers.clinc150 import DESCRIPTIONS


def write_source(folder: Path, data: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "domains.json").write_text(json.dumps({"banking": ["balance", "transfer"], "utility": ["timer"]}))
    data = data or {
        "train": [["how much money do i have", "balance"], ["send 20 dollars to bob", "transfer"]],
        "val": [["set a timer for 5 minutes", "timer"]],
        "test": [["what is my balance", "balance"]],
        "oos_train": [["who won the game last night", "oos"]],
        "oos_val": [["how tall is everest", "oos"]],
        "oos_test": [["write me a poem", "oos"], ["what is a quark", "oos"]],
    }
    (folder / "data_full.json").write_text(json.dumps(data))
    return folder


def test_intents_become_agents_and_oos_records_have_no_labels(tmp_path: Path) -> None:
    """Each intent is an agent with its domain and written description; oos prompts get labels {}."""
    imported = load("clinc150", write_source(tmp_path / "clinc"))
    assert [(a["id"], a["domain"]) for a in imported.agents] == [
        ("balance", "banking"), ("transfer", "banking"), ("timer", "utility")]
    assert imported.agents[0]["description"] == DESCRIPTIONS["balance"]
    assert imported.routing["train"] == [
        {"prompt": "how much money do i have", "labels": {"balance": 1}},
        {"prompt": "send 20 dollars to bob", "labels": {"transfer": 1}},
        {"prompt": "who won the game last night", "labels": {}}]
    assert [len(imported.routing[s]) for s in ("train", "val", "test")] == [3, 2, 3]
    counts = import_dataset("clinc150", tmp_path / "clinc", tmp_path / "out")
    assert counts == {"agents.jsonl": 3, "routing/train.jsonl": 3, "routing/val.jsonl": 2,
                      "routing/test.jsonl": 3}


def test_every_published_intent_has_a_description() -> None:
    """150 descriptions, each one sentence long enough for the agents contract."""
    assert len(DESCRIPTIONS) == 150
    assert all(20 <= len(text) <= 200 and text.endswith(".") for text in DESCRIPTIONS.values())


def test_wrong_format_is_refused_naming_file_and_row(tmp_path: Path) -> None:
    """An unknown intent, a malformed row or a missing split is refused with the file and row."""
    bad_intent = {"train": [["hi", "nope"]], "val": [], "test": [], "oos_train": [], "oos_val": [], "oos_test": []}
    with pytest.raises(SourceError, match=r"data_full.json: train row 0: intent 'nope'"):
        load("clinc150", write_source(tmp_path / "a", bad_intent))
    bad_row = dict(bad_intent, train=[["only text"]])
    with pytest.raises(SourceError, match=r"train row 0: expected \[text, intent\]"):
        load("clinc150", write_source(tmp_path / "b", bad_row))
    missing = {k: v for k, v in dict(bad_intent, train=[]).items() if k != "oos_test"}
    with pytest.raises(SourceError, match="missing split 'oos_test'"):
        load("clinc150", write_source(tmp_path / "c", missing))
    with pytest.raises(SourceError, match=r"missing .*data_full.json"):
        load("clinc150", tmp_path)
