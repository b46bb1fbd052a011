"""Amazon product reviews with a 3-level category hierarchy (the seed paper's benchmark).

Every category at every level is an agent described by its path ("product category: pet
supplies > cats > cat flaps"), domain = its level-1 category. A review is a routing prompt
(Title + ". " + Text) whose labels are its three categories, graded by level: level 1 grade 1,
level 2 grade 2, level 3 grade 3. Under the listwise loss each grade must outrank every lower
one, so a review's ranking is leaf > parent > top category > separator > every other category:
the most specific description comes first, and every category still has to beat all the
irrelevant ones of its own level.

Duplicates: rows equal in every column are kept once; a Title+Text that carries two different
category paths is dropped (its label is ambiguous). Splits are by a seeded hash of Title+Text,
so no review is on two sides.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from amo.config import DataParams
from amo.importers import Imported, Record, SourceError, require, split_by_key

FILE = "reviews.csv"
COLUMNS = ("Title", "Text", "Cat1", "Cat2", "Cat3")
LEVEL_GRADES = (1, 2, 3)
FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
DESCRIPTION_PREFIX = "product category: "


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "_"


def category_id(path: tuple[str, ...]) -> str:
    """`l1:pet_supplies`, `l2:pet_supplies.cats`, `l3:pet_supplies.cats.cat_flaps`."""
    return f"l{len(path)}:" + ".".join(slug(name) for name in path)


def read_reviews(path: Path) -> list[tuple[str, str, tuple[str, str, str]]]:
    """(title, text, (cat1, cat2, cat3)) rows; SourceError names the row and column at fault."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise SourceError(f"{path}: not the amazon_htc reviews file, missing columns "
                              f"{', '.join(missing)} (has {reader.fieldnames})")
        rows = []
        for number, row in enumerate(reader, start=2):  # line 1 is the header
            for column in COLUMNS:
                if not (row.get(column) or "").strip():
                    raise SourceError(f"{path}: row {number}: empty {column!r}")
            rows.append((row["Title"].strip(), row["Text"].strip(),
                         (row["Cat1"].strip(), row["Cat2"].strip(), row["Cat3"].strip())))
    if not rows:
        raise SourceError(f"{path}: no reviews")
    return rows


def deduplicate(rows: list[tuple[str, str, tuple[str, str, str]]]) -> list[tuple[str, str, tuple[str, str, str]]]:
    """Keep each (title, text, path) once; drop a title+text that appears with two paths."""
    paths: dict[tuple[str, str], set[tuple[str, str, str]]] = {}
    for title, text, path in rows:
        paths.setdefault((title, text), set()).add(path)
    seen: set[tuple[str, str]] = set()
    kept = []
    for title, text, path in rows:
        key = (title, text)
        if len(paths[key]) == 1 and key not in seen:
            seen.add(key)
            kept.append((title, text, path))
    return kept


def agents_for(paths: set[tuple[str, str, str]]) -> list[Record]:
    """One agent per category prefix of every path, level by level, sorted by id."""
    agents: dict[str, Record] = {}
    for path in paths:
        for level in range(1, 4):
            prefix = path[:level]
            agent_id = category_id(prefix)
            description = DESCRIPTION_PREFIX + " > ".join(prefix)
            if agent_id in agents and agents[agent_id]["description"] != description:
                raise SourceError(f"categories {agents[agent_id]['description']!r} and "
                                  f"{description!r} share the id {agent_id!r}")
            agents[agent_id] = {"id": agent_id, "description": description, "domain": path[0],
                                "tags": [f"level-{level}"]}
    return [agents[k] for k in sorted(agents)]


def prompt_of(title: str, text: str, max_chars: int) -> str:
    return f"{title}. {text}"[:max_chars]


def load(source: Path, seed: int) -> Imported:
    """Agents (every category at every level) and graded routing splits from `reviews.csv`."""
    (path,) = require(source, FILE)
    rows = deduplicate(read_reviews(path))
    max_chars = DataParams().max_prompt_chars
    records: list[dict[str, Any]] = [{"prompt": prompt_of(title, text, max_chars),
                "labels": {category_id(cats[:level]): grade
                           for level, grade in zip((1, 2, 3), LEVEL_GRADES)},
                "key": title + "\n" + text}
               for title, text, cats in rows]
    splits = split_by_key(records, lambda r: r["key"], FRACTIONS, seed)
    routing = {name: [{"prompt": r["prompt"], "labels": r["labels"]} for r in part]
               for name, part in splits.items()}
    return Imported(name="amazon_htc", agents=agents_for({cats for _, _, cats in rows}),
                    routing=routing)
