"""The demo copilot data set: deterministic, big enough, consistent, and not trivially separable."""

import hashlib
import json
from pathlib import Path

import pytest

from amo.demo import write_demo_data


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.jsonl"))}


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("demo")
    return out, write_demo_data(out, seed=13)


def test_same_seed_same_bytes_other_seed_differs(demo, tmp_path: Path) -> None:
    """Two runs with one seed write byte-identical files; another seed writes different ones."""
    out, _ = demo
    write_demo_data(tmp_path / "again", seed=13)
    write_demo_data(tmp_path / "other", seed=14)
    assert digest(tmp_path / "again") == digest(out)
    assert digest(tmp_path / "other") != digest(out)


def test_sizes_and_consistency(demo) -> None:
    """At least 12 agents, 800 prompts, 400 traces, 200 examples a task; ids exist; no leakage."""
    out, counts = demo
    assert counts["agents"] >= 12
    assert sum(v for k, v in counts.items() if k.startswith("routing_")) >= 800
    assert sum(v for k, v in counts.items() if k.startswith("traces_")) >= 400
    for task in ("product_extraction", "query_rewrite"):
        assert counts[f"task_{task}_train"] + counts[f"task_{task}_test"] >= 200
    ids = {a["id"] for a in rows(out / "agents.jsonl")}
    splits = {name: rows(out / "routing" / f"{name}.jsonl") for name in ("train", "val", "test")}
    for records in splits.values():
        assert any(len(r["labels"]) > 1 for r in records) and any(not r["labels"] for r in records)
        assert all(set(r["labels"]) <= ids for r in records)
    prompts = [{r["prompt"].lower() for r in records} for records in splits.values()]
    assert not (prompts[0] & prompts[1]) and not (prompts[0] & prompts[2]) and not (prompts[1] & prompts[2])
    for name in ("train", "test"):
        assert all(set(t["path"]) <= ids for t in rows(out / "traces" / f"{name}.jsonl"))
    assert all(isinstance(json.loads(r["output"]), dict) for r in rows(out / "tasks/product_extraction/train.jsonl"))


@pytest.mark.xfail(strict=True, reason="known gap (issue 2): the demo wording is still separable by "
                   "bag-of-words (~0.99 top-1); more paraphrase variety is needed")
def test_bag_of_words_is_not_enough(demo) -> None:
    """A unigram logistic regression does not route the test split perfectly."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    out, _ = demo

    def xy(name: str) -> tuple[list[str], list[str]]:
        records = rows(out / "routing" / f"{name}.jsonl")
        return [r["prompt"] for r in records], [max(r["labels"], key=r["labels"].get) if r["labels"] else "oos"
                                                for r in records]

    (x_train, y_train), (x_test, y_test) = xy("train"), xy("test")
    vectorizer = CountVectorizer()
    model = LogisticRegression(max_iter=2000).fit(vectorizer.fit_transform(x_train), y_train)
    accuracy = model.score(vectorizer.transform(x_test), y_test)
    print(f"bag-of-words top-1 accuracy: {accuracy:.3f}")
    assert accuracy < 0.97
