"""Seal-Tools (fairyshine/Seal-Tools, Apache-2.0): a large tool catalogue with multi-call queries.

Source folder: `tool.jsonl` (api_name, api_description, field "Top/Sub", parameters {name:
{type, description}}, required, responses), `field.jsonl` (one object a line: top field -> its
sub-fields), `dev.jsonl` (id, query, calling: [{api, parameters, responses}]).

- agents: every tool of tool.jsonl; id = api_name, its characters outside [A-Za-z0-9_.:-] replaced
  by `_` (one tool: "requestFirst Aid Assistance" -> requestFirst_Aid_Assistance); domain = the
  tool's field when field.jsonl lists it, else ""; tags = parameter names; descriptions under 20
  characters (20 tools) get name and arguments added.
- routing / traces / argument_filling: see `amo.importers.toolcalls`; the argument schema shown
  is {"type": "object", "properties": parameters, "required": required}, the output the call's
  `parameters` (values such as "API_call_1" refer to an earlier call's response, kept as is).

Measured on ../shared/datasets/seal_tools (seed 13): 4,076 agents (every field joins
field.jsonl); no query without a call (none dropped); routing train/val/test 518/55/127, traces
train/test 573/127, argument_filling 1,463/341 (all 1,804 calls), nothing skipped.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from amo.importers import Imported, SourceError, require
from amo.importers.toolcalls import Call, Query, Source, Tool, build, get, read_rows

FILES = ("tool.jsonl", "field.jsonl", "dev.jsonl")


def _fields(path: Path) -> set[str]:
    """Every "Top/Sub" pair of the taxonomy, plus the top fields themselves."""
    known: set[str] = set()
    for row, record in read_rows(path):
        for top, subs in record.items():
            if not isinstance(subs, list) or not all(isinstance(s, str) for s in subs):
                raise SourceError(f"{path} row {row} field {top}: expected a list of sub-field names")
            known.add(top)
            known.update(f"{top}/{sub}" for sub in subs)
    return known


def _tool(record: dict[str, Any], path: Path, row: int, fields: set[str]) -> Tool:
    name = get(record, "api_name", str, path, row).strip()
    if not name:
        raise SourceError(f"{path} row {row} field api_name: empty")
    parameters = record.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise SourceError(f"{path} row {row} field parameters: expected an object, "
                          f"got {type(parameters).__name__}")
    schema: dict[str, Any] = {"type": "object", "properties": parameters}
    if record.get("required"):
        schema["required"] = record["required"]
    description = record.get("api_description") or ""
    if not isinstance(description, str):
        raise SourceError(f"{path} row {row} field api_description: expected a string")
    field = record.get("field")
    domain = field.strip() if isinstance(field, str) and field.strip() in fields else ""
    return Tool(name=name, description=description, arguments=schema, domain=domain)


def _query(record: dict[str, Any], path: Path, row: int, names: set[str]) -> Query:
    question = get(record, "query", str, path, row).strip()
    calls = []
    for i, call in enumerate(get(record, "calling", list, path, row)):
        where = f"{path} row {row} field calling[{i}]"
        if not isinstance(call, dict) or not isinstance(call.get("api"), str):
            raise SourceError(f"{where}: expected an object with a string `api`")
        if call["api"].strip() not in names:
            raise SourceError(f"{where}.api: {call['api']!r} is not in tool.jsonl")
        arguments = call.get("parameters")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise SourceError(f"{where}.parameters: expected an object, got {type(arguments).__name__}")
        calls.append(Call(call["api"].strip(), arguments))
    return Query(question, calls)


def read(source: Path) -> Source:
    """The tool catalogue and the dev queries."""
    tool_path, field_path, dev_path = require(source, *FILES)
    fields = _fields(field_path)
    tools: list[Tool] = []
    seen: dict[str, int] = {}
    for row, record in read_rows(tool_path):
        tool = _tool(record, tool_path, row, fields)
        if tool.name in seen:
            raise SourceError(f"{tool_path} row {row} field api_name: {tool.name!r} already "
                              f"defined in row {seen[tool.name]}")
        seen[tool.name] = row
        tools.append(tool)
    if not tools:
        raise SourceError(f"{tool_path}: no tools")
    queries = [_query(record, dev_path, row, set(seen)) for row, record in read_rows(dev_path)]
    if not queries:
        raise SourceError(f"{dev_path}: no queries")
    notes: Counter[str] = Counter()
    unjoined = sum(1 for t in tools if not t.domain)
    if unjoined:
        notes["tools whose field is not in field.jsonl (domain left empty)"] = unjoined
    return Source("seal_tools", tools, queries, notes)


def load(source: Path, seed: int) -> Imported:
    """Seal-Tools in amo's contracts: agents, routing, traces, argument_filling tasks."""
    return build(read(source), seed)
