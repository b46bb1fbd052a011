"""New rows into the data: routing rows and traces (a new agent's first traffic, or more of an
old one's), checked by the validation suites and split into the data's files so that every agent
with enough rows gets val and test rows. The gate then measures the new agent, and nothing is
written unless every new row passes.

The split is by content: within each agent's new rows (grouped by the top-graded agent of a
routing row, or by the rarest agent of a trace's path), rows are ordered by the hash of their
prompt and the first ones go to test, then val. The same rows land in the same split whatever
order they arrive in."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from amo import data as contracts
from amo.config import DataParams
from amo.layout import STATE_DIR
from amo.locks import file_lock
from amo.routing import prompt_key
from amo.validate import DataValidationError, validate_data

OUT_OF_SCOPE = "(out of scope)"
LOCK_WAIT_SECONDS = 60.0
SPLITS = {"routing": ("train", "val", "test"), "traces": ("train", "test")}


def split_counts(n: int, fractions: list[float], min_rows: int) -> list[int]:
    """Rows per split for a group of n new rows (train first): each held-out split gets
    round(n * fraction) rows but at least one, once the group has `min_rows`; else all train."""
    if n < min_rows:
        return [n] + [0] * (len(fractions) - 1)
    held = [max(1, round(n * f)) for f in fractions[1:]]
    return [n - sum(held), *held]


def assign_splits(rows: list[dict[str, Any]], group_of: Callable[[dict[str, Any]], str],
                  names: tuple[str, ...], fractions: list[float], min_rows: int
                  ) -> dict[str, list[dict[str, Any]]]:
    """Split rows by group: per group, ordered by prompt hash, the held-out splits are filled
    from the front (test first), the rest is train."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[group_of(row)].append(row)
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for group in sorted(groups):
        ordered = sorted(groups[group], key=lambda r: prompt_key(r["prompt"]))
        counts = split_counts(len(ordered), fractions, min_rows)
        start = 0
        for name, count in reversed(list(zip(names, counts))):  # test, val, then train
            out[name] += ordered[start:start + count]
            start += count
    return out


def _top_agent(row: dict[str, Any]) -> str:
    labels = row.get("labels") or {}
    return max(sorted(labels), key=lambda a: labels[a]) if labels else OUT_OF_SCOPE


def _rarest_agent(counts: Counter[str]) -> Callable[[dict[str, Any]], str]:
    """A trace's group: the agent of its path that existing traces call least (a new agent);
    an abstained trace (empty path) groups with the out-of-scope ones."""
    return lambda row: min(sorted(set(row["path"])), key=lambda a: counts[a]) if row["path"] else OUT_OF_SCOPE


def _check(data_dir: Path, params: DataParams, incoming: dict[str, Path]) -> None:
    """Validate the data as it would be with the new files beside it (they are checked as extra
    split files, leakage against every split included); problems name the user's files."""
    with tempfile.TemporaryDirectory(prefix=".intake-", dir=data_dir.parent) as tmp:
        candidate = Path(tmp) / data_dir.name
        candidate.mkdir()
        shutil.copy2(data_dir / "agents.jsonl", candidate / "agents.jsonl")
        shown: dict[str, Path] = {}
        for kind in SPLITS:
            shutil.copytree(data_dir / kind, candidate / kind)
            if kind in incoming:
                staged = candidate / kind / "zz-new.jsonl"
                shutil.copy2(incoming[kind], staged)
                shown[f"{data_dir.name}/{kind}/zz-new.jsonl"] = incoming[kind]
        try:
            validate_data(candidate, tasks=[], min_description_chars=params.min_description_chars,
                          max_description_chars=params.max_description_chars,
                          max_prompt_chars=params.max_prompt_chars, max_task_chars=params.max_task_chars)
        except DataValidationError as err:
            raise DataValidationError([replace(p, file=str(shown.get(p.file, data_dir.parent / p.file)))
                                       for p in err.problems]) from None


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append whole lines through a temporary copy and a rename: a crash leaves the old file."""
    if not rows:
        return
    old = path.read_bytes() if path.is_file() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(old)
            for row in rows:
                handle.write(contracts.json_line(row))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_rows(params: DataParams, data_dir: Path, routing: Path | None = None,
             traces: Path | None = None) -> dict[str, Any]:
    """Check the new routing rows and traces against the data (contracts, known agents, no prompt
    already in any split), then append them, split per agent, to the data's split files.
    Returns how many rows went to each split, per agent. Writes nothing on any problem."""
    incoming = {kind: path for kind, path in (("routing", routing), ("traces", traces)) if path is not None}
    if not incoming:
        raise ValueError("nothing to add: give --routing and/or --traces")
    for path in incoming.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found")
    with data_lock(data_dir, "amo data add"):
        return add_checked(params, data_dir, incoming)


@contextmanager
def data_lock(data_dir: Path, command: str) -> Iterator[Path]:
    """Hold the data folder's intake lock (amo data add, amo data harvest): two writers at once
    would each pass the check against the old data, then both append."""
    with file_lock(data_dir.resolve().parent / STATE_DIR / "intake.lock", timeout=LOCK_WAIT_SECONDS,
                   owner=f"{command} (pid {os.getpid()})") as path:
        yield path


def add_checked(params: DataParams, data_dir: Path, incoming: dict[str, Path]) -> dict[str, Any]:
    """add_rows' work, for a caller holding data_lock: check `incoming` ({"routing"|"traces":
    file}) against the data, then append it split per agent; nothing is written on any problem."""
    _check(data_dir, params, incoming)
    return _add(data_dir, params, incoming)


def _add(data_dir: Path, params: DataParams, incoming: dict[str, Path]) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for kind, path in incoming.items():
        rows = list(contracts.iter_jsonl(path))  # _check parsed every line
        group_of: Callable[[dict[str, Any]], str]
        if kind == "routing":
            group_of, fractions = _top_agent, params.routing_split
        else:
            called = Counter(a for t in contracts.read_traces(data_dir / "traces" / "train.jsonl") for a in t.path)
            group_of, fractions = _rarest_agent(called), params.trace_split
        parts = assign_splits(rows, group_of, SPLITS[kind], list(fractions), params.min_split_rows)
        per_group: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS[kind], 0))
        for name, part in parts.items():
            for row in part:
                per_group[group_of(row)][name] += 1
            append_rows(data_dir / kind / f"{name}.jsonl", part)
        report[kind] = {"file": str(path), "rows": len(rows), "by_agent": dict(sorted(per_group.items()))}
    return report

