"""UltraTool and Seal-Tools importers on tiny sources in the published formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from amo.config import DataParams
from amo.importers import SourceError, import_dataset, load, seal_tools, ultratool
from amo.importers.toolcalls import Tool, agent_description, agent_ids, prompt_key, task_input
from amo.importers.ultratool import parse_call


def write_lines(path: Path, records: list[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def schema(**arguments: str) -> dict[str, Any]:
    return {"type": "object",
            "properties": {k: {"description": v, "type": "string"} for k, v in arguments.items()}}


FILE_WRITE = {"name": "file_write", "description": "Write content to a file, creating it if needed.",
              "arguments": schema(file_path="Where to write", content="What to write"),
              "results": schema(status="Whether it worked")}
FILE_DELETE = {"name": "file_delete", "description": "Delete the file at the given path for good.",
               "arguments": schema(file_path="The file to delete"), "results": {}}
SET_ALARM = {"name": "clock_alarm_set", "description": "Set Alarm Tool",
             "arguments": schema(time="When to ring"), "results": {}}


def ultratool_record(question: str, tools: list[dict[str, Any]], steps: list[str | None],
                     domain: str = "Document") -> dict[str, Any]:
    return {"question": question + "\n", "plan": [{"step": f"{i}. step", "tool": t}
                                                  for i, t in enumerate(steps, start=1)],
            "tools": tools, "domain": domain}


ULTRATOOL = [
    ultratool_record("Write 'Tomorrow's Meeting' into Desktop/tasks.txt.", [FILE_WRITE],
                     ["null", "No tool required",
                      "file_write(file_path='Desktop/tasks.txt', content='Tomorrow's Meeting')"]),
    ultratool_record("Write a report to D:/r.txt, then delete D:/old.txt.", [FILE_WRITE, FILE_DELETE],
                     ["file_write(file_path='D:/r.txt', content='All done.')", None,
                      "file_delete(file_path=<the old file path>)"]),
    ultratool_record("Set alarms at 7 and at 8.", [SET_ALARM],
                     ["clock_alarm_set(time='07:00')", "clock_alarm_set(time='08:00')"], "Alarm"),
    ultratool_record("What is an alarm clock?", [SET_ALARM], ["null", "No tool required"], "Alarm"),
    ultratool_record("Set an alarm at nine.", [SET_ALARM],
                     ["clock_alarm_set(time='09:00' 'broken)"], "Alarm"),
]


@pytest.fixture
def ultratool_dir(tmp_path: Path) -> Path:
    write_lines(tmp_path / "ultratool" / "test.jsonl", ULTRATOOL)
    return tmp_path / "ultratool"


def seal_tool(name: str, description: str, field: str, **parameters: str) -> dict[str, Any]:
    return {"api_name": name, "api_description": description, "field": field,
            "parameters": {k: {"type": "str", "description": v} for k, v in parameters.items()},
            "required": list(parameters), "responses": {"result": {"type": "str"}}}


SEAL_TOOLS = [
    seal_tool("getWeather", "Get the current weather for a location", "Science/Meteorology",
              location="The city"),
    seal_tool("requestFirst Aid Assistance", "Request first aid", "Health/Emergency Medicine",
              location="Where help is needed"),
    seal_tool("bookHotel", "Book a hotel room for the given dates", "Travel/Lodging",
              city="The city", nights="How many nights"),
    seal_tool("noField", "A tool whose field is not in the taxonomy", "Nowhere/Nothing"),
]
SEAL_FIELDS = [{"Science": ["Meteorology", "Geology"]}, {"Health": ["Emergency Medicine"]},
               {"Travel": ["Lodging"]}]
SEAL_DEV = [
    {"id": "dev-easy-0", "query": "What is the weather in Paris?",
     "calling": [{"api": "getWeather", "parameters": {"location": "Paris"}, "responses": ["API_call_0"]}]},
    {"id": "dev-difficult-1", "query": "Check the weather in Rome, book 2 nights there, call first aid.",
     "calling": [{"api": "getWeather", "parameters": {"location": "Rome"}, "responses": ["API_call_0"]},
                 {"api": "bookHotel", "parameters": {"city": "API_call_0", "nights": 2},
                  "responses": ["API_call_1"]},
                 {"api": "requestFirst Aid Assistance", "parameters": {"location": "Rome"},
                  "responses": ["API_call_2"]}]},
]


@pytest.fixture
def seal_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "seal_tools"
    write_lines(folder / "tool.jsonl", SEAL_TOOLS)
    write_lines(folder / "field.jsonl", SEAL_FIELDS)
    write_lines(folder / "dev.jsonl", SEAL_DEV)
    return folder


def by_prompt(records: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {r["prompt"]: r for rows in records.values() for r in rows}


# -- UltraTool ----------------------------------------------------------------------------------
def test_parse_call_reads_keyword_arguments_and_repairs_loose_quotes() -> None:
    """Calls parse into keyword arguments; placeholders, apostrophes and JSON literals are repaired."""
    assert parse_call("file_delete(file_path='a.txt', force=True, n=3)") == \
        ("file_delete", {"file_path": "a.txt", "force": True, "n": 3}, False)
    assert parse_call("file_write(file_path='x', content='Tomorrow's Meeting')") == \
        ("file_write", {"file_path": "x", "content": "Tomorrow's Meeting"}, True)
    assert parse_call("book(id=<user's booking ID>, dates=['Mon', 'Tue'], ok=true)") == \
        ("book", {"id": "<user's booking ID>", "dates": ["Mon", "Tue"], "ok": True}, True)
    assert parse_call("note(text='line one\nline two')")[1] == {"text": "line one\nline two"}
    assert parse_call("set_alarm(time='09:00' 'broken)")[:2] == ("set_alarm", None)
    assert parse_call("No tool, just think") == (None, None, False)


def test_ultratool_agents_labels_paths_and_arguments(ultratool_dir: Path) -> None:
    """Every tool is an agent; labels, call-ordered paths and parsed arguments match the plans."""
    source = ultratool.read(ultratool_dir)
    assert source.notes["calls with unparseable arguments (kept in routing and traces)"] == 1
    imported = ultratool.load(ultratool_dir, seed=13)
    agents = {a["id"]: a for a in imported.agents}
    assert set(agents) == {"file_write", "file_delete", "clock_alarm_set"}
    assert agents["file_write"]["tags"] == ["file_path", "content"]
    assert agents["file_write"]["domain"] == "Document" and agents["clock_alarm_set"]["domain"] == "Alarm"
    assert agents["clock_alarm_set"]["description"] == \
        "Set Alarm Tool. Tool clock_alarm_set, arguments: time."

    routing, traces = by_prompt(imported.routing), by_prompt(imported.traces)
    report = "Write a report to D:/r.txt, then delete D:/old.txt."
    assert routing[report]["labels"] == {"file_write": 1, "file_delete": 1}
    assert traces[report]["path"] == ["file_write", "file_delete"]
    assert traces["Set alarms at 7 and at 8."]["path"] == ["clock_alarm_set", "clock_alarm_set"]
    # The record without a call is dropped; the unparseable call still routes and traces.
    assert "What is an alarm clock?" not in routing and "What is an alarm clock?" not in traces
    assert traces["Set an alarm at nine."]["path"] == ["clock_alarm_set"]

    tasks = [t for rows in imported.tasks["argument_filling"].values() for t in rows]
    outputs = {t["input"].split("\n")[0]: [] for t in tasks}
    for t in tasks:
        outputs[t["input"].split("\n")[0]].append(t["output"])
    assert outputs["Write 'Tomorrow's Meeting' into Desktop/tasks.txt."] == \
        [json.dumps({"content": "Tomorrow's Meeting", "file_path": "Desktop/tasks.txt"})]
    assert outputs[report] == ['{"content": "All done.", "file_path": "D:/r.txt"}',
                               '{"file_path": "<the old file path>"}']
    assert "Set an alarm at nine." not in outputs
    alarms = [t["input"] for t in tasks if t["input"].startswith("Set alarms at 7")]
    assert [a.rsplit("\n", 1)[1] for a in alarms] == ["call 1 of 2", "call 2 of 2"]
    shown = json.loads(tasks[0]["input"].split("\n", 1)[1])
    assert list(shown) == ["name", "description", "arguments"]


# -- Seal-Tools ---------------------------------------------------------------------------------
def test_seal_tools_agents_ids_domains_and_calls(seal_dir: Path) -> None:
    """All catalogue tools are agents (a name with a space sanitised), fields join, calls keep order."""
    imported = seal_tools.load(seal_dir, seed=13)
    agents = {a["id"]: a for a in imported.agents}
    assert list(agents) == ["getWeather", "requestFirst_Aid_Assistance", "bookHotel", "noField"]
    assert agents["getWeather"]["domain"] == "Science/Meteorology"
    assert agents["noField"]["domain"] == ""
    assert agents["bookHotel"]["tags"] == ["city", "nights"]
    assert agents["requestFirst_Aid_Assistance"]["description"] == \
        "Request first aid. Tool requestFirst Aid Assistance, arguments: location."
    query = SEAL_DEV[1]["query"]
    assert by_prompt(imported.routing)[query]["labels"] == \
        {"getWeather": 1, "bookHotel": 1, "requestFirst_Aid_Assistance": 1}
    assert by_prompt(imported.traces)[query]["path"] == \
        ["getWeather", "bookHotel", "requestFirst_Aid_Assistance"]
    tasks = [t for rows in imported.tasks["argument_filling"].values() for t in rows
             if t["input"].startswith(query)]
    assert [t["output"] for t in tasks] == ['{"location": "Rome"}', '{"city": "API_call_0", "nights": 2}',
                                            '{"location": "Rome"}']
    assert json.loads(tasks[1]["input"].split("\n", 1)[1])["arguments"]["required"] == ["city", "nights"]


# -- shared pieces ------------------------------------------------------------------------------
def test_agent_ids_are_valid_unique_and_stable() -> None:
    """Invalid characters become `_`; a collision with an existing name gets a suffix."""
    ids = agent_ids(["a b", "a_b", "ok.name", "ünï cödé"])
    assert ids == {"a b": "a_b_2", "a_b": "a_b", "ok.name": "ok.name", "ünï cödé": "n_c_d"}
    assert ids == agent_ids(["a b", "a_b", "ok.name", "ünï cödé"])


def test_short_descriptions_grow_and_long_schemas_are_trimmed() -> None:
    """A description under the minimum gains name and arguments; a task input fits its cap."""
    bare = Tool("x", "", {})
    assert agent_description(bare, 20, 4000) == "Tool x, no arguments."
    long = Tool("big", "d" * 3000, {"type": "object", "properties": {"a": {"description": "e" * 3000}}})
    text = task_input("question?", long, 500)
    assert text is not None and len(text) <= 500 and text.startswith("question?\n")
    assert json.loads(text.split("\n", 1)[1])["name"] == "big"
    assert task_input("q" * 600, long, 500) is None


def many_ultratool_records(n: int) -> list[dict[str, Any]]:
    return [ultratool_record(f"Write note {i} to notes/{i}.txt and delete old/{i}.txt.",
                             [FILE_WRITE, FILE_DELETE],
                             [f"file_write(file_path='notes/{i}.txt', content='Note {i}')",
                              f"file_delete(file_path='old/{i}.txt')"]) for i in range(n)]


@pytest.mark.parametrize("name", ["ultratool", "seal_tools"])
def test_splits_are_consistent_and_the_folder_validates(tmp_path: Path, name: str) -> None:
    """No question in two splits, routing test questions are the traces/tasks test questions, and
    the written folder passes validate_data as the validate stage calls it."""
    source = tmp_path / name
    if name == "ultratool":
        write_lines(source / "test.jsonl", many_ultratool_records(40))
    else:
        write_lines(source / "tool.jsonl", SEAL_TOOLS)
        write_lines(source / "field.jsonl", SEAL_FIELDS)
        write_lines(source / "dev.jsonl", [
            {"id": f"dev-{i}", "query": f"Weather in city number {i}, then {i} nights there.",
             "calling": [{"api": "getWeather", "parameters": {"location": f"city {i}"}},
                         {"api": "bookHotel", "parameters": {"city": f"city {i}", "nights": i}}]}
            for i in range(40)])
    imported = load(name, source, seed=13)
    routing = {s: {prompt_key(r["prompt"]) for r in rows} for s, rows in imported.routing.items()}
    assert all(routing.values()) and sum(map(len, routing.values())) == 40
    assert not (routing["train"] & routing["val"] or routing["train"] & routing["test"]
                or routing["val"] & routing["test"])
    traces = {s: {prompt_key(r["prompt"]) for r in rows} for s, rows in imported.traces.items()}
    assert traces["test"] == routing["test"] and traces["train"] == routing["train"] | routing["val"]
    tasks = {s: {prompt_key(r["input"].split("\n")[0]) for r in rows}
             for s, rows in imported.tasks["argument_filling"].items()}
    assert tasks["test"] == routing["test"]

    from amo.validate import validate_data

    out = tmp_path / "data"
    counts = import_dataset(name, source, out, seed=13)
    assert counts["tasks/argument_filling/train.jsonl"] + counts["tasks/argument_filling/test.jsonl"] == 80
    d = DataParams()
    report = validate_data(out, tasks=None, min_description_chars=d.min_description_chars,
                           max_description_chars=d.max_description_chars,
                           max_prompt_chars=d.max_prompt_chars, max_task_chars=d.max_task_chars)
    assert report["ok"]


# -- refusals -----------------------------------------------------------------------------------
def test_wrong_folders_and_malformed_lines_are_refused_naming_the_file(
        tmp_path: Path, ultratool_dir: Path, seal_dir: Path) -> None:
    """A folder of the other data set, a non-JSON line, a missing field and an unknown tool are
    refused with SourceError naming the file and row."""
    with pytest.raises(SourceError, match=r"missing .*test.jsonl"):
        ultratool.load(seal_dir, seed=13)
    with pytest.raises(SourceError, match=r"missing .*tool.jsonl"):
        seal_tools.load(ultratool_dir, seed=13)
    with pytest.raises(SourceError, match="no such file"):
        ultratool.load(tmp_path / "nowhere", seed=13)

    lines = (ultratool_dir / "test.jsonl").read_text(encoding="utf-8").splitlines()
    (ultratool_dir / "test.jsonl").write_text("\n".join([lines[0], "{not json", *lines[1:]]))
    with pytest.raises(SourceError, match=r"test\.jsonl row 2: not valid JSON"):
        ultratool.load(ultratool_dir, seed=13)
    write_lines(ultratool_dir / "test.jsonl", [ULTRATOOL[0], {"question": "q?", "plan": []}])
    with pytest.raises(SourceError, match=r"test\.jsonl row 2 field domain: missing"):
        ultratool.load(ultratool_dir, seed=13)
    write_lines(ultratool_dir / "test.jsonl", [ultratool_record("q?", [FILE_WRITE], ["fly(to='Mars')"])])
    with pytest.raises(SourceError, match=r"test\.jsonl row 1 field plan\[0\]\.tool: calls 'fly'"):
        ultratool.load(ultratool_dir, seed=13)

    write_lines(seal_dir / "dev.jsonl", [SEAL_DEV[0], {"id": "x", "query": "q", "calling": [{"api": "nope"}]}])
    with pytest.raises(SourceError, match=r"dev\.jsonl row 2 field calling\[0\]\.api: 'nope'"):
        seal_tools.load(seal_dir, seed=13)
    write_lines(seal_dir / "tool.jsonl", [SEAL_TOOLS[0], ["not", "an", "object"]])
    with pytest.raises(SourceError, match=r"tool\.jsonl row 2: expected a JSON object"):
        seal_tools.load(seal_dir, seed=13)


def test_cli_imports_a_folder(ultratool_dir: Path, tmp_path: Path) -> None:
    """`amo data import ultratool --source DIR --out OUT` writes the contract files; a wrong
    folder exits 1 with the file named."""
    from typer.testing import CliRunner

    from amo.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["data", "import", "ultratool", "--source", str(ultratool_dir),
                                      "--out", str(out), "--seed", "13"])
    assert result.exit_code == 0, result.output
    assert len((out / "agents.jsonl").read_text().splitlines()) == 3
    wrong = CliRunner().invoke(app, ["data", "import", "seal_tools", "--source", str(ultratool_dir),
                                     "--out", str(out), "--seed", "13"])
    assert wrong.exit_code == 1 and "tool.jsonl" in wrong.output
