"""The validate stage: a valid data dir passes; each broken contract names file, row and field."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from amo.validate import DataValidationError, Problem, validate_data

AGENTS = [
    {"id": "search_agent", "description": "Searches the product catalog for matching items.",
     "domain": "shop", "tags": ["search", "catalog"]},
    {"id": "order_status", "description": "Looks up the status and shipping of customer orders."},
    {"id": "returns", "description": "Handles return requests and refunds for delivered orders.",
     "domain": None},
]
ROUTING = {
    "train": [{"prompt": "Find me red running shoes", "labels": {"search_agent": 2}},
              {"prompt": "Where is my order 1234?", "labels": {"order_status": 3}},
              {"prompt": "I want to return my jacket", "labels": {"returns": 2, "order_status": 1}},
              {"prompt": "What is the weather on Mars?", "labels": {}}],
    "val": [{"prompt": "Show me cheap laptops", "labels": {"search_agent": 1}},
            {"prompt": "Has my parcel shipped yet?", "labels": {"order_status": 2}}],
    "test": [{"prompt": "Refund for a broken mug", "labels": {"returns": 3}},
             {"prompt": "Tell me a joke", "labels": {}}],
}
TRACES = {
    "train": [{"prompt": "Find shoes and check my order", "path": ["search_agent", "order_status"],
               "links": [["search_agent", "order_status"]], "outcome": "success"},
              {"prompt": "Sing a song", "path": [], "outcome": "abstained"},
              {"prompt": "Return the blue jacket", "path": ["returns"], "outcome": "handoff"}],
    "test": [{"prompt": "Where is order 99?", "path": ["order_status"], "outcome": "success"},
             {"prompt": "Refund my order", "path": ["order_status", "returns"],
              "outcome": "failure", "extra": "unknown fields are allowed"}],
}
TASK = {
    "train": [{"input": "and the price?", "output": "What is the price of the shoes?"},
              {"input": "and in blue?", "output": "Do the shoes come in blue?"},
              {"input": "when will it come", "output": "When will my order arrive?"}],
    "test": [{"input": "how much is shipping", "output": "How much does shipping cost?"},
             {"input": "can I return it", "output": "Can I return the jacket?"}],
}
TOTAL_ROWS = 3 + 8 + 5 + 5


def write_jsonl(path: Path, records: list[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def make_data(root: Path) -> Path:
    """Write the small valid data dir (3 agents, routing/traces/one task) under root/data."""
    data = root / "data"
    write_jsonl(data / "agents.jsonl", AGENTS)
    for split, rows in ROUTING.items():
        write_jsonl(data / "routing" / f"{split}.jsonl", rows)
    for split, rows in TRACES.items():
        write_jsonl(data / "traces" / f"{split}.jsonl", rows)
    for split, rows in TASK.items():
        write_jsonl(data / "tasks" / "rewrite" / f"{split}.jsonl", rows)
    return data


def set_line(data: Path, rel: str, row: int, text: str | bytes) -> None:
    """Replace line `row` (1-based) of a file with raw text or bytes."""
    path = data / rel
    lines = path.read_bytes().split(b"\n")
    lines[row - 1] = text if isinstance(text, bytes) else text.encode("utf-8")
    path.write_bytes(b"\n".join(lines))


def edit(data: Path, rel: str, row: int, **changes: Any) -> None:
    """Change fields of one row; a value of ... deletes the field."""
    path = data / rel
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[row - 1])
    for key, value in changes.items():
        if value is ...:
            record.pop(key, None)
        else:
            record[key] = value
    set_line(data, rel, row, json.dumps(record))


def delete_line(data: Path, rel: str, row: int) -> None:
    path = data / rel
    lines = path.read_text(encoding="utf-8").splitlines()
    del lines[row - 1]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


Mutation = Callable[[Path], None]
# (id, mutation, file, row, field): the message must contain "data/<file> row <row> field <field>".
BAD_CASES: list[tuple[str, Mutation, str, int | None, str | None]] = [
    ("duplicate_agent_id", lambda d: edit(d, "agents.jsonl", 2, id="search_agent"),
     "agents.jsonl", 2, "id"),
    ("bad_agent_id", lambda d: edit(d, "agents.jsonl", 3, id="no spaces!"), "agents.jsonl", 3, "id"),
    ("agent_id_trailing_newline", lambda d: edit(d, "agents.jsonl", 2, id="order_status\n"),
     "agents.jsonl", 2, "id"),
    ("empty_description", lambda d: edit(d, "agents.jsonl", 1, description=""),
     "agents.jsonl", 1, "description"),
    ("huge_description", lambda d: edit(d, "agents.jsonl", 3, description="x" * 1_000_000),
     "agents.jsonl", 3, "description"),
    ("tags_not_strings", lambda d: edit(d, "agents.jsonl", 1, tags=["ok", 7]),
     "agents.jsonl", 1, "tags[1]"),
    ("non_utf8", lambda d: set_line(d, "routing/train.jsonl", 2,
                                    b'{"prompt": "caf\xe9 \xff", "labels": {}}'),
     "routing/train.jsonl", 2, None),
    ("invalid_json", lambda d: set_line(d, "traces/test.jsonl", 2, '{"prompt": "x", "path": ['),
     "traces/test.jsonl", 2, None),
    ("not_an_object", lambda d: set_line(d, "routing/val.jsonl", 2, '["a", "b"]'),
     "routing/val.jsonl", 2, None),
    ("nan_grade", lambda d: set_line(d, "routing/val.jsonl", 1,
                                     '{"prompt": "Show me laptops", "labels": {"search_agent": NaN}}'),
     "routing/val.jsonl", 1, "labels.search_agent"),
    ("float_grade", lambda d: edit(d, "routing/train.jsonl", 3, labels={"returns": 2.5}),
     "routing/train.jsonl", 3, "labels.returns"),
    ("bool_grade", lambda d: edit(d, "routing/test.jsonl", 1, labels={"returns": True}),
     "routing/test.jsonl", 1, "labels.returns"),
    ("zero_grade", lambda d: edit(d, "routing/train.jsonl", 1, labels={"search_agent": 0}),
     "routing/train.jsonl", 1, "labels.search_agent"),
    ("missing_prompt", lambda d: edit(d, "routing/test.jsonl", 2, prompt=...),
     "routing/test.jsonl", 2, "prompt"),
    ("labels_not_object", lambda d: edit(d, "routing/train.jsonl", 1, labels=["search_agent"]),
     "routing/train.jsonl", 1, "labels"),
    ("dangling_label", lambda d: edit(d, "routing/train.jsonl", 3, labels={"ghost": 1}),
     "routing/train.jsonl", 3, "labels.ghost"),
    ("prompt_too_long", lambda d: edit(d, "routing/val.jsonl", 2, prompt="p" * 4001),
     "routing/val.jsonl", 2, "prompt"),
    ("duplicate_prompt_in_split", lambda d: edit(d, "routing/train.jsonl", 4,
                                                 prompt="find me RED running shoes "),
     "routing/train.jsonl", 4, "prompt"),
    ("routing_leakage", lambda d: edit(d, "routing/test.jsonl", 2, prompt=" where is my ORDER 1234?"),
     "routing/test.jsonl", 2, "prompt"),
    ("dangling_path_id", lambda d: edit(d, "traces/train.jsonl", 1, path=["search_agent", "ghost"]),
     "traces/train.jsonl", 1, "path[1]"),
    ("dangling_link_id", lambda d: edit(d, "traces/train.jsonl", 1, links=[["search_agent", "x"]]),
     "traces/train.jsonl", 1, "links[0][1]"),
    ("empty_path_success", lambda d: edit(d, "traces/train.jsonl", 2, outcome="success"),
     "traces/train.jsonl", 2, "path"),
    ("bad_outcome", lambda d: edit(d, "traces/test.jsonl", 1, outcome="maybe"),
     "traces/test.jsonl", 1, "outcome"),
    ("trace_leakage", lambda d: edit(d, "traces/test.jsonl", 1, prompt="Sing a song"),
     "traces/test.jsonl", 1, "prompt"),
    ("agent_removed", lambda d: delete_line(d, "agents.jsonl", 3),
     "traces/train.jsonl", 3, "path[0]"),
    ("empty_task_output", lambda d: edit(d, "tasks/rewrite/train.jsonl", 2, output=""),
     "tasks/rewrite/train.jsonl", 2, "output"),
    ("task_leakage", lambda d: edit(d, "tasks/rewrite/test.jsonl", 2, input="and in blue?"),
     "tasks/rewrite/test.jsonl", 2, "input"),
    ("missing_split", lambda d: (d / "routing" / "val.jsonl").unlink(),
     "routing/val.jsonl", None, None),
    ("agent_id_not_a_string", lambda d: edit(d, "agents.jsonl", 1, id=7), "agents.jsonl", 1, "id"),
    ("missing_description", lambda d: edit(d, "agents.jsonl", 2, description=...),
     "agents.jsonl", 2, "description"),
    ("blank_description", lambda d: edit(d, "agents.jsonl", 2, description=" " * 30),
     "agents.jsonl", 2, "description"),
    ("domain_not_a_string", lambda d: edit(d, "agents.jsonl", 1, domain=5), "agents.jsonl", 1, "domain"),
    ("exact_duplicate_agent_row", lambda d: set_line(d, "agents.jsonl", 3, json.dumps(AGENTS[0])),
     "agents.jsonl", 3, "id"),
    ("empty_prompt", lambda d: edit(d, "routing/train.jsonl", 2, prompt=""),
     "routing/train.jsonl", 2, "prompt"),
    ("one_mb_prompt", lambda d: edit(d, "routing/test.jsonl", 1, prompt="q" * 1_000_000),
     "routing/test.jsonl", 1, "prompt"),
    ("infinity_grade", lambda d: set_line(
        d, "routing/train.jsonl", 2, '{"prompt": "Where is my order 1234?", "labels": {"order_status": Infinity}}'),
     "routing/train.jsonl", 2, "labels.order_status"),
    ("path_not_a_list", lambda d: edit(d, "traces/train.jsonl", 3, path="returns"),
     "traces/train.jsonl", 3, "path"),
    ("link_not_a_pair", lambda d: edit(d, "traces/train.jsonl", 1, links=[["search_agent"]]),
     "traces/train.jsonl", 1, "links[0]"),
    ("nan_outcome", lambda d: set_line(d, "traces/test.jsonl", 1,
                                       '{"prompt": "Where is order 99?", "path": ["order_status"], "outcome": NaN}'),
     "traces/test.jsonl", 1, "outcome"),
    ("missing_task_input", lambda d: edit(d, "tasks/rewrite/train.jsonl", 1, input=...),
     "tasks/rewrite/train.jsonl", 1, "input"),
    ("task_output_not_a_string", lambda d: edit(d, "tasks/rewrite/test.jsonl", 1, output=["a"]),
     "tasks/rewrite/test.jsonl", 1, "output"),
]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_data(tmp_path)


def test_valid_data_passes_and_counts_rows(data: Path, tmp_path: Path) -> None:
    """A valid data dir returns an ok report with per-file row and expectation counts."""
    report_path = tmp_path / "metrics" / "validation.json"
    report = validate_data(data, report_path=report_path)
    assert report["ok"] is True and report["problems"] == []
    assert json.loads(report_path.read_text()) == report
    files = report["files"]
    assert files["data/agents.jsonl"] == {"rows": 3, "expectations": 6, "failed": 0}
    assert files["data/routing/train.jsonl"]["rows"] == 4
    assert files["data/tasks/rewrite/test.jsonl"]["rows"] == 2
    assert sum(f["rows"] for f in files.values()) == TOTAL_ROWS
    assert all(f["expectations"] > 0 and f["failed"] == 0 for f in files.values())


@pytest.mark.slow  # the whole matrix: one great-expectations run per broken file
@pytest.mark.parametrize(("mutate", "file", "row", "field"),
                         [case[1:] for case in BAD_CASES], ids=[case[0] for case in BAD_CASES])
def test_bad_data_is_refused_with_file_row_field(data: Path, mutate: Mutation, file: str,
                                                 row: int | None, field: str | None) -> None:
    """Each broken contract raises DataValidationError naming the file, row and field."""
    mutate(data)
    with pytest.raises(DataValidationError) as caught:
        validate_data(data)
    where = f"data/{file}" + (f" row {row}" if row else "") + (f" field {field}:" if field else "")
    assert where in str(caught.value), str(caught.value)
    assert any(p.file == f"data/{file}" and p.row == row and p.field == (field or "")
               for p in caught.value.problems)


def test_leakage_names_both_files_and_rows(data: Path) -> None:
    """A prompt in train and test is reported at the test row, naming the train file and row."""
    edit(data, "routing/test.jsonl", 1, prompt="FIND me red running shoes")
    with pytest.raises(DataValidationError) as caught:
        validate_data(data)
    assert ("data/routing/test.jsonl row 1 field prompt: prompt also in "
            "data/routing/train.jsonl row 1") in str(caught.value)


def test_report_is_written_on_failure(data: Path, tmp_path: Path) -> None:
    """On failure the JSON report is still written, with ok false and every problem."""
    edit(data, "traces/test.jsonl", 1, outcome="maybe")
    report_path = tmp_path / "report.json"
    with pytest.raises(DataValidationError):
        validate_data(data, report_path=report_path)
    report = json.loads(report_path.read_text())
    assert report["ok"] is False
    assert report["problems"] == [{"file": "data/traces/test.jsonl", "row": 1, "field": "outcome",
                                   "message": "outcome 'maybe' is not one of success, abstained, "
                                              "handoff, failure"}]
    assert report["files"]["data/traces/test.jsonl"]["failed"] == 1


def test_many_problems_are_truncated_in_the_message(data: Path) -> None:
    """The error message lists the first 20 problems and says how many more there are."""
    write_jsonl(data / "routing" / "train.jsonl",
                [{"prompt": f"prompt {i}", "labels": {"ghost": 1}} for i in range(25)])
    with pytest.raises(DataValidationError) as caught:
        validate_data(data)
    assert len(caught.value.problems) == 25
    message = str(caught.value)
    assert message.startswith("data validation failed: 25 problems")
    assert "row 20 field labels.ghost" in message and "row 21 " not in message
    assert "... and 5 more" in message


def test_tasks_argument_selects_task_folders(data: Path) -> None:
    """tasks= limits the checked task folders, and a named task without files is refused."""
    write_jsonl(data / "tasks" / "broken" / "train.jsonl", [{"input": "x"}])
    report = validate_data(data, tasks=["rewrite"])
    assert not any("broken" in name for name in report["files"])
    with pytest.raises(DataValidationError, match=r"data/tasks/nope/train.jsonl: file missing"):
        validate_data(data, tasks=["rewrite", "nope"])


def test_relative_data_dir_is_shown_relative(data: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """With a relative data dir, messages show paths like data/agents.jsonl."""
    monkeypatch.chdir(tmp_path)
    edit(data, "agents.jsonl", 2, description="too short")
    with pytest.raises(DataValidationError, match=r"data/agents.jsonl row 2 field description: "
                                                  r"description has 9 characters; expected 20..4000"):
        validate_data(Path("data"))


def test_problem_str_names_file_row_field() -> None:
    """Problem renders as 'file row N field F: message'."""
    problem = Problem("data/routing/train.jsonl", 12, "labels.foo", "unknown agent id 'foo'")
    assert str(problem) == "data/routing/train.jsonl row 12 field labels.foo: unknown agent id 'foo'"
    assert str(Problem("data/agents.jsonl", None, "", "file missing")) == \
        "data/agents.jsonl: file missing"


def test_import_does_not_load_great_expectations() -> None:
    """Importing amo.validate does not import great_expectations or pandas."""
    code = "import sys, amo.validate; print('great_expectations' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_a_bad_field_does_not_hide_other_problems_of_its_row(data: Path) -> None:
    """A row with a wrongly typed field still has its other fields checked (here: duplicate id)."""
    edit(data, "agents.jsonl", 1, tags="search")
    edit(data, "agents.jsonl", 2, id="search_agent")
    with pytest.raises(DataValidationError) as caught:
        validate_data(data)
    shown = [str(p) for p in caught.value.problems]
    assert "data/agents.jsonl row 1 field tags: expected an array of strings, got string" in shown
    assert ("data/agents.jsonl row 2 field id: duplicate agent id: 'search_agent' (rows 1, 2)"
            in shown)


def test_data_docs_are_written_on_success_and_failure(data: Path, tmp_path: Path) -> None:
    """Each run writes great-expectations data docs: an index of suites and problems, and one
    GX-rendered HTML page per suite; on failure the index names the file, row and field."""
    docs = tmp_path / "docs"
    validate_data(data, docs_dir=docs)
    index = (docs / "index.html").read_text()
    pages = sorted((docs / "suites").glob("*.html"))
    assert "amo data validation: passed" in index and "data/agents.jsonl (rows)" in index
    assert len(pages) == index.count("suites/") and len(pages) >= 8
    agents_page = (docs / "suites" / "data_agents_jsonl_rows.html").read_text()
    assert "<html" in agents_page and "values must be unique" in agents_page.lower()
    edit(data, "routing/train.jsonl", 3, labels={"ghost": 1})
    with pytest.raises(DataValidationError, match=f"data docs: {docs / 'index.html'}"):
        validate_data(data, docs_dir=docs)
    index = (docs / "index.html").read_text()
    assert "amo data validation: 1 problem</h1>" in index
    assert ("<td>data/routing/train.jsonl</td><td>3</td><td>labels.ghost</td>"
            "<td>unknown agent id &#x27;ghost&#x27; (not in agents.jsonl)</td>") in index
    assert "FAILED" in index


def test_a_partial_folder_is_checked_for_what_it_has(data: Path) -> None:
    """An importer's part (e.g. Amazon HTC: agents and routing, no traces) is refused as a data
    folder but passes with partial=True, its absent files listed; a bad row in a present file is
    still refused, and a folder with nothing to check is refused."""
    import shutil

    shutil.rmtree(data / "traces")
    with pytest.raises(DataValidationError, match=r"traces/train.jsonl.*file missing"):
        validate_data(data)
    report = validate_data(data, partial=True)
    assert report["ok"] and report["absent"] == ["data/traces/train.jsonl", "data/traces/test.jsonl"]
    assert "data/routing/train.jsonl" in report["files"]
    with open(data / "routing" / "train.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"prompt": "", "labels": {}}\n')
    with pytest.raises(DataValidationError, match=r"routing/train\.jsonl row 5"):
        validate_data(data, partial=True)
    empty = data.parent / "empty"
    empty.mkdir()
    with pytest.raises(DataValidationError, match="no contract file"):
        validate_data(empty, partial=True)
