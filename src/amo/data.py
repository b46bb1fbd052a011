"""Readers for amo's data contracts (JSON Lines). The validate stage checks them first;
these readers assume validated data and only give it types."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Agent:
    id: str
    description: str
    domain: str = ""
    tags: tuple[str, ...] = ()

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Agent:
        """An agent from its contract record (agents.jsonl line, an importer's record)."""
        return cls(id=record["id"], description=record["description"],
                   domain=record.get("domain") or "", tags=tuple(record.get("tags") or ()))


@dataclass(frozen=True)
class RoutingExample:
    prompt: str
    labels: dict[str, int] = field(default_factory=dict)  # agent id -> grade >= 1; {} = out of scope


@dataclass(frozen=True)
class Trace:
    prompt: str
    path: tuple[str, ...]
    outcome: str = "success"


@dataclass(frozen=True)
class TaskExample:
    input: str
    output: str


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def json_line(record: dict[str, Any]) -> bytes:
    """One JSON Lines record as written everywhere in the data: sorted keys, UTF-8, newline."""
    return (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.writelines(json_line(record) for record in records)


def write_json(path: Path, value: Any) -> None:
    """A stage's JSON output (metrics, reports): sorted keys, so a re-run writes the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    """A plot's data for `dvc plots` (CSV, floats rounded to 6 places: a re-run writes the same bytes)."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([round(v, 6) if isinstance(v, float) else v for v in row] for row in rows)


def read_agents(path: Path) -> list[Agent]:
    return [Agent.from_record(r) for r in iter_jsonl(path)]


def read_routing(path: Path) -> list[RoutingExample]:
    return [RoutingExample(prompt=r["prompt"], labels={k: int(v) for k, v in r["labels"].items()})
            for r in iter_jsonl(path)]


def read_traces(path: Path) -> list[Trace]:
    return [Trace(prompt=r["prompt"], path=tuple(r["path"]), outcome=r.get("outcome", "success"))
            for r in iter_jsonl(path)]


def read_task(path: Path) -> list[TaskExample]:
    return [TaskExample(input=r["input"], output=r["output"]) for r in iter_jsonl(path)]
