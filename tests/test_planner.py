"""Planner: fitted trees pick ordered paths, round-trip through JSON, refuse corrupt files, explain."""

import json
from pathlib import Path

import numpy as np
import pytest

from amo.planner import PLANNER_FILE, PlannerFormatError, TreePlanner

AGENTS = ["search", "price", "compare", "handoff"]
PATHS = [["search"], ["search", "price"], ["price", "compare"], [], ["search", "price", "compare"], ["handoff"]]


def traces(n: int = 240, seed: int = 0):
    """Each path type has its own region of embedding space and its own router scores."""
    centres = np.random.default_rng(0).normal(size=(len(PATHS), 12))
    rng = np.random.default_rng(seed)
    prompts, embeddings, scores, seps, paths = [], [], [], [], []
    for i in range(n):
        kind = i % len(PATHS)
        embeddings.append(centres[kind] + 0.1 * rng.normal(size=12))
        scores.append({a: (2.0 if a in PATHS[kind] else -2.0) + 0.1 * rng.normal() for a in AGENTS})
        seps.append(0.0)
        paths.append(PATHS[kind])
        prompts.append(" then ".join(PATHS[kind]) or "tell me a joke")
    return prompts, np.array(embeddings), scores, seps, paths


@pytest.fixture(scope="module")
def planner() -> TreePlanner:
    prompts, emb, scores, seps, paths = traces()
    return TreePlanner(pca_dims=4, max_depth=8, min_samples_leaf=1).fit(prompts, emb, scores, seps, paths, AGENTS)


def test_planner_reproduces_ordered_paths(planner: TreePlanner) -> None:
    """On held-out prompts of known kinds, the planner returns each kind's ordered path."""
    prompts, emb, scores, seps, paths = traces(n=60, seed=1)
    predicted = [planner.plan(p, e, s, sep).path for p, e, s, sep in zip(prompts, emb, scores, seps)]
    assert np.mean([p == g for p, g in zip(predicted, paths)]) > 0.9
    assert planner.plan(prompts[3], emb[3], scores[3], seps[3]).abstained


def test_save_load_gives_identical_paths(planner: TreePlanner, tmp_path: Path) -> None:
    """A planner saved as JSON and loaded back plans exactly the same, with no pickle involved."""
    planner.save(tmp_path)
    text = (tmp_path / PLANNER_FILE).read_text()
    assert json.loads(text)["kind"] == "amo.tree_planner"
    loaded = TreePlanner.load(tmp_path)
    prompts, emb, scores, seps, _ = traces(n=30, seed=2)
    for p, e, s, sep in zip(prompts, emb, scores, seps):
        assert loaded.plan(p, e, s, sep) == planner.plan(p, e, s, sep)


@pytest.mark.parametrize("corrupt", ["truncate", "child", "feature", "kind", "leaf"])
def test_corrupt_planner_is_refused(planner: TreePlanner, tmp_path: Path, corrupt: str) -> None:
    """A truncated or inconsistent planner file is refused with its path in the message."""
    data = planner.to_dict()
    if corrupt == "child":
        data["tree"]["left"][0] = 10**6
    elif corrupt == "feature":
        data["tree"]["feature"][0] = 10**6
    elif corrupt == "kind":
        data["kind"] = "something.else"
    elif corrupt == "leaf":
        leaf = data["tree"]["left"].index(-1)
        data["tree"]["leaf_class"][leaf] = 99
    text = json.dumps(data)
    (tmp_path / PLANNER_FILE).write_text(text[: len(text) // 2] if corrupt == "truncate" else text)
    with pytest.raises(PlannerFormatError, match=PLANNER_FILE):
        TreePlanner.load(tmp_path)


def test_explain_names_real_features_and_thresholds(planner: TreePlanner) -> None:
    """Every rule names one of the planner's features and a threshold that is in the tree."""
    prompts, emb, scores, seps, _ = traces(n=6, seed=3)
    plan = planner.plan(prompts[4], emb[4], scores[4], seps[4])
    thresholds = {f"{t:.4g}" for t in planner.tree_["threshold"]}
    tests = [rule for step in plan.rules for rule in step if not rule.startswith("->")]
    assert tests
    for rule in tests:
        name, _, rest = rule.partition(" = ")
        assert name in planner.feature_names_
        assert rest.split()[-1] in thresholds
    assert plan.rules[-1][-1].startswith("-> ")


def test_unknown_and_missing_agents_are_tolerated(planner: TreePlanner) -> None:
    """Scores for agents the planner never saw are ignored; a missing known agent does not crash."""
    prompts, emb, scores, seps, _ = traces(n=6, seed=4)
    with_new = dict(scores[1], brand_new_agent=5.0)
    assert planner.plan(prompts[1], emb[1], with_new, seps[1]).path == planner.plan(
        prompts[1], emb[1], scores[1], seps[1]).path
    without = {k: v for k, v in scores[1].items() if k != "compare"}
    planner.plan(prompts[1], emb[1], without, seps[1])
