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


def primary_labels(records: list[dict]) -> list[str]:
    return [max(sorted(r["labels"]), key=r["labels"].get) if r["labels"] else "oos" for r in records]


def test_bag_of_words_is_not_enough(demo) -> None:
    """A unigram count + logistic regression model routes under 90% of the test split top-1 (incl. "oos")."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    out, _ = demo
    train, test = rows(out / "routing" / "train.jsonl"), rows(out / "routing" / "test.jsonl")
    vectorizer = CountVectorizer()
    model = LogisticRegression(max_iter=2000).fit(vectorizer.fit_transform([r["prompt"] for r in train]),
                                                  primary_labels(train))
    accuracy = model.score(vectorizer.transform([r["prompt"] for r in test]), primary_labels(test))
    print(f"bag-of-words top-1 accuracy: {accuracy:.3f}")
    assert accuracy < 0.90


def test_wording_overlaps_across_agents_and_out_of_scope(demo) -> None:
    """Shop words (order, price, return, licence) occur in prompts of several agents and out of scope."""
    out, _ = demo
    records = [r for name in ("train", "val", "test") for r in rows(out / "routing" / f"{name}.jsonl")]
    for word in ("order", "price", "return", "licence"):
        owners = {label for r in records if word in r["prompt"].lower() for label in (r["labels"] or {"oos": 1})}
        assert len(owners) >= 3 and "oos" in owners, (word, owners)
    negated = [r for r in records
               if "not asking about" in r["prompt"].lower() or "this isn't about" in r["prompt"].lower()]
    assert negated and all(len(r["labels"]) == 1 for r in negated)


def test_traces_chain_asks_in_path_order(demo) -> None:
    """Traces have ordered paths of 1-4 agents, links that follow the path, and out-of-scope traces with no path."""
    out, _ = demo
    traces = rows(out / "traces" / "train.jsonl") + rows(out / "traces" / "test.jsonl")
    assert {len(t["path"]) for t in traces} == {0, 1, 2, 3, 4}
    assert all(t["links"] == [list(pair) for pair in zip(t["path"], t["path"][1:])] for t in traces)
    assert all(t["outcome"] == "abstained" for t in traces if not t["path"])


def test_query_rewrite_needs_the_history(demo) -> None:
    """Rewrites resolve references from the history: several question forms, and the rewrite names what the
    history named."""
    out, _ = demo
    examples = rows(out / "tasks/query_rewrite/train.jsonl")
    questions = {r["input"].split("Question: ")[1] for r in examples}
    assert len(questions) >= 40
    assert any("the first one" in q or "the second one" in q for q in questions)
    assert any("order #" in r["output"] and "order #" not in r["input"].split("Question: ")[1] for r in examples)


def test_traffic_is_held_back_wordings_the_data_never_holds(demo) -> None:
    """`traffic` (benchmarks' live prompts) repeats for a seed, holds none of the data's prompts
    in any split (so no test prompt is replayed), and labels only the data's agents."""
    from amo.demo import ASKS, traffic

    out, _ = demo
    known = [r["prompt"] for part in ("routing/train", "routing/val", "routing/test", "traces/train", "traces/test")
             for r in rows(out / f"{part}.jsonl")]
    sent = traffic(known)
    assert sent == traffic(known) and len(sent) > 300
    assert not {p.strip().lower() for p in known} & {r["prompt"].strip().lower() for r in sent}
    assert {agent for r in sent for agent in r["labels"]} <= set(ASKS) and any(not r["labels"] for r in sent)
