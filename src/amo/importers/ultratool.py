"""UltraTool (Huang et al. 2024, English test set): multi-step tool plans with tool schemas.

Source folder: `test.jsonl`, one record a line: `question`, `plan` (steps whose `tool` is null,
"null", "No tool required" or a Python-style call `name(key='value', ...)`), `tools` (name,
description, arguments and results as JSON schemas), `domain`.

- agents: the 436 distinct tools (a tool's first definition; ids are the tool names, which are
  all valid), domain = the record domain in which the tool is called most (ties: alphabetical),
  tags = argument names, descriptions under 20 characters (26 tools) get name and arguments added.
- routing / traces / argument_filling: see `amo.importers.toolcalls`. Calls are read with `ast`
  (keyword arguments with literal values). The published calls are loosely written, so a call that
  does not parse is retried once, repaired: a placeholder for an earlier step's result
  (`order_id=<order ID>`) becomes the string "<order ID>", an apostrophe inside a quoted value
  (`'Today's date'`) is escaped, JSON's true/false/null become Python's, a raw newline
  becomes `\\n`. Calls that still do not parse keep their place in the trace and the routing
  labels but give no argument-filling task.

Measured on ../shared/datasets/ultratool (seed 13): 436 agents; no record without a tool call
(none dropped); routing train/val/test 702/99/199, traces train/test 801/199, argument_filling
1,883/487 (454 of them, for tools called more than once in a plan, end with "call k of n").
Of the 2,381 calls, 1,888 parse as published, 482 after repair, 11 still do not (skipped for
argument filling only).
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from amo.importers import Imported, SourceError, require
from amo.importers.toolcalls import Call, Query, Source, Tool, build, get, read_rows

FILE = "test.jsonl"
NO_TOOL = {"", "null", "none", "no tool required"}
_CALL_NAME = re.compile(r"\s*([A-Za-z_][\w.]*)\s*\(")
_PLACEHOLDER = re.compile(r"([=\[{(,:]\s*)<([^<>]*)>")
_JSON_LITERAL = re.compile(r"([=\[,:]\s*)(true|false|null)(?=\s*[,)\]}])")
_OPENS = set("=[{(,:")
_CLOSES = set(",)]}:")


def _repair(text: str) -> str:
    """The loosely written call made parseable where the intent is clear (see module docstring)."""
    text = _PLACEHOLDER.sub(lambda m: m.group(1) + json.dumps(f"<{m.group(2)}>", ensure_ascii=False),
                            text)
    text = _JSON_LITERAL.sub(lambda m: m.group(1) + {"true": "True", "false": "False",
                                                     "null": "None"}[m.group(2)], text)
    out = []
    for i, ch in enumerate(text):
        # A quote that neither opens a value nor closes one is an apostrophe inside it.
        if ch == "'" and (i == 0 or text[i - 1] != "\\"):
            before, after = text[:i].rstrip()[-1:], text[i + 1:].lstrip()[:1]
            if before not in _OPENS and after and after not in _CLOSES:
                out.append("\\'")
                continue
        out.append(ch)
    return "".join(out).replace("\r", "\\r").replace("\n", "\\n")


def _arguments(text: str) -> dict[str, Any] | None:
    """Keyword arguments of a call with literal values, or None if `text` is not such a call."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes such as 'D:\Documents' are kept as is
            node = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError):
        return None
    if not isinstance(node, ast.Call) or node.args or any(k.arg is None for k in node.keywords):
        return None
    try:
        return {str(k.arg): ast.literal_eval(k.value) for k in node.keywords}
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def parse_call(text: str) -> tuple[str | None, dict[str, Any] | None, bool]:
    """(tool name, keyword arguments or None, whether repair was needed) for one plan step's
    `tool`; the name is None when the text is not a call at all."""
    match = _CALL_NAME.match(text)
    if match is None:
        return None, None, False
    arguments = _arguments(text)
    if arguments is not None:
        return match.group(1), arguments, False
    return match.group(1), _arguments(_repair(text)), True


def _tool(value: Any, path: Path, row: int, i: int) -> Tool:
    where = f"{path} row {row} field tools[{i}]"
    if not isinstance(value, dict):
        raise SourceError(f"{where}: expected an object, got {type(value).__name__}")
    name, description, arguments = value.get("name"), value.get("description"), value.get("arguments")
    if not isinstance(name, str) or not name.strip():
        raise SourceError(f"{where}.name: expected a non-empty string")
    if description is not None and not isinstance(description, str):
        raise SourceError(f"{where}.description: expected a string, got {type(description).__name__}")
    if arguments is not None and not isinstance(arguments, dict):
        raise SourceError(f"{where}.arguments: expected a JSON schema object, "
                          f"got {type(arguments).__name__}")
    return Tool(name=name.strip(), description=description or "", arguments=arguments or {})


def read(source: Path) -> Source:
    """Tools and queries of the published file, with counts of skipped calls."""
    (path,) = require(source, FILE)
    tools: dict[str, Tool] = {}
    uses: defaultdict[str, Counter[str]] = defaultdict(Counter)
    queries: list[Query] = []
    notes: Counter[str] = Counter()
    listed: defaultdict[str, Counter[str]] = defaultdict(Counter)
    steps: list[tuple[int, int, str]] = []  # (row, step, tool name) checked once tools are known
    for row, record in read_rows(path):
        question = get(record, "question", str, path, row).strip()
        plan = get(record, "plan", list, path, row)
        domain = get(record, "domain", str, path, row).strip()
        for i, value in enumerate(get(record, "tools", list, path, row)):
            tool = _tool(value, path, row, i)
            tools.setdefault(tool.name, tool)
            listed[tool.name][domain] += 1
        calls = []
        for i, step in enumerate(plan):
            if not isinstance(step, dict):
                raise SourceError(f"{path} row {row} field plan[{i}]: expected an object")
            text = step.get("tool")
            if text is None or (isinstance(text, str) and text.strip().lower() in NO_TOOL):
                continue
            if not isinstance(text, str):
                raise SourceError(f"{path} row {row} field plan[{i}].tool: expected a string or "
                                  f"null, got {type(text).__name__}")
            name, arguments, repaired = parse_call(text)
            if name is None:
                notes["plan steps whose tool is not a call"] += 1
                continue
            if arguments is None:
                notes["calls with unparseable arguments (kept in routing and traces)"] += 1
            elif repaired:
                notes["calls parsed after repair (kept)"] += 1
            steps.append((row, i, name))
            calls.append(Call(name, arguments))
            uses[name][domain] += 1
        queries.append(Query(question, calls))
    if not queries:
        raise SourceError(f"{path}: no records")
    for row, i, name in steps:
        if name not in tools:
            raise SourceError(f"{path} row {row} field plan[{i}].tool: calls {name!r}, "
                              "which no record's tools describe")
    for name, tool in tools.items():
        # Where it is called most; a tool never called: where it is listed most.
        counts = uses.get(name) or listed[name]
        tool.domain = min(counts, key=lambda d: (-counts[d], d))
    return Source("ultratool", list(tools.values()), queries, notes)


def load(source: Path, seed: int) -> Imported:
    """UltraTool in amo's contracts: agents, routing, traces, argument_filling tasks."""
    return build(read(source), seed)
