"""The validate stage: check the user's data against amo's four contracts before any training.

Two layers, in order:

1. Structure, in plain Python: file present, UTF-8, one JSON object a line, no NaN/Infinity,
   required fields present and of the right JSON type. A row failing here is not checked further.
2. Content, with great-expectations suites (one ephemeral context per call, one pandas frame per
   file, plus one frame of exploded agent references): lengths, id pattern, uniqueness, known
   agent ids, grades >= 1, outcomes, empty paths. Failures map back to 1-based line numbers
   through `unexpected_index_list`.

Cross-split leakage (the same prompt/input in two splits) is checked in Python last.
Every problem names FILE, ROW (line number) and FIELD. Importing this module is cheap:
great-expectations and pandas are imported only when `validate_data` runs.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

AGENT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
# GX matches with re.search, where `$` also matches before a final newline: anchor with \Z.
_AGENT_ID_REGEX = AGENT_ID_PATTERN[:-1] + r"\Z"
OUTCOMES = ("success", "abstained", "handoff", "failure")
# Splits the pipeline reads; a missing one is a problem. Other *.jsonl files are checked too.
REQUIRED_SPLITS = {"routing": ("train", "val", "test"), "traces": ("train", "test"),
                   "tasks": ("train", "test")}
SPLIT_ORDER = ("train", "val", "test")
MAX_LISTED = 20

log = logging.getLogger("amo")


# -- public types -------------------------------------------------------------------------------
@dataclass
class Problem:
    """One contract violation: where it is (file, 1-based row, field) and what is wrong."""

    file: str
    row: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f" row {self.row}"
        if self.field:
            where += f" field {self.field}"
        return f"{where}: {self.message}"


class DataValidationError(ValueError):
    """The data breaks its contracts; `problems` lists every violation found."""

    def __init__(self, problems: list[Problem], report_path: Path | None = None,
                 docs_index: Path | None = None) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        lines = [f"data validation failed: {count} problem{'s' if count != 1 else ''}"]
        lines += [f"  {p}" for p in self.problems[:MAX_LISTED]]
        if count > MAX_LISTED:
            lines.append(f"  ... and {count - MAX_LISTED} more")
        if report_path is not None:
            lines.append(f"full report: {report_path}")
        if docs_index is not None:
            lines.append(f"data docs: {docs_index}")
        super().__init__("\n".join(lines))


# -- layer 1: structure -------------------------------------------------------------------------
class _NonFinite:
    """Stands in for NaN/Infinity while parsing, so the field holding it can be named."""

    def __init__(self, name: str) -> None:
        self.name = name


Issues = Iterator[tuple[str, str]]  # (field suffix, message)
Checker = Callable[[Any], Issues]


def _kind(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if isinstance(value, _NonFinite):
        return value.name
    for kind, name in ((type(None), "null"), (bool, "boolean"), (int, "integer"),
                       (float, "number"), (str, "string"), (list, "array"), (dict, "object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _string(value: Any) -> Issues:
    if not isinstance(value, str):
        yield "", f"expected a string, got {_kind(value)}"


def _string_list(value: Any) -> Issues:
    if not isinstance(value, list):
        yield "", f"expected an array of strings, got {_kind(value)}"
        return
    for i, item in enumerate(value):
        if not isinstance(item, str):
            yield f"[{i}]", f"expected a string, got {_kind(item)}"


def _labels(value: Any) -> Issues:
    if not isinstance(value, dict):
        yield "", f"expected an object {{agent_id: grade}}, got {_kind(value)}"
        return
    for agent, grade in value.items():
        if isinstance(grade, bool) or not isinstance(grade, int):
            shown = grade.name if isinstance(grade, _NonFinite) else json.dumps(grade)[:40]
            yield f".{agent}", f"grade must be an integer >= 1, got {_kind(grade)} {shown}"


def _links(value: Any) -> Issues:
    if not isinstance(value, list):
        yield "", f"expected an array of [agent_id, agent_id] pairs, got {_kind(value)}"
        return
    for i, pair in enumerate(value):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(a, str) for a in pair)):
            yield f"[{i}]", "expected a pair [agent_id, agent_id] of strings"


Schema = dict[str, tuple[Checker, bool]]  # field -> (type check, required)
SCHEMAS: dict[str, Schema] = {
    "agents": {"id": (_string, True), "description": (_string, True),
               "domain": (_string, False), "tags": (_string_list, False)},
    "routing": {"prompt": (_string, True), "labels": (_labels, True)},
    "traces": {"prompt": (_string, True), "path": (_string_list, True),
               "links": (_links, False), "outcome": (_string, True)},
    "tasks": {"input": (_string, True), "output": (_string, True)},
}


@dataclass
class _Row:
    line: int
    data: dict[str, Any]


@dataclass
class _File:
    """One JSONL file: display name, its JSON-object rows, counts and problems."""

    path: Path
    name: str
    kind: str
    rows: list[_Row] = field(default_factory=list)
    n_rows: int = 0
    exists: bool = False
    problems: list[Problem] = field(default_factory=list)
    expectations: int = 0
    failed: int = 0

    def problem(self, row: int | None, field_name: str, message: str) -> None:
        self.problems.append(Problem(self.name, row, field_name, message))


def _non_finite_fields(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every NaN/Infinity anywhere in a parsed row, with its field path."""
    if isinstance(value, _NonFinite):
        yield path, f"{value.name} is not allowed (JSON has no NaN/Infinity)"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite_fields(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _non_finite_fields(item, f"{path}[{i}]")


def _parse_line(raw: bytes) -> tuple[Any, str | None]:
    """Decode and parse one line: (object, None), (None, None) for a blank line, or (None, error)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start + 1})"
    if not text.strip():
        return None, None
    try:
        value = json.loads(text, parse_constant=_NonFinite)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} at column {exc.colno}"
    if not isinstance(value, dict):
        return None, f"expected a JSON object, got {_kind(value)}"
    return value, None


def _structure_issues(data: dict[str, Any], schema: Schema) -> Iterator[tuple[str, str]]:
    """NaN/Infinity anywhere, then missing required fields and wrong types of known fields."""
    yield from _non_finite_fields(data, "")
    for name, (check, required) in schema.items():
        if name not in data or (data[name] is None and not required):
            if required:
                yield name, "missing required field"
            continue
        for suffix, message in check(data[name]):
            yield name + suffix, message


def _read_file(path: Path, name: str, kind: str) -> _File:
    """Read one JSONL file: structure problems are recorded; every JSON-object row is kept, and
    later checks read only its fields of the right type (so one bad field hides nothing else)."""
    file = _File(path, name, kind)
    if not path.is_file():
        file.problem(None, "", "file missing")
        return file
    file.exists = True
    for line, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if line == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        data, error = _parse_line(raw)
        if error:
            file.n_rows += 1
            file.problem(line, "", error)
            continue
        if data is None:
            continue
        file.n_rows += 1
        for field_name, message in _structure_issues(data, SCHEMAS[kind]):
            file.problem(line, field_name, message)
        file.rows.append(_Row(line, data))
    if file.n_rows == 0:
        file.problem(None, "", "file has no rows")
    return file


# -- layer 2: content rules, run as great-expectations suites ----------------------------------
Record = dict[str, Any]


@dataclass
class _Rule:
    """One expectation (class name + arguments; built once GX is imported) and how to word a
    failing row. `field` names the field, or is None to read it from the record's `_field`."""

    expectation: str
    kwargs: dict[str, Any]
    field: str | None
    message: Callable[[Record, list[Record]], str]  # (failing record, all failing records)


@dataclass
class _Frame:
    """Records of one file (one per row, or one per agent reference) and the rules they obey."""

    file: _File
    records: list[Record]
    columns: list[str]
    rules: list[_Rule]
    part: str = "rows"  # what one record is, for the data docs' suite names

    @property
    def suite(self) -> str:
        return f"{self.file.name} ({self.part})"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _chars(column: str, low: int, high: int) -> _Rule:
    """Length between low and high characters (null values are left to not-null)."""
    return _Rule("ExpectColumnValueLengthsToBeBetween",
                 {"column": column, "min_value": low, "max_value": high}, column,
                 lambda r, _: f"{column} has {len(r[column])} characters; expected {low}..{high}")


def _not_blank(column: str) -> _Rule:
    return _Rule("ExpectColumnValuesToMatchRegex", {"column": column, "regex": r"\S"}, column,
                 lambda r, _: f"{column} is empty")


def _present(column: str) -> _Rule:
    return _Rule("ExpectColumnValuesToNotBeNull", {"column": column}, column,
                 lambda r, _: "missing required field")


def _unique(column: str, shown: str, what: str) -> _Rule:
    """No two rows share `column`; the message lists every row with the same value."""
    def message(record: Record, failing: list[Record]) -> str:
        rows = ", ".join(str(f["_line"]) for f in failing if f[column] == record[column])
        return f"duplicate {what}: {_short(record[shown])} (rows {rows})"

    return _Rule("ExpectColumnValuesToBeUnique", {"column": column}, shown, message)


def _known_agent(known_ids: set[str]) -> _Rule:
    return _Rule("ExpectColumnValuesToBeInSet",
                 {"column": "agent", "value_set": sorted(known_ids)}, None,
                 lambda r, _: f"unknown agent id {_short(r['agent'])} (not in agents.jsonl)")


def _text_rules(column: str, high: int) -> list[_Rule]:
    return [_present(column), _not_blank(column), _chars(column, 1, high)]


def _text(data: dict[str, Any], name: str) -> str | None:
    """A field's value if it is a string, else None (its problem is already recorded)."""
    value = data.get(name)
    return value if isinstance(value, str) else None


def _items(data: dict[str, Any], name: str) -> list[Any]:
    value = data.get(name)
    return value if isinstance(value, list) else []


def _grades(data: dict[str, Any]) -> dict[str, int]:
    """The labels whose grade is a real integer (not bool, float or NaN)."""
    labels = data.get("labels")
    if not isinstance(labels, dict):
        return {}
    return {a: g for a, g in labels.items() if isinstance(g, int) and not isinstance(g, bool)}


def _agent_frames(file: _File, min_chars: int, max_chars: int) -> list[_Frame]:
    records = [{"_line": r.line, "id": _text(r.data, "id"),
                "description": _text(r.data, "description")} for r in file.rows]
    rules = [_present("id"),
             _Rule("ExpectColumnValuesToMatchRegex", {"column": "id", "regex": _AGENT_ID_REGEX},
                   "id", lambda r, _: f"agent id {_short(r['id'])} must match {AGENT_ID_PATTERN}"),
             _unique("id", "id", "agent id"),
             _present("description"), _not_blank("description"),
             _chars("description", min_chars, max_chars)]
    return [_Frame(file, records, ["id", "description"], rules)]


def _prompt_key(text: str | None) -> str | None:
    return None if text is None else text.strip().lower()


def _routing_frames(file: _File, known_ids: set[str] | None, max_prompt: int) -> list[_Frame]:
    rows = [{"_line": r.line, "prompt": _text(r.data, "prompt"),
             "prompt_key": _prompt_key(_text(r.data, "prompt"))} for r in file.rows]
    main = _Frame(file, rows, ["prompt", "prompt_key"],
                  [*_text_rules("prompt", max_prompt),
                   _unique("prompt_key", "prompt", "prompt in this split")])
    refs = [{"_line": r.line, "_field": f"labels.{agent}", "agent": agent, "grade": grade}
            for r in file.rows for agent, grade in _grades(r.data).items()]
    ref_rules = [_Rule("ExpectColumnValuesToBeBetween", {"column": "grade", "min_value": 1}, None,
                       lambda r, _: f"grade must be >= 1, got {r['grade']}")]
    if known_ids is not None:
        ref_rules.insert(0, _known_agent(known_ids))
    return [main, _Frame(file, refs, ["agent", "grade"], ref_rules, "agent references")]


def _trace_refs(row: _Row) -> Iterator[Record]:
    for i, agent in enumerate(_items(row.data, "path")):
        if isinstance(agent, str):
            yield {"_line": row.line, "_field": f"path[{i}]", "agent": agent}
    for i, pair in enumerate(_items(row.data, "links")):
        for j, agent in enumerate(pair if isinstance(pair, list) else []):
            if isinstance(agent, str):
                yield {"_line": row.line, "_field": f"links[{i}][{j}]", "agent": agent}


def _trace_record(row: _Row) -> Record:
    """Prompt and outcome, plus path length vs. the minimum its outcome allows (1, or 0 when
    abstained); both None when path is not a list, which GX then skips."""
    outcome = _text(row.data, "outcome")
    has_path = isinstance(row.data.get("path"), list)
    return {"_line": row.line, "prompt": _text(row.data, "prompt"), "outcome": outcome,
            "path_len": len(row.data["path"]) if has_path else None,
            "min_path_len": (0 if outcome == "abstained" else 1) if has_path else None}


def _trace_frames(file: _File, known_ids: set[str] | None, max_prompt: int) -> list[_Frame]:
    rows = [_trace_record(r) for r in file.rows]
    rules = [*_text_rules("prompt", max_prompt),
             _Rule("ExpectColumnValuesToBeInSet", {"column": "outcome", "value_set": list(OUTCOMES)},
                   "outcome", lambda r, _: f"outcome {_short(r['outcome'])} is not one of "
                                           + ", ".join(OUTCOMES)),
             _Rule("ExpectColumnPairValuesAToBeGreaterThanB",
                   {"column_A": "path_len", "column_B": "min_path_len", "or_equal": True}, "path",
                   lambda r, _: "path is empty; only outcome 'abstained' may have an empty path")]
    frames = [_Frame(file, rows, ["prompt", "outcome", "path_len", "min_path_len"], rules)]
    if known_ids is not None:
        refs = [ref for r in file.rows for ref in _trace_refs(r)]
        frames.append(_Frame(file, refs, ["agent"], [_known_agent(known_ids)], "agent references"))
    return frames


def _task_frames(file: _File, max_chars: int) -> list[_Frame]:
    rows = [{"_line": r.line, "input": _text(r.data, "input"), "output": _text(r.data, "output")}
            for r in file.rows]
    return [_Frame(file, rows, ["input", "output"],
                   [*_text_rules("input", max_chars), *_text_rules("output", max_chars)])]


@contextlib.contextmanager
def _quiet_gx() -> Iterator[None]:
    """Lower great-expectations' loggers to errors for the duration of a validation."""
    logger = logging.getLogger("great_expectations")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _run_frames(frames: list[_Frame]) -> list[tuple[str, Any]]:
    """Validate every non-empty frame with its own suite; add failures to the frame's file.
    Returns (suite name, GX validation result) per frame, for the data docs."""
    frames = [f for f in frames if f.records and f.rules]
    results: list[tuple[str, Any]] = []
    if not frames:
        return results
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    with _quiet_gx():
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False,
                                                             metric_calculations=False)
        # One asset and batch definition serve every frame: each add_* call re-serializes the
        # context config (~8 ms), while get_batch takes the dataframe at run time.
        whole = (context.data_sources.add_pandas("amo_data").add_dataframe_asset("frames")
                 .add_batch_definition_whole_dataframe("whole"))
        for frame in frames:
            df = pd.DataFrame({c: pd.Series([r[c] for r in frame.records], dtype=object)
                               for c in frame.columns})
            batch = whole.get_batch(batch_parameters={"dataframe": df})
            suite = gx.ExpectationSuite(name=frame.suite)
            for n, rule in enumerate(frame.rules):
                suite.add_expectation(getattr(gxe, rule.expectation)(**rule.kwargs, meta={"rule": n}))
            result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
            _collect(frame, result)
            results.append((frame.suite, result))
    return results


def _verdict(problems: list[Problem]) -> str:
    count = len(problems)
    return "passed" if not count else f"{count} problem{'s' if count != 1 else ''}"


def write_data_docs(docs_dir: Path, results: list[tuple[str, Any]], problems: list[Problem]) -> Path:
    """Great-expectations data docs: one page per suite rendered by GX's own renderers, and an
    index listing every suite and every problem (file, row, field). Returns the index path."""
    import html
    import re

    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    pages = docs_dir / "suites"
    shutil.rmtree(docs_dir, ignore_errors=True)
    pages.mkdir(parents=True)
    renderer, view = ValidationResultsPageRenderer(), DefaultJinjaPageView()
    rows = []
    with _quiet_gx():
        for name, result in results:
            slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") + ".html"
            (pages / slug).write_text(view.render(renderer.render(result)), encoding="utf-8")
            stats = result.statistics
            verdict = "passed" if result.success else "FAILED"
            rows.append(f"<tr><td><a href='suites/{slug}'>{html.escape(name)}</a></td><td>{verdict}</td>"
                        f"<td>{stats['successful_expectations']}/{stats['evaluated_expectations']}</td></tr>")
    listed = "".join(f"<tr><td>{html.escape(p.file)}</td><td>{p.row or ''}</td><td>{html.escape(p.field)}</td>"
                     f"<td>{html.escape(p.message)}</td></tr>" for p in problems)
    index = docs_dir / "index.html"
    index.write_text(
        "<!doctype html><meta charset='utf-8'><title>amo data validation</title>"
        f"<h1>amo data validation: {_verdict(problems)}</h1>"
        "<h2>Great-expectations suites</h2><table border=1><tr><th>suite</th><th>result</th>"
        f"<th>expectations met</th></tr>{''.join(rows)}</table>"
        "<h2>Problems (file, row, field)</h2><table border=1><tr><th>file</th><th>row</th>"
        f"<th>field</th><th>message</th></tr>{listed}</table>\n", encoding="utf-8")
    return index


def _collect(frame: _Frame, result: Any) -> None:
    """Turn a suite result into problems: unexpected_index_list -> records -> line numbers."""
    file = frame.file
    file.expectations += result.statistics["evaluated_expectations"]
    file.failed += result.statistics["unsuccessful_expectations"]
    for outcome in sorted(result.results, key=lambda r: r.expectation_config.meta["rule"]):
        if outcome.success:
            continue
        rule = frame.rules[outcome.expectation_config.meta["rule"]]
        info = outcome.exception_info or {}
        if info.get("raised_exception"):
            file.problem(None, rule.field or "", f"{rule.expectation} could not run: "
                                                 f"{info.get('exception_message')}")
            continue
        failing = [frame.records[i] for i in outcome.result.get("unexpected_index_list") or []]
        for record in failing:
            file.problem(record["_line"], rule.field or record["_field"],
                         rule.message(record, failing))


# -- cross-split checks -------------------------------------------------------------------------
def _split_rank(file: _File) -> tuple[int, str]:
    stem = file.path.stem
    return (SPLIT_ORDER.index(stem) if stem in SPLIT_ORDER else len(SPLIT_ORDER), stem)


def _leakage(files: list[_File], column: str) -> list[Problem]:
    """A text (stripped, lowercased) in two splits: reported at each later split's row,
    naming where it first appeared (train before val before test)."""
    first: dict[str, tuple[_File, int]] = {}
    problems = []
    for file in sorted(files, key=_split_rank):
        for row in file.rows:
            key = _prompt_key(_text(row.data, column))
            if not key:
                continue
            seen = first.setdefault(key, (file, row.line))
            if seen[0] is not file:
                problems.append(Problem(file.name, row.line, column,
                                        f"{column} also in {seen[0].name} row {seen[1]} "
                                        "(leakage across splits)"))
    return problems


# -- files and folders --------------------------------------------------------------------------
def _display(path: Path, data_dir: Path) -> str:
    """A path relative to the data dir's parent when possible, else as given."""
    try:
        return path.resolve().relative_to(data_dir.resolve().parent).as_posix()
    except ValueError:
        return str(path)


def _split_files(folder: Path, kind: str, data_dir: Path) -> list[_File]:
    """The required splits of a folder plus any other *.jsonl in it."""
    required = [folder / f"{split}.jsonl" for split in REQUIRED_SPLITS[kind]]
    extra = sorted(p for p in folder.glob("*.jsonl") if p not in required) if folder.is_dir() else []
    return [_read_file(p, _display(p, data_dir), kind) for p in [*required, *extra]]


def _task_names(data_dir: Path, tasks: list[str] | None) -> list[str]:
    if tasks is not None:
        return list(tasks)
    root = data_dir / "tasks"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _unique_problems(problems: Iterable[Problem]) -> list[Problem]:
    """One problem per (file, row, field): the first found, which is the most basic."""
    seen: set[tuple[str, int | None, str]] = set()
    kept = []
    for p in problems:
        key = (p.file, p.row, p.field)
        if p.row is None or key not in seen:
            seen.add(key)
            kept.append(p)
    return kept


def _write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# -- entry point --------------------------------------------------------------------------------
def validate_data(data_dir: Path, *, tasks: list[str] | None = None,
                  min_description_chars: int = 20, max_description_chars: int = 4000,
                  max_prompt_chars: int = 4000, max_task_chars: int = 8000,
                  report_path: Path | None = None, docs_dir: Path | None = None,
                  partial: bool = False) -> dict[str, Any]:
    """Check agents, routing, traces and task files under `data_dir`.

    `partial`: a folder holding only some of the contracts (an importer's part meant to be
    combined with others, e.g. routing without traces): the files it has are checked as always,
    the absent ones are listed in the report's `absent` instead of refused; at least one must exist.

    Returns the report `{"ok", "files", "problems"}` (also written to `report_path`, even on
    failure); raises DataValidationError listing every problem if any contract is broken.
    `tasks=None` checks every folder under `tasks/`. With `docs_dir`, great-expectations data
    docs (HTML, `docs_dir/index.html`) are written too, on success and on failure.
    """
    data_dir = Path(data_dir)
    agents = _read_file(data_dir / "agents.jsonl", _display(data_dir / "agents.jsonl", data_dir),
                        "agents")
    routing = _split_files(data_dir / "routing", "routing", data_dir)
    traces = _split_files(data_dir / "traces", "traces", data_dir)
    task_files = {t: _split_files(data_dir / "tasks" / t, "tasks", data_dir)
                  for t in _task_names(data_dir, tasks)}
    absent: list[str] = []
    if partial:
        present = [f for f in [agents, *routing, *traces, *(f for fs in task_files.values() for f in fs)]
                   if f.exists]
        if not present:
            raise DataValidationError([Problem(str(data_dir), None, "", "no contract file to check")],
                                      report_path, None)
        absent = [f.name for f in [agents, *routing, *traces] if not f.exists]
        for f in [agents, *routing, *traces]:
            if not f.exists:
                f.problems.clear()
        routing, traces = [f for f in routing if f.exists], [f for f in traces if f.exists]

    # Without a readable agents file every reference would look dangling: skip those checks.
    known_ids = {i for r in agents.rows if (i := _text(r.data, "id"))} if agents.rows else None
    frames = _agent_frames(agents, min_description_chars, max_description_chars)
    for f in routing:
        frames += _routing_frames(f, known_ids, max_prompt_chars)
    for f in traces:
        frames += _trace_frames(f, known_ids, max_prompt_chars)
    for files in task_files.values():
        for f in files:
            frames += _task_frames(f, max_task_chars)
    results = _run_frames(frames)

    all_files = [agents, *routing, *traces, *(f for files in task_files.values() for f in files)]
    found = [p for f in all_files for p in sorted(f.problems, key=lambda p: p.row or 0)]
    found += _leakage(routing, "prompt") + _leakage(traces, "prompt")
    for files in task_files.values():
        found += _leakage(files, "input")
    problems = _unique_problems(found)

    report: dict[str, Any] = {"ok": not problems,
              "files": {f.name: {"rows": f.n_rows, "expectations": f.expectations,
                                 "failed": f.failed} for f in all_files if f.exists},
              "problems": [asdict(p) for p in problems]}
    if partial:
        report["absent"] = absent
    if report_path is not None:
        _write_report(Path(report_path), report)
    docs_index = write_data_docs(Path(docs_dir), results, problems) if docs_dir is not None else None
    if problems:
        raise DataValidationError(problems, report_path, docs_index)
    log.info("data valid: %d files, %d rows", len(report["files"]),
             sum(v["rows"] for v in report["files"].values()))
    return report
