"""Planner: fitted trees pick ordered paths, generalise to unseen paths and agents, recover whole paths
of similar training prompts that step-by-step decoding misses, round-trip through JSON, refuse
corrupt files, explain themselves."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from amo.planner import (
    NEXT_FEATURES,
    PLANNER_FILE,
    RERANK_FEATURES,
    PlannerFormatError,
    TreePlanner,
)

AGENTS = ["search_flights", "book_hotel", "convert_currency", "check_weather", "translate_text", "send_email"]
HELD_OUT = ["send_email", "check_weather", "search_flights"]  # never a training path
FILLERS = ["for my trip", "please", "for tomorrow", "right away", "for the team"]


def trace(rng: random.Random, path: list[str], agents: list[str]) -> tuple[str, np.ndarray, dict, float, list]:
    """A prompt that names the path's agents in order; the router scores them above the separator."""
    prompt = " then ".join(f"{a.replace('_', ' ')} {rng.choice(FILLERS)}" for a in path) or "tell me a joke"
    scores = {a: (2.0 if a in path else -2.0) + rng.gauss(0, 0.3) for a in agents}
    embedding = np.array([rng.gauss(0, 1) for _ in range(8)])
    return prompt, embedding, scores, 0.0, path


def traces(n: int, seed: int, agents: list[str] = AGENTS) -> list[tuple]:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        path = rng.sample(agents, rng.choice([0, 1, 2, 2, 3, 3]))
        if path != HELD_OUT:
            out.append(trace(rng, path, agents))
    return out


def plan(planner: TreePlanner, row: tuple) -> list[str]:
    prompt, embedding, scores, separator, _ = row
    return planner.plan(prompt, embedding, scores, separator).path


@pytest.fixture(scope="module")
def planner() -> TreePlanner:
    prompts, embeddings, scores, seps, paths = zip(*traces(400, seed=0))
    return TreePlanner(pca_dims=4, max_depth=6, min_samples_leaf=2, next_max_depth=6, next_min_samples_leaf=5,
                       rerank_neighbours=5).fit(prompts, np.array(embeddings), scores, seps, paths, AGENTS)


def test_planner_reproduces_ordered_paths(planner: TreePlanner) -> None:
    """On held-out prompts the planner returns the ordered path, and abstains when no agent fits."""
    test = traces(100, seed=1)
    assert np.mean([plan(planner, row) == row[-1] for row in test]) > 0.9
    assert plan(planner, next(row for row in test if not row[-1])) == []


def test_path_unseen_in_training_is_reachable(planner: TreePlanner) -> None:
    """A path no training trace contains is planned when the prompt and scores support it."""
    assert all(list(p) != HELD_OUT for p in planner_paths())
    rng = random.Random(5)
    hits = [plan(planner, trace(rng, HELD_OUT, AGENTS)) == HELD_OUT for _ in range(10)]
    assert np.mean(hits) >= 0.8


def planner_paths() -> list[list[str]]:
    return [row[-1] for row in traces(400, seed=0)]


def test_agent_unseen_in_training_is_planned(planner: TreePlanner) -> None:
    """An agent absent from every training trace is planned through its router score."""
    rng = random.Random(6)
    agents = [*AGENTS, "order_pizza"]
    path = ["search_flights", "order_pizza"]
    hits = [plan(planner, trace(rng, path, agents)) == path for _ in range(10)]
    assert np.mean(hits) >= 0.8


def test_save_load_gives_identical_plans(planner: TreePlanner, tmp_path: Path) -> None:
    """A planner saved as JSON and loaded back plans exactly the same (paths and rules), no pickle."""
    planner.save(tmp_path)
    text = (tmp_path / PLANNER_FILE).read_text()
    assert json.loads(text)["kind"] == "amo.tree_planner"
    loaded = TreePlanner.load(tmp_path)
    for prompt, embedding, scores, separator, _ in traces(40, seed=2):
        assert loaded.plan(prompt, embedding, scores, separator) == planner.plan(prompt, embedding, scores, separator)


@pytest.mark.parametrize("corrupt", ["truncate", "child", "feature", "kind", "version", "format_2", "value",
                                     "features", "pca", "transitions", "rerank_features", "rerank_missing",
                                     "rerank_child"])
def test_corrupt_planner_is_refused(planner: TreePlanner, tmp_path: Path, corrupt: str) -> None:
    """A truncated or inconsistent planner file is refused with its path in the message."""
    data = planner.to_dict()
    if corrupt == "child":
        data["next_tree"]["left"][0] = 10**6
    elif corrupt == "feature":
        data["stop_tree"]["feature"][0] = 10**6
    elif corrupt == "kind":
        data["kind"] = "something.else"
    elif corrupt == "version":
        data["format_version"] = 1
    elif corrupt == "format_2":  # the step-by-step planner before the rerank tree: refit, not misread
        data["format_version"] = 2
        del data["rerank_tree"]
    elif corrupt == "rerank_features":
        data["rerank_tree"]["features"] = data["rerank_tree"]["features"][::-1]
    elif corrupt == "rerank_missing":
        data["rerank_tree"] = None
    elif corrupt == "rerank_child":
        data["rerank_tree"]["right"][0] = -5
    elif corrupt == "value":
        data["next_tree"]["value"][-1] = 7.0
    elif corrupt == "features":
        data["next_tree"]["features"] = data["next_tree"]["features"][::-1]
    elif corrupt == "pca":
        data["pca"]["mean"] = data["pca"]["mean"][:-1]
    elif corrupt == "transitions":
        data["transitions"] = ["not", "a", "table"]
    text = json.dumps(data)
    (tmp_path / PLANNER_FILE).write_text(text[: len(text) // 2] if corrupt == "truncate" else text)
    with pytest.raises(PlannerFormatError, match=PLANNER_FILE):
        TreePlanner.load(tmp_path)


def test_explain_names_real_features_and_thresholds(planner: TreePlanner) -> None:
    """Every rule names a feature of the tree that applied it and a threshold that is in that tree,
    and each step ends with its decision."""
    prompt, embedding, scores, separator, path = trace(random.Random(7), ["book_hotel", "convert_currency"], AGENTS)
    result = planner.plan(prompt, embedding, scores, separator)
    assert result.path == path
    trees = {"stop tree:": planner.stop_tree_, "next tree": planner.next_tree_}
    names = {"stop tree:": planner.stop_features_, "next tree": planner.next_features_}
    checked = 0
    for step in result.rules:
        current = None
        for line in step:
            if line.startswith(("stop tree:", "next tree")):
                current = "stop tree:" if line.startswith("stop") else "next tree"
            elif not line.startswith("->"):
                name, _, rest = line.partition(" = ")
                assert name in names[current]
                assert rest.split()[-1] in {f"{t:.4g}" for t in trees[current]["threshold"]}
                checked += 1
    assert checked and planner.next_features_ == NEXT_FEATURES
    assert result.rules[0][-1].startswith("-> book_hotel (P(next) = ")
    assert result.rules[-1][-1].startswith("-> stop")


def test_missing_known_agent_is_tolerated(planner: TreePlanner) -> None:
    """Scores without an agent the planner saw in training still give a plan, without that agent."""
    prompt, embedding, scores, separator, _ = trace(random.Random(8), ["book_hotel", "send_email"], AGENTS)
    without = {k: v for k, v in scores.items() if k != "send_email"}
    assert "send_email" not in planner.plan(prompt, embedding, without, separator).path


def cluster_traces(n: int, seed: int) -> list[tuple]:
    """Prompts in eight clusters of the embedding space, each cluster with its own three-agent path;
    the prompt text never names an agent and the router's scores are noise, so only the paths of
    similar training prompts tell the path, and every transition occurs in several clusters."""
    rng = random.Random(seed)
    centres = np.random.default_rng(0).normal(size=(8, 8)) * 3
    paths = [random.Random(c).sample(AGENTS, 3) for c in range(8)]
    out = []
    for _ in range(n):
        c = rng.randrange(8)
        scores = {a: rng.gauss(0, 1) for a in AGENTS}
        embedding = centres[c] + np.array([rng.gauss(0, 0.3) for _ in range(8)])
        out.append((f"request {rng.randrange(10**6)} {rng.choice(FILLERS)}", embedding, scores, 1.5, paths[c]))
    return out


def test_rerank_tree_recovers_neighbour_paths_decoding_misses() -> None:
    """Where only similar training prompts know the path, the rerank tree picks their whole path;
    the decoder alone, with the same trees, does not find it."""
    prompts, embeddings, scores, seps, paths = zip(*cluster_traces(300, seed=0))
    settings = {"pca_dims": 0, "max_depth": 4, "next_max_depth": 4, "neighbours": 0}
    decoder = TreePlanner(**settings).fit(prompts, np.array(embeddings), scores, seps, paths, AGENTS)
    reranked = TreePlanner(**settings, rerank_neighbours=5).fit(prompts, np.array(embeddings), scores, seps, paths,
                                                               AGENTS)
    test = cluster_traces(60, seed=1)
    assert np.mean([plan(decoder, row) == row[-1] for row in test]) < 0.5
    assert np.mean([plan(reranked, row) == row[-1] for row in test]) > 0.9
    result = reranked.plan(*test[0][:4])
    assert result.choice[0] == "candidate paths:" and "neighbour 1" in " ".join(result.choice)


def test_explain_names_the_rerank_tree_features_and_thresholds(planner: TreePlanner) -> None:
    """The path choice lists the candidate paths, then the rerank tree's tests on the chosen one (real
    features, thresholds of that tree), then the choice; the steps explain the chosen path."""
    prompt, embedding, scores, separator, _ = trace(random.Random(9), ["check_weather", "send_email"], AGENTS)
    result = planner.plan(prompt, embedding, scores, separator)
    tests = [line for line in result.choice if " <= " in line or " > " in line]
    thresholds = {f"{t:.4g}" for t in planner.rerank_tree_["threshold"]}
    assert all(t.split(" = ")[0] in RERANK_FEATURES and t.split()[-1] in thresholds for t in tests)
    assert result.choice[-1].startswith("-> candidate ") and len(result.rules) == len(result.path) + 1
    assert [line.split()[1] for step in result.rules for line in step if line.startswith("-> ")
            and not line.startswith(("-> continue", "-> stop"))] == result.path


def following(planner: TreePlanner, follow_min_traces: int) -> TreePlanner:
    data = planner.to_dict()
    return TreePlanner.from_dict({**data, "params": {**data["params"], "follow_min_traces": follow_min_traces}})


def test_plan_follows_the_router() -> None:
    """An abstained route gets no plan; a top agent the traces never call is planned anyway and
    the explanation says why; a well-known top agent the trees leave out is explained, not forced."""
    prompts, embeddings, scores, seps, paths = zip(*traces(400, seed=0))
    base = TreePlanner(pca_dims=4, max_depth=6, min_samples_leaf=2, next_max_depth=6,
                       next_min_samples_leaf=5).fit(prompts, np.array(embeddings), scores, seps, paths, AGENTS)
    planner = following(base, 5)
    agents = [*AGENTS, "order_pizza"]
    prompt, embedding, row_scores, separator, _ = trace(random.Random(9), ["book_hotel"], agents)
    row_scores["order_pizza"] = -3.0  # the trees see no reason to call it
    assert planner.plan(prompt, embedding, row_scores, separator).path == ["book_hotel"]

    abstained = planner.plan(prompt, embedding, row_scores, separator, selected=[])
    assert abstained.path == [] and "router abstained" in abstained.rules[0][0]

    followed = planner.plan(prompt, embedding, row_scores, separator, selected=["order_pizza", "book_hotel"])
    assert followed.path == ["order_pizza", "book_hotel"]
    assert any("order_pizza added first: 0 training calls" in line for line in followed.choice)

    known = planner.plan(prompt, embedding, row_scores, separator, selected=["send_email"])
    assert known.path == ["book_hotel"]
    assert any("send_email not planned: the trees know it from" in line for line in known.choice)
    assert base.plan(prompt, embedding, row_scores, separator, selected=["order_pizza"]).path == ["book_hotel"]


def test_no_agent_runs_again_unless_the_traces_do(planner: TreePlanner, tmp_path: Path) -> None:
    """A decoded path never calls an agent twice (in a row or later) when no training trace does:
    the demo planned `order_status -> order_status`; the router's scores cannot talk it into a repeat.
    The saved planner keeps the rule."""
    assert planner.repeating_ == set() and not any(a in after for a, after in planner.transitions_.items())
    planner.save(tmp_path)
    loaded = TreePlanner.load(tmp_path)
    rng = random.Random(3)
    paths, reloaded = [], []
    for _ in range(200):
        wanted = rng.sample(AGENTS, rng.choice([1, 2, 3]))
        prompt = " then ".join(a.replace("_", " ") for a in wanted)
        scores = {a: rng.gauss(0, 2) for a in AGENTS}
        embedding = np.array([rng.gauss(0, 1) for _ in range(8)])
        separator = rng.gauss(0, 1)
        paths.append(planner.plan(prompt, embedding, scores, separator, explain=False).path)
        reloaded.append(loaded.plan(prompt, embedding, scores, separator, explain=False).path)
    assert sum(len(p) >= 3 for p in paths) > 30 and reloaded == paths  # long plans were made
    assert [p for p in paths if len(set(p)) < len(p)] == []


def test_an_agent_the_traces_call_twice_may_run_again() -> None:
    """Traces that call `search_flights` again after `book_hotel` let a plan do the same; the
    rule is read from the traces, never a blanket ban (tool paths do call a tool twice)."""
    rng = random.Random(11)
    rows = traces(300, seed=2)
    rows += [trace(rng, ["search_flights", "book_hotel", "search_flights"], AGENTS) for _ in range(60)]
    prompts, embeddings, scores, seps, paths = zip(*rows)
    fitted = TreePlanner(pca_dims=4, max_depth=6, min_samples_leaf=2, next_max_depth=6,
                         next_min_samples_leaf=5).fit(prompts, np.array(embeddings), scores, seps, paths, AGENTS)
    assert fitted.repeating_ == {"search_flights"}
    assert fitted._may_run_again("search_flights", ["search_flights", "book_hotel"])
    assert not fitted._may_run_again("book_hotel", ["search_flights", "book_hotel"])  # never right after itself
    assert not fitted._may_run_again("check_weather", ["check_weather", "book_hotel"])
    prompt, embedding, row_scores, separator, path = rows[-1]
    assert fitted.plan(prompt, embedding, row_scores, separator).path == path


def test_a_planner_saved_without_repeating_loads_and_allows_earlier_agents(planner: TreePlanner) -> None:
    """A planner file from before the rule (no "repeating" key) loads; only the self-loop rule,
    read from its transitions, applies to it. A malformed key is refused, naming the field."""
    data = planner.to_dict()
    del data["repeating"]
    old = TreePlanner.from_dict(data)
    assert old.repeating_ is None and old._may_run_again("book_hotel", ["book_hotel", "send_email"])
    assert not old._may_run_again("send_email", ["book_hotel", "send_email"])
    with pytest.raises(PlannerFormatError, match="repeating"):
        TreePlanner.from_dict({**planner.to_dict(), "repeating": "book_hotel"})
