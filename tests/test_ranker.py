"""The pipeline's ranker: route features say which evidence an agent has, the classifier
survives a save/load round trip whatever its memory order, save/load and ONNX reproduce the
scores, and the margin chosen on validation data meets its out-of-scope recall."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import amo.ranker
from amo.config import load_params
from amo.data import Agent, RoutingExample
from amo.demo import write_demo_data
from amo.onnx_router import ONNX_FILE, OnnxRanker, export_ranker
from amo.ranker import AgentRanker, classifier_pairs, top_pairs
from amo.routing import (
    AGENT_FEATURES,
    AgentError,
    AgentIndex,
    Classifier,
    choose_margin,
    grade_matrix,
    route_features,
    select,
)

DIM = 16
ROOT = Path(__file__).resolve().parents[1]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def fitted() -> tuple[AgentRanker, AgentIndex, np.ndarray]:
    """Four agents whose prompts lie near their descriptions, plus out-of-scope noise."""
    rng = np.random.default_rng(0)
    centres = unit(rng, 4)
    agents = [Agent(f"agent_{i}", f"agent number {i} description", domain=f"d{i}") for i in range(4)]
    rows, x = [], []
    for i in range(4):
        for _ in range(30):
            v = centres[i] + 0.35 * rng.normal(size=DIM)
            rows.append(RoutingExample(f"p{i}-{len(rows)}", {agents[i].id: 1}))
            x.append(v / np.linalg.norm(v))
    for _ in range(30):
        rows.append(RoutingExample(f"oos-{len(rows)}", {}))
        x.append(unit(rng, 1)[0])
    x = np.array(x, np.float32)
    index = AgentIndex(agents, centres)
    ranker = AgentRanker(hidden=16, epochs=40, batch_size=32, folds=2, group_by="agent").fit(
        index, x, grade_matrix(rows, index.ids))
    return ranker, index.with_examples(rows, embeddings=x), x


def test_features_flag_the_evidence_each_agent_has(fitted) -> None:
    """An agent added after training has no examples and no classifier column; trained ones have both."""
    ranker, index, x = fitted
    grown = index.add([Agent("agent_new", "a brand new agent's description")], lambda_encoder())
    agent, _ = route_features(x[:3], grown, ranker.classifier_)
    flags = [AGENT_FEATURES.index("has_examples"), AGENT_FEATURES.index("has_classifier")]
    assert agent[:, :4][:, :, flags].min() == 1.0 and agent[:, 4][:, flags].max() == 0.0
    with pytest.raises(AgentError, match="not in the index"):
        index.with_examples([RoutingExample("x", {"nobody": 1})], embeddings=x[:1])


def lambda_encoder():
    class Encoder:
        def encode(self, texts: list[str]) -> np.ndarray:
            return unit(np.random.default_rng(len(texts)), len(texts))

    return Encoder()


def test_save_load_and_onnx_reproduce_the_scores(fitted, tmp_path: Path) -> None:
    """A saved ranker and index load to the same scores; the ONNX export agrees to 1e-4, also
    for more agents than it was exported with."""
    ranker, index, x = fitted
    ranker.save(tmp_path)
    index.save(tmp_path)
    loaded, loaded_index = AgentRanker.load(tmp_path), AgentIndex.load(tmp_path)
    np.testing.assert_array_equal(loaded.score(x, loaded_index), ranker.score(x, index))
    export_ranker(ranker, tmp_path / ONNX_FILE)
    grown = index.add([Agent("agent_new", "a brand new agent's description")], lambda_encoder())
    np.testing.assert_allclose(OnnxRanker(tmp_path).score(x, grown), ranker.score(x, grown), atol=1e-4)


def test_classifier_round_trip_keeps_a_fortran_ordered_matrix(tmp_path: Path) -> None:
    """scikit-learn can hand back Fortran-ordered weights; they load back as the same matrix."""
    weights = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    Classifier(weights, np.ones(3, np.float32), ("a", "b", "c")).save(tmp_path)
    loaded = Classifier.load(tmp_path)
    np.testing.assert_array_equal(loaded.weights, weights)
    assert loaded.agent_ids == ("a", "b", "c")


def test_margin_chosen_on_validation_meets_its_recall(fitted) -> None:
    """The chosen margin abstains on at least the target share of out-of-scope prompts, and the
    learned separator ranks in-scope prompts above it."""
    ranker, index, x = fitted
    scores = ranker.score(x, index)
    out_of_scope = np.arange(len(x)) >= 120
    margin = choose_margin(scores, out_of_scope, 0.8)
    routes = [select(row, index.ids, margin=margin) for row in scores]
    assert np.mean([r.abstained for r, o in zip(routes, out_of_scope) if o]) >= 0.8
    assert np.mean([r.agents[0][0] == f"agent_{i // 30}" for i, r in enumerate(routes[:120]) if r.agents]) > 0.9
    assert choose_margin(scores, np.zeros(len(x), bool), 0.8) is None


def test_every_tool_of_a_multi_label_row_gets_a_classifier_column() -> None:
    """A tool that is only ever named second in multi-label rows is still one of the classifier's agents."""
    rng = np.random.default_rng(1)
    centres = unit(rng, 3)
    agents = [Agent(f"tool_{i}", f"tool number {i} description") for i in range(3)]
    rows, x = [], []
    for i, labels in enumerate([{"tool_0": 1, "tool_1": 1}, {"tool_2": 1}] * 12):
        v = centres[0 if "tool_0" in labels else 2] + 0.3 * rng.normal(size=DIM)
        rows.append(RoutingExample(f"p{i}", labels))
        x.append(v / np.linalg.norm(v))
    index = AgentIndex(agents, centres)
    ranker = AgentRanker(hidden=8, epochs=1, batch_size=8, folds=2, group_by="agent").fit(
        index, np.array(x, np.float32), grade_matrix(rows, index.ids))
    assert set(ranker.classifier_.agent_ids) == {"tool_0", "tool_1", "tool_2"}


def clusters(rng: np.random.Generator, centres: np.ndarray, per: int, spread: float = 0.5) -> np.ndarray:
    x = np.repeat(centres, per, axis=0) + spread * rng.normal(size=(len(centres) * per, centres.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("sampled", [False, True])
def test_a_new_column_is_fitted_with_the_others_fixed(monkeypatch: pytest.MonkeyPatch, sampled: bool) -> None:
    """add_columns: the existing columns are untouched, the new agents' columns name their own
    prompts about as well as a classifier refitted on everything (also when the known agents'
    rows are sampled), and bad requests are refused by name."""
    from amo import routing
    from amo.ranker import fit_classifier
    from amo.routing import add_columns

    if sampled:
        monkeypatch.setattr(routing, "COLUMN_FIT_ROWS", 50)
    rng = np.random.default_rng(2)
    centres, ids = unit(rng, 5), [f"agent_{i}" for i in range(5)]
    x, y = clusters(rng, centres, 40, 0.25), np.repeat(np.arange(5), 40)
    old = fit_classifier(x[y < 3], y[y < 3], ids, 10.0, 0)
    grown = add_columns(old, x, [ids[i] for i in y], ["agent_3", "agent_4"], 10.0)
    assert grown.agent_ids == (*old.agent_ids, "agent_3", "agent_4")
    np.testing.assert_array_equal(grown.weights[:3], old.weights)
    np.testing.assert_array_equal(grown.bias[:3], old.bias)
    test_x, test_y = clusters(rng, centres, 100, 0.25), np.repeat(np.arange(5), 100)
    refitted = fit_classifier(x, y, ids, 10.0, 0)

    def accuracy(c: Classifier) -> float:
        predicted = np.array([ids.index(c.agent_ids[i]) for i in (test_x @ c.weights.T + c.bias).argmax(1)])
        return float((predicted == test_y).mean())

    assert accuracy(grown) >= accuracy(refitted) - 0.03 and accuracy(grown) > 0.8
    with pytest.raises(ValueError, match="already have a column"):
        add_columns(old, x, [ids[i] for i in y], ["agent_0"], 10.0)
    with pytest.raises(ValueError, match="outside the classifier"):
        add_columns(old, x, [ids[i] for i in y], ["agent_3"], 10.0)


def test_the_index_step_gives_an_agent_with_examples_a_column() -> None:
    """AgentRanker.index_step: an agent the index gives examples gets a column fitted on them; an
    agent known by its description alone gets none; the ranker's own classifier is unchanged."""
    rng = np.random.default_rng(3)
    centres = unit(rng, 4)
    agents = [Agent(f"agent_{i}", f"agent number {i} description", domain=f"d{i}") for i in range(4)]
    x = clusters(rng, centres[:3], 30, 0.15)
    rows = [RoutingExample(f"p{i}", {f"agent_{i // 30}": 1}) for i in range(90)]
    index = AgentIndex(agents[:3], centres[:3])
    ranker = AgentRanker(hidden=8, epochs=2, batch_size=16, folds=3, group_by="agent").fit(
        index, x, grade_matrix(rows, index.ids))
    before = ranker.classifier_
    served = AgentIndex(agents, centres).with_examples(rows, embeddings=x)
    assert ranker.index_step(served) is before  # agent_3 has no examples: nothing to fit
    shots = clusters(rng, centres[3:], 5, 0.15)
    grown = served.with_examples([RoutingExample(f"s{i}", {"agent_3": 1}) for i in range(5)], embeddings=shots)
    ranker.column_min_examples = 6  # the bar: five examples are not enough for a column yet
    assert ranker.index_step(grown) is before
    ranker.column_min_examples, ranker.shot_columns = 5, False  # trained without few-shot columns: none
    assert ranker.index_step(grown) is before
    ranker.shot_columns = True
    classifier = ranker.index_step(grown)
    assert classifier.agent_ids == (*before.agent_ids, "agent_3") and ranker.classifier_ is before
    probe = clusters(rng, centres[3:], 20, 0.15)
    assert ((probe @ classifier.weights.T + classifier.bias).argmax(1) == 3).mean() >= 0.9
    flag = AGENT_FEATURES.index("has_classifier")
    assert route_features(probe[:1], grown, classifier)[0][0, 3, flag] == 1
    assert not np.array_equal(ranker.score(probe, grown, classifier=classifier), ranker.score(probe, grown))


def demo_grades(tmp_path: Path) -> np.ndarray:
    """The demo data set's training grades: single-label rows (grade 2), graded pairs ({first: 2,
    second: 1}) and out-of-scope rows."""
    write_demo_data(tmp_path, seed=13)
    ids = [json.loads(line)["id"] for line in (tmp_path / "agents.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (tmp_path / "routing" / "train.jsonl").read_text().splitlines()]
    return grade_matrix([RoutingExample(r["prompt"], r["labels"]) for r in rows], ids)


def test_classifier_pairs_are_the_top_pairs_when_every_agent_tops_some_row(tmp_path: Path) -> None:
    """Single-label rows, equal-grade multi-label rows and the demo's graded pairs: the classifier
    learns from exactly the pairs it learned from before graded parents were handled."""
    rng = np.random.default_rng(2)
    single = np.zeros((50, 7), np.float32)
    single[np.arange(40), rng.integers(0, 6, 40)] = 1.0  # the last 10 rows out of scope
    multi = (rng.random((50, 7)) < 0.3).astype(np.float32)
    demo = demo_grades(tmp_path)
    assert (demo[:, :-1] == 1).any()  # the demo does have rows with a lower-graded second agent
    for grades in (single, multi, demo):
        grades[:, -1] = 0.5
        for new, old in zip(classifier_pairs(grades), top_pairs(grades)):
            np.testing.assert_array_equal(new, old)


def test_single_label_and_demo_fits_are_bit_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fit on single-label rows plus graded pairs whose second agent is also top-graded elsewhere
    gives the same classifier and the same scores, bit for bit, with the old pairs (top_pairs)."""
    rng = np.random.default_rng(3)
    centres = unit(rng, 4)
    agents = [Agent(f"agent_{i}", f"agent number {i}") for i in range(4)]
    rows, x = [], []
    for i in range(60):
        a = i % 4
        labels = {agents[a].id: 2} if i % 3 else {agents[a].id: 2, agents[(a + 1) % 4].id: 1}
        v = centres[a] + 0.4 * rng.normal(size=DIM)
        rows.append(RoutingExample(f"p{i}", labels if i < 56 else {}))
        x.append(v / np.linalg.norm(v))
    x = np.array(x, np.float32)
    index = AgentIndex(agents, centres)
    grades = grade_matrix(rows, index.ids)

    def fit() -> tuple[AgentRanker, np.ndarray]:
        ranker = AgentRanker(hidden=8, epochs=3, batch_size=16, folds=2, group_by="agent").fit(index, x, grades)
        return ranker, ranker.score(x, index.with_examples(rows, embeddings=x))

    ranker, scores = fit()
    monkeypatch.setattr(amo.ranker, "classifier_pairs", top_pairs)
    old_ranker, old_scores = fit()
    np.testing.assert_array_equal(ranker.classifier_.weights, old_ranker.classifier_.weights)
    assert ranker.classifier_.agent_ids == old_ranker.classifier_.agent_ids
    np.testing.assert_array_equal(scores, old_scores)


def test_parent_categories_get_a_classifier_column() -> None:
    """Hierarchical grades (leaf 2, its parent 1): a parent is never top-graded, yet the classifier
    learns it from its leaves' rows, so it is not taken for an agent without history."""
    rng = np.random.default_rng(4)
    centres = unit(rng, 6)
    parents = ["l1:a", "l1:a", "l1:a", "l1:b", "l1:b", "l1:b"]
    agents = [Agent(f"l2:{i}", f"leaf {i}") for i in range(6)] + [Agent("l1:a", "a"), Agent("l1:b", "b")]
    rows, x = [], []
    for i in range(48):
        leaf = i % 6
        v = centres[leaf] + 0.3 * rng.normal(size=DIM)
        rows.append(RoutingExample(f"p{i}", {f"l2:{leaf}": 2, parents[leaf]: 1}))
        x.append(v / np.linalg.norm(v))
    grades = grade_matrix(rows, [a.id for a in agents])
    assert set(top_pairs(grades)[1]) == set(range(6))  # before: the leaves only
    index = AgentIndex(agents, np.vstack([centres, unit(rng, 2)]))
    ranker = AgentRanker(hidden=8, epochs=1, batch_size=16, folds=2, group_by="agent").fit(
        index, np.array(x, np.float32), grades)
    assert set(ranker.classifier_.agent_ids) == {a.id for a in agents}


def test_a_cold_fit_repeats_the_cross_fit_within_crossfit_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cold fit makes floor(crossfit_cells / (rows x agents)) cross-fit passes (at least one, at
    most MAX_REPEATS), rows counting training and validation prompts; each pass deals rows and
    agent groups to folds afresh and is trained on; the first pass's folds are kept for a warm start."""
    assert [AgentRanker(crossfit_cells=c).repeats(n, a) for c, n, a in (
        (500, 40, 4), (479, 40, 3), (0, 40, 4), (100, 100, 4), (10**9, 10, 4))] == [3, 3, 1, 1, amo.ranker.MAX_REPEATS]
    # the shipped budget: 16,400 rows (a CLINC150 growing fold's 13,600 + 2,800) of 150 agents 8
    # passes, 120,000 rows of the retrain-cost benchmark's 237 agents one (about 1.5 GB of features)
    budget = AgentRanker.from_params(load_params(ROOT / "params.yaml").router)
    assert (budget.repeats(16_400, 150), budget.repeats(120_000, 237)) == (amo.ranker.MAX_REPEATS, 1)
    rng = np.random.default_rng(1)
    centres = unit(rng, 4)
    agents = [Agent(f"agent_{i}", f"agent number {i}") for i in range(4)]
    rows = [RoutingExample(f"p{i}", {agents[i % 4].id: 1}) for i in range(40)]
    x = unit(rng, 40)
    plans, featurized = [], []
    crossfit = AgentRanker._crossfit

    def spy(self: AgentRanker, index: AgentIndex, x: np.ndarray, grades: np.ndarray, groups: np.ndarray,
            rng: np.random.Generator, extra: np.ndarray | None, plan: object) -> tuple:
        plans.append(plan)
        parts, extra_parts, classifiers = crossfit(self, index, x, grades, groups, rng, extra, plan)
        featurized.append(sum(len(p[0]) for p in parts))
        return parts, extra_parts, classifiers

    monkeypatch.setattr(AgentRanker, "_crossfit", spy)
    ranker = AgentRanker(hidden=8, epochs=1, batch_size=16, folds=2, group_by="agent", crossfit_cells=480).fit(
        AgentIndex(agents, centres), x, grade_matrix(rows, [a.id for a in agents]), keys=np.zeros((40, 8), np.uint8))
    assert ranker.passes_ == 3 and featurized == [40, 40, 40]
    assert len({p.fold_of_row.tobytes() for p in plans}) == 3  # folds dealt afresh each pass
    assert ranker.crossfit_ is not None and np.array_equal(ranker.crossfit_.folds, plans[0].fold_of_row)
