"""SNIPS and CANARD importers on tiny fake sources in the published layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amo.demo import write_demo_data
from amo.importers import SourceError, import_dataset, load
from amo.importers.canard import format_input, section_key
from amo.importers.snips import slots
from amo.validate import validate_data

SNIPS_TRAIN = [
    ("listen to westbam alumb allergic on google music ", "O O B-artist O B-album O B-service I-service "),
    ("play a song by queen or by abba", "O O O O B-artist O O B-artist"),
    ("book a table for 2 ", "O O O O B-party_size_number "),
]
SNIPS_TEST = [
    ("book a table for 2", "O O O O B-party_size_number"),  # also in train: dropped
    ("what is the weather in new york city", "O O O O O B-city I-city I-city"),
]


def write_snips(root: Path, train=SNIPS_TRAIN, test=SNIPS_TEST) -> Path:
    for split, rows in (("train", train), ("test", test), ("valid", test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / "seq.in").write_text("".join(text + "\n" for text, _ in rows))
        (root / split / "seq.out").write_text("".join(tags + "\n" for _, tags in rows))
        (root / split / "label").write_text("".join("Intent\n" for _ in rows))
    return root


def canard_record(dialog: str, n: int, question: str, rewrite: str, history: list[str]) -> dict:
    return {"History": history, "QuAC_dialog_id": dialog, "Question": question, "Question_no": n,
            "Rewrite": rewrite}


def write_canard(root: Path, sections: int = 12) -> Path:
    records = []
    for s in range(sections):
        for d in range(2 if s % 3 == 0 else 1):  # some sections have two dialogues, as in QuAC
            dialog = f"C_{s:032x}_{d}"
            history = [f"Band {s}", "History"]
            for n in range(1, 4):
                question = f"When did they tour {n} (dialogue {d})?"
                records.append(canard_record(dialog, n, question, question.replace("they", f"Band {s}"),
                                             list(history)))
                history += [question, f"In {1970 + n}."]
    (root / "dev.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dev.json").write_text(json.dumps(records))
    return root


def spans(text: str, tags: str) -> dict:
    return slots(text.split(), tags.split())


def test_bio_tags_become_a_json_object_of_slots() -> None:
    """B-/I- spans join into values; a repeated slot type becomes a list; a stray I- starts a span."""
    assert spans("listen to westbam on google music", "O O B-artist O B-service I-service") \
        == {"artist": "westbam", "service": "google music"}
    assert spans("queen or abba", "B-artist O B-artist") == {"artist": ["queen", "abba"]}
    assert spans("new york city", "I-city I-city I-city") == {"city": "new york city"}
    assert spans("a b", "B-x I-y") == {"x": "a", "y": "b"}


def test_snips_keeps_published_splits_and_drops_test_utterances_seen_in_train(tmp_path: Path) -> None:
    """train/ and test/ become the task's splits; a test utterance also in train is dropped."""
    imported = load("snips", write_snips(tmp_path / "snips"), seed=1)
    task = imported.tasks["slot_extraction"]
    assert task["train"][0]["input"] == "listen to westbam alumb allergic on google music"
    assert json.loads(task["train"][0]["output"]) == {"artist": "westbam", "album": "allergic",
                                                      "service": "google music"}
    assert [r["input"] for r in task["test"]] == ["what is the weather in new york city"]
    assert json.loads(task["test"][0]["output"]) == {"city": "new york city"}


def test_snips_refuses_a_wrong_folder_and_bad_rows(tmp_path: Path) -> None:
    """A missing folder, mismatched tag counts and non-BIO tags name the file and row."""
    with pytest.raises(SourceError, match="no such file"):
        load("snips", tmp_path / "nowhere", 1)
    with pytest.raises(SourceError, match=r"seq.out: row 2: 2 tags for 3 tokens"):
        load("snips", write_snips(tmp_path / "a", train=[("a b", "O O"), ("a b c", "O O")]), 1)
    with pytest.raises(SourceError, match=r"row 1: not a BIO tag: 'X-city'"):
        load("snips", write_snips(tmp_path / "b", train=[("paris", "X-city")]), 1)
    with pytest.raises(SourceError, match=r"missing .*test"):
        load("snips", write_snips(tmp_path / "c") / "train", 1)


def test_canard_input_has_topic_recent_turns_and_question() -> None:
    """The input names the article and section, keeps whole recent Q/A pairs, ends with the question."""
    history = ["Frank Zappa", "Disbandment", "q1", "a1", "q2", "a2", "q3", "a3"]
    text = format_input(history, "When did they disband?", recent=4)
    assert text.splitlines() == ["Topic: Frank Zappa - Disbandment", "Q: q2", "A: a2", "Q: q3", "A: a3",
                                 "Question: When did they disband?"]
    assert format_input(["Frank Zappa", "Disbandment"], "Why?").splitlines() == [
        "Topic: Frank Zappa - Disbandment", "Question: Why?"]
    assert section_key("C_2d21_0") == section_key("C_2d21_1") == "C_2d21"


def test_canard_split_is_seeded_and_keeps_dialogues_and_sections_on_one_side(tmp_path: Path) -> None:
    """No dialogue section has rows in both splits; the same seed gives the same split."""
    source = write_canard(tmp_path / "canard")
    raw = json.loads((source / "dev.json").read_text())
    section_of = {format_input(r["History"], r["Question"]): section_key(r["QuAC_dialog_id"]) for r in raw}
    task = load("canard", source, seed=5).tasks["query_rewrite"]
    sides = {split: {section_of[r["input"]] for r in rows} for split, rows in task.items()}
    assert sides["train"] and sides["test"] and not sides["train"] & sides["test"]
    assert sum(len(rows) for rows in task.values()) == len(raw)
    assert task == load("canard", source, seed=5).tasks["query_rewrite"]
    assert task != load("canard", source, seed=6).tasks["query_rewrite"]
    assert task["train"][0]["output"].startswith("When did Band")


def test_canard_refuses_wrong_files(tmp_path: Path) -> None:
    """A folder without dev.json, invalid JSON and a record missing a field are named."""
    with pytest.raises(SourceError, match=r"missing .*dev.json"):
        load("canard", tmp_path, 1)
    (tmp_path / "dev.json").write_text("{not json")
    with pytest.raises(SourceError, match=r"dev.json: not valid JSON"):
        load("canard", tmp_path, 1)
    (tmp_path / "dev.json").write_text(json.dumps([canard_record("C_a_0", 1, "q?", "q?", ["t", "s"]),
                                                   {"History": [], "Question": "q?"}]))
    with pytest.raises(SourceError, match=r"dev.json: record 2: field 'Rewrite'"):
        load("canard", tmp_path, 1)


@pytest.mark.slow  # a subprocess, a spawned process or a trained model: not in make test-fast
def test_imported_tasks_pass_validation(tmp_path: Path) -> None:
    """Both imports, written next to the demo copilot's data, pass validation (no input in two splits)."""
    out = tmp_path / "data"
    write_demo_data(out)
    import_dataset("snips", write_snips(tmp_path / "snips"), out, seed=1)
    import_dataset("canard", write_canard(tmp_path / "canard"), out, seed=1)
    report = validate_data(out, tasks=["slot_extraction", "query_rewrite"])  # canard's replaces the demo's
    assert report["ok"]
    assert report["files"]["data/tasks/slot_extraction/test.jsonl"]["rows"] == 1
