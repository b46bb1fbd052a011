"""The Amazon hierarchical-reviews importer: path agents, graded labels, dedup, seeded splits."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from amo.importers import SourceError, load

HEADER = ["Title", "Text", "Cat1", "Cat2", "Cat3", "flat_cat"]


def write_reviews(folder: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "reviews.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return folder


def review(i: int, cats: tuple[str, str, str]) -> list[str]:
    return [f"Product {i}", f"Review number {i} of something.", *cats, str(cats)]


CATS = [("pet supplies", "cats", "cat flaps"), ("pet supplies", "dogs", "food"),
        ("beauty", "fragrance", "men s"), ("toys games", "puzzles", "food")]


def test_every_level_is_an_agent_and_labels_are_graded_by_level(tmp_path: Path) -> None:
    """Each category prefix is one agent described by its path; a review's labels grade L1<L2<L3."""
    source = write_reviews(tmp_path, [review(i, CATS[i % 4]) for i in range(40)])
    imported = load("amazon_htc", source, seed=1)
    agents = {a["id"]: a for a in imported.agents}
    assert len([a for a in agents if a.startswith("l1:")]) == 3
    assert len([a for a in agents if a.startswith("l2:")]) == 4
    # "food" under two parents is two different level-3 agents
    assert {"l3:pet_supplies.dogs.food", "l3:toys_games.puzzles.food"} <= set(agents)
    cat_flaps = agents["l3:pet_supplies.cats.cat_flaps"]
    assert cat_flaps["description"].endswith("pet supplies > cats > cat flaps")
    assert cat_flaps["domain"] == "pet supplies"
    record = next(r for split in imported.routing.values() for r in split
                  if r["prompt"].startswith("Product 0."))
    assert record["prompt"] == "Product 0. Review number 0 of something."
    assert record["labels"] == {"l1:pet_supplies": 1, "l2:pet_supplies.cats": 2,
                                "l3:pet_supplies.cats.cat_flaps": 3}


def test_duplicates_are_dropped_and_splits_are_seeded_and_disjoint(tmp_path: Path) -> None:
    """Exact repeats are kept once, a text with two label paths is dropped, splits never share a
    review and repeat for the same seed."""
    rows = [review(i, CATS[i % 4]) for i in range(200)]
    rows += [review(3, CATS[3]), review(3, CATS[3])]  # exact repeats of review 3
    rows += [review(5, CATS[0])]  # review 5 again with a different path: ambiguous
    source = write_reviews(tmp_path, rows)
    imported = load("amazon_htc", source, seed=7)
    prompts = [r["prompt"] for split in imported.routing.values() for r in split]
    assert len(prompts) == len(set(prompts)) == 199
    assert not any(p.startswith("Product 5.") for p in prompts)
    sides = {name: {r["prompt"] for r in split} for name, split in imported.routing.items()}
    assert set(sides) == {"train", "val", "test"}
    assert not (sides["train"] & sides["test"]) and not (sides["train"] & sides["val"])
    assert imported.routing == load("amazon_htc", source, seed=7).routing
    assert imported.routing != load("amazon_htc", source, seed=8).routing


def test_wrong_format_is_refused_naming_file_and_row(tmp_path: Path) -> None:
    """A CSV without the category columns, or with an empty category, is refused clearly."""
    write_reviews(tmp_path / "a", [["t", "x"]], header=["Title", "Text"])
    with pytest.raises(SourceError, match=r"reviews.csv: .*missing columns Cat1, Cat2, Cat3"):
        load("amazon_htc", tmp_path / "a", seed=0)
    write_reviews(tmp_path / "b", [review(0, CATS[0]), ["t", "x", "beauty", "", "c", ""]])
    with pytest.raises(SourceError, match=r"reviews.csv: row 3: empty 'Cat2'"):
        load("amazon_htc", tmp_path / "b", seed=0)
    with pytest.raises(SourceError, match="missing"):
        load("amazon_htc", tmp_path, seed=0)
