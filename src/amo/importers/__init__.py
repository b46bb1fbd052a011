"""Importers: public data sets (../shared/datasets) turned into amo's data contracts.

Each importer is a module `amo.importers.<name>` with one function

    load(source: Path, seed: int) -> Imported

that reads the published files under `source` and returns the records in memory (benchmarks use
them directly); `import_dataset` writes them as a data folder the validate stage accepts:

    <out>/agents.jsonl, routing/{train,val,test}.jsonl, traces/{train,test}.jsonl,
    tasks/<task>/{train,test}.jsonl      (each part only when the data set has it)

A wrong path or a file in the wrong format raises SourceError naming the file (and row).
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from amo.data import write_jsonl
from amo.validate import SPLIT_ORDER
from amo.validate import _prompt_key as leakage_key  # the key validation compares splits by

T = TypeVar("T")

# name -> module; modules are imported only when asked for.
IMPORTERS: dict[str, str] = {
    "clinc150": "amo.importers.clinc150",
    "amazon_htc": "amo.importers.amazon_htc",
    "ultratool": "amo.importers.ultratool",
    "seal_tools": "amo.importers.seal_tools",
    "snips": "amo.importers.snips",
    "canard": "amo.importers.canard",
}


class SourceError(ValueError):
    """A source path that is missing or not in the published format; the message names the file."""


Record = dict[str, Any]


@dataclass
class Imported:
    """One data set in amo's contracts, in memory; splits map a split name to records."""

    name: str
    agents: list[Record] = field(default_factory=list)
    routing: dict[str, list[Record]] = field(default_factory=dict)
    traces: dict[str, list[Record]] = field(default_factory=dict)
    tasks: dict[str, dict[str, list[Record]]] = field(default_factory=dict)

    def write(self, out: Path) -> dict[str, int]:
        """Write the contract files under `out`; returns record counts by file."""
        counts: dict[str, int] = {}

        def put(relative: str, records: list[Record]) -> None:
            write_jsonl(out / relative, records)
            counts[relative] = len(records)

        if self.agents:
            put("agents.jsonl", self.agents)
        for split, records in without_leaks(self.routing, "prompt", counts, "routing").items():
            put(f"routing/{split}.jsonl", records)
        for split, records in without_leaks(self.traces, "prompt", counts, "traces").items():
            put(f"traces/{split}.jsonl", records)
        for task, splits in self.tasks.items():
            for split, records in without_leaks(splits, "input", counts, f"tasks/{task}").items():
                put(f"tasks/{task}/{split}.jsonl", records)
        return counts


def without_leaks(splits: dict[str, list[Record]], column: str, counts: dict[str, int],
                  label: str) -> dict[str, list[Record]]:
    """`splits` without the records whose `column` (stripped, lowercased, as validation compares)
    already appeared in an earlier split: published splits can repeat a prompt (CLINC150 has 5,
    CANARD 1), which `amo validate` refuses as leakage. The count dropped goes to `counts` as
    `<label>: dropped, also in an earlier split`."""
    order = sorted(splits, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))
    seen: set[str] = set()
    kept: dict[str, list[Record]] = {}
    dropped = 0
    for split in order:
        kept[split], keys = [], set()
        for record in splits[split]:
            key = leakage_key(str(record.get(column, ""))) or ""
            if key and key in seen:
                dropped += 1
                continue
            keys.add(key)
            kept[split].append(record)
        seen |= keys
    if dropped:
        counts[f"{label}: dropped, also in an earlier split"] = dropped
    return {split: kept[split] for split in splits}


def require(source: Path, *relative: str) -> list[Path]:
    """The files `relative` under `source`, or SourceError naming what is missing."""
    source = Path(source)
    if not source.exists():
        raise SourceError(f"{source}: no such file or directory")
    if not source.is_dir():
        raise SourceError(f"{source}: expected the data set's folder, got a file")
    paths = [source / name for name in relative]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise SourceError(f"{source}: not this data set's folder, missing {', '.join(missing)}")
    return paths


def stable_fraction(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by (key, seed): splits that do not depend on record order."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_key(items: Sequence[T], key: Callable[[T], Hashable], fractions: dict[str, float],
                 seed: int) -> dict[str, list[T]]:
    """Split `items` by a hash of `key(item)`: items sharing a key (a prompt, a dialogue) always
    land in the same split, so no key is on two sides. `fractions` in order, summing to 1."""
    names = list(fractions)
    bounds, total = [], 0.0
    for name in names:
        total += fractions[name]
        bounds.append(total)
    out: dict[str, list[T]] = {name: [] for name in names}
    for item in items:
        u = stable_fraction(str(key(item)), seed) * total
        out[names[next(i for i, b in enumerate(bounds) if u < b or i == len(bounds) - 1)]].append(item)
    return out


def load(name: str, source: Path, seed: int = 13) -> Imported:
    """Run importer `name` on `source`."""
    if name not in IMPORTERS:
        raise SourceError(f"unknown data set {name!r}; importers: {', '.join(sorted(IMPORTERS))}")
    try:
        module = importlib.import_module(IMPORTERS[name])
    except ModuleNotFoundError as exc:
        if exc.name != IMPORTERS[name]:
            raise  # a dependency of the importer is missing: show the real cause
        raise SourceError(f"importer {name!r} is not available: {exc}") from None
    return module.load(Path(source), seed)


def import_dataset(name: str, source: Path, out: Path, seed: int = 13) -> dict[str, int]:
    """Import data set `name` from `source` and write it in amo's contracts under `out`."""
    return load(name, source, seed).write(Path(out))
