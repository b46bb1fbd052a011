"""The importer framework: seeded key splits, and clear refusals of a wrong source."""

from __future__ import annotations

from pathlib import Path

import pytest

from amo.importers import SourceError, import_dataset, require, split_by_key


def test_split_by_key_keeps_a_key_on_one_side_and_is_seeded() -> None:
    """Items sharing a key land in one split; the same seed gives the same split."""
    items = [(f"dialogue-{i % 50}", i) for i in range(500)]
    fractions = {"train": 0.8, "test": 0.2}
    splits = split_by_key(items, lambda item: item[0], fractions, seed=3)
    sides = {name: {key for key, _ in rows} for name, rows in splits.items()}
    assert not sides["train"] & sides["test"]
    assert sum(len(rows) for rows in splits.values()) == 500
    assert splits == split_by_key(items, lambda item: item[0], fractions, seed=3)
    assert splits != split_by_key(items, lambda item: item[0], fractions, seed=4)


def test_wrong_source_is_refused_with_the_path(tmp_path: Path) -> None:
    """A missing folder, a file instead of a folder, and an unknown data set are named."""
    with pytest.raises(SourceError, match="no such file"):
        require(tmp_path / "nowhere", "x.json")
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(SourceError, match="expected the data set's folder"):
        require(tmp_path / "file.json", "x.json")
    with pytest.raises(SourceError, match=r"missing .*x.json"):
        require(tmp_path, "x.json")
    with pytest.raises(SourceError, match="unknown data set 'nope'"):
        import_dataset("nope", tmp_path, tmp_path / "out")


def test_a_prompt_repeated_in_a_later_split_is_dropped_there_and_counted(tmp_path: Path) -> None:
    """Published splits can repeat a prompt (CLINC150: 5 times), which validation refuses as
    leakage: the importer keeps its first split's copy (train before val before test, compared
    stripped and lowercased) and says how many it dropped."""
    from amo.importers import Imported

    routing = {"test": [{"prompt": "Hello there", "labels": {}}, {"prompt": "new one", "labels": {}}],
               "train": [{"prompt": "hello there ", "labels": {}}],
               "val": [{"prompt": "NEW ONE", "labels": {}}]}
    counts = Imported(name="x", routing=routing).write(tmp_path)
    assert counts["routing: dropped, also in an earlier split"] == 2
    assert counts["routing/train.jsonl"] == 1 and counts["routing/val.jsonl"] == 1
    assert counts["routing/test.jsonl"] == 0
