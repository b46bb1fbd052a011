"""CANARD (`dev.json`) -> arm task `query_rewrite`: dialogue history + question -> self-contained question.

`dev.json` is a list of records with `History` (article title, section title, then alternating
questions and answers), `Question`, `Rewrite` and `QuAC_dialog_id` (`C_<section hash>_<n>`: QuAC
runs up to two dialogues over the same article section, which share its title and answers). The
split is seeded and keyed by the section part of the dialogue id, so neither a dialogue nor a
section is in two splits: 80 % train, 20 % test.

Input text: the topic (title and section), the last `RECENT_TURNS` history turns as `Q:`/`A:`
lines (the rewrite almost always refers to the topic or the latest answers, and the arm's max
length is short), then the question. On /work/shared/datasets/canard (3,430 records, 490
dialogues, 475 sections) with seed 13: train 2,758, test 672 examples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from amo.importers import Imported, Record, SourceError, require, split_by_key

TASK = "query_rewrite"
RECENT_TURNS = 4
FRACTIONS = {"train": 0.8, "test": 0.2}


def section_key(dialog_id: str) -> str:
    """`C_<hash>_<n>` -> `C_<hash>`: dialogues over one article section share a key."""
    head, _, tail = dialog_id.rpartition("_")
    return head if head and tail.isdigit() else dialog_id


def format_input(history: list[str], question: str, recent: int = RECENT_TURNS) -> str:
    """Topic line, the last `recent` turns as Q:/A: lines, and the question."""
    title, section, turns = [*history, "", ""][0], [*history, "", ""][1], history[2:]
    lines = [f"Topic: {title} - {section}" if section else f"Topic: {title}"]
    start = max(0, len(turns) - recent)
    start -= start % 2  # keep question/answer pairs whole
    for i, turn in enumerate(turns[start:], start=start):
        lines.append(f"{'Q' if i % 2 == 0 else 'A'}: {turn}")
    lines.append(f"Question: {question}")
    return "\n".join(lines)


def _record(path: Path, row: int, raw: Any) -> tuple[str, Record]:
    if not isinstance(raw, dict):
        raise SourceError(f"{path}: record {row}: expected an object, got {type(raw).__name__}")
    for key, kind in (("History", list), ("Question", str), ("Rewrite", str), ("QuAC_dialog_id", str)):
        if not isinstance(raw.get(key), kind):
            raise SourceError(f"{path}: record {row}: field {key!r} missing or not a {kind.__name__}")
    history = [str(turn) for turn in raw["History"]]
    return section_key(raw["QuAC_dialog_id"]), {
        "input": format_input(history, raw["Question"].strip()), "output": raw["Rewrite"].strip()}


def load(source: Path, seed: int) -> Imported:
    """CANARD dev.json as the `query_rewrite` task, split by dialogue section."""
    (path,) = require(source, "dev.json")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(raw, list):
        raise SourceError(f"{path}: expected a JSON list of records, got {type(raw).__name__}")
    keyed = [_record(path, row, item) for row, item in enumerate(raw, start=1)]
    keyed = [(key, r) for key, r in keyed if r["input"] and r["output"]]
    splits = split_by_key(keyed, lambda item: item[0], FRACTIONS, seed)
    return Imported(name="canard", tasks={TASK: {name: [r for _, r in items] for name, items in splits.items()}})
