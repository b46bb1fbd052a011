"""Shared by the tool-call data sets (UltraTool, Seal-Tools): tools become agents, each query's
ordered calls become a routing example, a trace and argument-filling tasks.

One seeded split of the queries by their prompt (stripped, lowercased, as validation compares
prompts) into train/val/test drives everything: routing uses the three splits, traces and
`argument_filling` put val into train, so a question in routing test is in traces and tasks test.

- routing: prompt = question, labels = {agent id: 1} for every tool the query calls; queries
  without a call are dropped (counted), queries with the same prompt merged into one example.
- traces: path = the called tools' agent ids in call order (repeats kept), outcome "success".
- argument_filling: one task per call whose arguments could be read: input = question + "\n" +
  the tool's schema {name, description, arguments} as compact JSON (+ "\ncall k of n" when the
  query calls that tool n > 1 times), output = the arguments, json.dumps(sort_keys=True).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amo.config import DataParams
from amo.importers import Imported, Record, SourceError, split_by_key

log = logging.getLogger("amo")

ROUTING_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
TASK = "argument_filling"
_INVALID_ID_CHARS = re.compile(r"[^A-Za-z0-9_.:-]+")


@dataclass
class Tool:
    """One tool as published: name, description, JSON schema of its arguments, domain."""

    name: str
    description: str
    arguments: dict[str, Any]
    domain: str = ""

    @property
    def argument_names(self) -> list[str]:
        properties = self.arguments.get("properties")
        return [str(k) for k in properties] if isinstance(properties, dict) else []


@dataclass
class Call:
    """One call of a query: the tool's name, and its arguments (None if they could not be read)."""

    tool: str
    arguments: dict[str, Any] | None


@dataclass
class Query:
    question: str
    calls: list[Call]


@dataclass
class Source:
    """A data set read into tools and queries, with counts of what was dropped or repaired."""

    name: str
    tools: list[Tool]
    queries: list[Query]
    notes: Counter[str] = field(default_factory=Counter)


# -- reading the published files ----------------------------------------------------------------
def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line, object) for each non-blank line of a JSON Lines file; SourceError naming
    the file and row for anything that is not a JSON object."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: cannot read as UTF-8 text: {exc}") from None
    for row, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{path} row {row}: not valid JSON: {exc.msg} at column {exc.colno}") \
                from None
        if not isinstance(value, dict):
            raise SourceError(f"{path} row {row}: expected a JSON object, got {type(value).__name__}")
        yield row, value


def get(record: dict[str, Any], name: str, kind: type | tuple[type, ...], path: Path, row: int) -> Any:
    """Field `name` of a source row if it has type `kind`, else SourceError naming file, row, field."""
    if name not in record:
        raise SourceError(f"{path} row {row} field {name}: missing")
    value = record[name]
    if not isinstance(value, kind):
        raise SourceError(f"{path} row {row} field {name}: expected "
                          f"{getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


# -- agents -------------------------------------------------------------------------------------
def agent_ids(names: list[str]) -> dict[str, str]:
    """A valid, unique agent id for each tool name: the name itself when valid, else its invalid
    characters replaced by `_` (and a numeric suffix if that collides). Stable across runs."""
    ids: dict[str, str] = {}
    taken = {n for n in names if re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", n)}
    for name in names:
        if name in ids:
            continue
        if name in taken:
            ids[name] = name
            continue
        base = _INVALID_ID_CHARS.sub("_", name).strip("_")[:120] or "tool"
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}_{n}"
        taken.add(candidate)
        ids[name] = candidate
        log.info("tool name %r becomes agent id %r", name, candidate)
    return ids


def agent_description(tool: Tool, min_chars: int, max_chars: int) -> str:
    """The tool's description; one too short for validation gets its name and arguments added."""
    text = " ".join(tool.description.split())
    if len(text) < min_chars:
        names = tool.argument_names
        args = f"arguments: {', '.join(names)}" if names else "no arguments"
        text = f"{text.rstrip('.')}. Tool {tool.name}, {args}." if text else f"Tool {tool.name}, {args}."
    return text[:max_chars]


def _agents(tools: list[Tool], ids: dict[str, str], params: DataParams) -> list[Record]:
    return [{"id": ids[t.name],
             "description": agent_description(t, params.min_description_chars,
                                              params.max_description_chars),
             "domain": t.domain, "tags": t.argument_names} for t in tools]


# -- argument filling ---------------------------------------------------------------------------
def compact(value: Any) -> str:
    """JSON without spaces, keys in their given order (name, description, arguments)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _trimmed(value: Any, limit: int) -> Any:
    """`value` with every string longer than `limit` cut to `limit` characters."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "..."
    if isinstance(value, dict):
        return {k: _trimmed(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_trimmed(v, limit) for v in value]
    return value


def task_input(question: str, tool: Tool, max_chars: int,
               call: tuple[int, int] = (1, 1)) -> str | None:
    """The question, a newline, the tool's schema as compact JSON, and for a tool the query calls
    n > 1 times a line "call k of n" (else one input would have several right outputs). Long
    schemas have their texts cut shorter until the whole fits `max_chars` (None if it never does)."""
    schema = {"name": tool.name, "description": tool.description, "arguments": tool.arguments}
    which = f"\ncall {call[0]} of {call[1]}" if call[1] > 1 else ""
    for limit in (None, 400, 200, 100, 50, 20, 0):
        text = f"{question}\n{compact(schema if limit is None else _trimmed(schema, limit))}{which}"
        if len(text) <= max_chars:
            return text
    return None


# -- the contracts ------------------------------------------------------------------------------
def prompt_key(question: str) -> str:
    """How validation compares prompts: stripped and lowercased."""
    return question.strip().lower()


def build(source: Source, seed: int, params: DataParams | None = None) -> Imported:
    """Agents, routing (train/val/test), traces and argument_filling (train/test) from one
    seeded split of the queries by prompt."""
    params = params or DataParams()
    notes = source.notes
    ids = agent_ids([t.name for t in source.tools])
    tools = {t.name: t for t in source.tools}
    queries = []
    for q in source.queries:
        if not q.calls:
            notes["queries without a tool call"] += 1
        elif len(q.question) > params.max_prompt_chars:
            notes[f"questions over {params.max_prompt_chars} characters"] += 1
        else:
            queries.append(q)
    # Queries with the same prompt are one routing example (their calls' tools together).
    by_key: dict[str, list[Query]] = {}
    for q in queries:
        by_key.setdefault(prompt_key(q.question), []).append(q)
    if len(queries) > len(by_key):
        notes["duplicate questions merged"] += len(queries) - len(by_key)
    groups = split_by_key(list(by_key.values()), lambda g: prompt_key(g[0].question),
                          ROUTING_FRACTIONS, seed)

    imported = Imported(name=source.name, agents=_agents(source.tools, ids, params))
    imported.routing = {split: [{"prompt": g[0].question,
                                 "labels": {ids[c.tool]: 1 for q in g for c in q.calls}}
                                for g in rows] for split, rows in groups.items()}
    sides = {"train": groups["train"] + groups["val"], "test": groups["test"]}
    imported.traces = {side: [{"prompt": q.question, "path": [ids[c.tool] for c in q.calls],
                               "outcome": "success"} for g in rows for q in g]
                       for side, rows in sides.items()}
    tasks: dict[str, list[Record]] = {}
    for side, rows in sides.items():
        tasks[side] = []
        for q in (q for g in rows for q in g):
            total, seen = Counter(c.tool for c in q.calls), Counter[str]()
            for call in q.calls:
                seen[call.tool] += 1
                if call.arguments is None:
                    continue
                text = task_input(q.question, tools[call.tool], params.max_task_chars,
                                  (seen[call.tool], total[call.tool]))
                output = json.dumps(call.arguments, sort_keys=True, ensure_ascii=False)
                if text is None or len(output) > params.max_task_chars:
                    notes[f"calls over {params.max_task_chars} characters"] += 1
                    continue
                tasks[side].append({"input": text, "output": output})
    imported.tasks = {TASK: tasks}
    log.info("%s: %d agents, routing %s, traces %s, %s %s; notes: %s", source.name,
             len(imported.agents), {k: len(v) for k, v in imported.routing.items()},
             {k: len(v) for k, v in imported.traces.items()}, TASK,
             {k: len(v) for k, v in tasks.items()}, dict(notes) or "nothing")
    return imported
