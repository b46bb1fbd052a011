"""Router: listwise loss with a separator, dynamic top-k, abstention, ONNX parity, round trips."""

from pathlib import Path

import numpy as np
import pytest
import torch

from amo.data import Agent, RoutingExample
from amo.onnx_router import OnnxScorer, export_router
from amo.router import ListwiseRouter, listwise_loss
from amo.routing import AgentIndex, grade_matrix, select


def toy_problem(seed: int = 0, n: int = 280) -> tuple[np.ndarray, list[RoutingExample], np.ndarray, list[str]]:
    """Six agents as random unit vectors; prompts near one or two agents, or near none (OOS)."""
    rng = np.random.default_rng(seed)
    agents = rng.normal(size=(6, 24)).astype(np.float32)
    agents /= np.linalg.norm(agents, axis=1, keepdims=True)
    ids = [f"agent_{i}" for i in range(6)]
    prompts, examples = [], []
    for i in range(n):
        kind = i % 8
        if kind == 7:
            prompts.append(rng.normal(size=24))
            examples.append(RoutingExample(f"p{i}", {}))
        elif kind == 6:
            a, b = rng.choice(6, 2, replace=False)
            prompts.append(2 * agents[a] + 1.2 * agents[b] + 0.3 * rng.normal(size=24))
            examples.append(RoutingExample(f"p{i}", {ids[a]: 2, ids[b]: 1}))
        else:
            prompts.append(3 * agents[kind] + 0.4 * rng.normal(size=24))
            examples.append(RoutingExample(f"p{i}", {ids[kind]: 2}))
    x = np.array(prompts, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), examples, agents, ids


@pytest.fixture(scope="module")
def fitted() -> tuple[ListwiseRouter, tuple]:
    problem = toy_problem()
    x, examples, agents, ids = problem
    router = ListwiseRouter(hidden=64, epochs=40, seed=0).fit(x, grade_matrix(examples, ids), agents)
    return router, problem


def test_loss_prefers_the_right_order() -> None:
    """The loss is small when relevant > separator > irrelevant and large when reversed."""
    scores = torch.tensor([[4.0, 2.0, -3.0, 0.0]])
    grades = torch.tensor([[2.0, 1.0, 0.0, 0.5]])
    assert listwise_loss(scores, grades) < 0.2
    assert listwise_loss(-scores, grades) > 3.0


def test_out_of_scope_row_only_trains_the_separator() -> None:
    """With no relevant agent, the only active term is separator vs the agents."""
    grades = torch.tensor([[0.0, 0.0, 0.5]])
    low = listwise_loss(torch.tensor([[-5.0, -5.0, 5.0]]), grades)
    high = listwise_loss(torch.tensor([[5.0, -5.0, -5.0]]), grades)
    assert low < 0.01 < 5.0 < high


def test_select_dynamic_top_k_and_abstain() -> None:
    """Agents above the separator come back best first, capped by max_k; none above abstains."""
    ids = ["a", "b", "c", "d"]
    route = select(np.array([0.1, 2.0, 1.5, -1.0, 0.5]), ids, max_k=3)
    assert [a for a, _ in route.agents] == ["b", "c"]
    assert select(np.array([0.1, 2.0, 1.5, 1.0, 0.5]), ids, max_k=2).agents[1][0] == "c"
    assert select(np.array([0.1, 0.2, 0.0, -1.0, 0.5]), ids).abstained
    assert select(np.array([0.1, 0.2, 0.0, -1.0, 0.5]), ids, min_k=1).agents[0][0] == "b"
    assert select(np.array([0.1, 0.7, 0.0, -1.0, 0.5]), ids, margin=0.5).abstained


def test_select_matches_the_agent_by_agent_rule_on_ties_and_per_agent_margins() -> None:
    """select picks exactly what the rule says agent by agent: best first, ties in index order,
    each agent's own margin, a lead equal to the margin abstaining, min_k topping up (pinned so a
    faster select can be checked against it)."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 40))
        scores = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], size=n + 1).astype(np.float32)  # many ties
        margin = rng.choice([-0.5, 0.0, 0.5], size=n) if rng.random() < 0.5 else float(rng.choice([-0.5, 0.0]))
        min_k, max_k = int(rng.integers(0, 3)), int(rng.integers(1, 5))
        ids = [f"a{i}" for i in range(n)]
        order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
        bar = (float(scores[-1]) + np.broadcast_to(np.asarray(margin, np.float64), (n,))).astype(np.float32)
        want = [i for i in order if scores[i] > bar[i]][:max_k]
        want = want if len(want) >= min_k else order[:min_k]
        route = select(scores, ids, min_k=min_k, max_k=max_k, margin=margin)
        assert [a for a, _ in route.agents] == [ids[i] for i in want]
        assert [s for _, s in route.agents] == [float(scores[i]) for i in want]


def test_router_learns_single_multi_and_out_of_scope(fitted) -> None:
    """On a separable toy problem the router picks the primary agent and abstains on OOS."""
    router, (x, examples, agents, ids) = fitted
    routes = [select(s, ids) for s in router.score(x, agents)]
    in_scope = [(r, e) for r, e in zip(routes, examples) if e.labels]
    oos = [r for r, e in zip(routes, examples) if not e.labels]
    accuracy = np.mean([bool(r.agents) and e.labels.get(r.agents[0][0]) == 2 for r, e in in_scope])
    assert accuracy > 0.9
    assert np.mean([r.abstained for r in oos]) > 0.7
    multi = [(r, e) for r, e in zip(routes, examples) if len(e.labels) == 2]
    assert np.mean([len(r.agents) >= 2 for r, _ in multi]) > 0.5


def test_new_agent_is_a_candidate_without_retraining(fitted) -> None:
    """An agent appended to the index is scored by the same model (no refit)."""
    router, (x, _, agents, ids) = fitted
    extra = np.vstack([agents, x[7:8]])  # a "new agent" whose description matches an OOS prompt
    scores = router.score(x[7:8], extra)
    assert scores.shape == (1, len(ids) + 2)


def test_save_load_and_onnx_agree(fitted, tmp_path: Path) -> None:
    """Saved then loaded, and exported to ONNX, the router gives the same scores (1e-4)."""
    router, (x, _, agents, _) = fitted
    router.save(tmp_path / "router")
    loaded = ListwiseRouter.load(tmp_path / "router")
    np.testing.assert_array_equal(loaded.score(x, agents), router.score(x, agents))
    onnx = OnnxScorer(export_router(router, tmp_path / "router.onnx"))
    more_agents = np.vstack([agents, agents[:3] * -1])  # a different agent count than at export
    np.testing.assert_allclose(onnx.score(x, more_agents), router.score(x, more_agents), atol=1e-4)


def test_agent_index_round_trip(tmp_path: Path) -> None:
    """The agent index saves as JSON + safetensors and loads back identically."""
    agents = [Agent("a", "first agent description", "shop", ("x",)), Agent("b", "second one", "", ())]
    index = AgentIndex(agents, np.arange(8, dtype=np.float32).reshape(2, 4))
    index.save(tmp_path)
    loaded = AgentIndex.load(tmp_path)
    assert loaded.agents == agents
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)


def test_row_weights_scale_a_rows_share_of_the_loss() -> None:
    """With row weights, an out-of-scope row weighted 3 counts three times as much as weight 1."""
    scores = torch.tensor([[2.0, 0.0, 1.0], [1.0, 0.5, 0.0]])
    grades = torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 0.5]])
    plain = listwise_loss(scores, grades, torch.tensor([1.0, 1.0]))
    assert torch.isclose(plain, listwise_loss(scores, grades))
    heavy = listwise_loss(scores, grades, torch.tensor([1.0, 3.0]))
    oos_term = float(torch.logsumexp(torch.tensor([0.0, 1.0, 0.5]), 0) - 0.0)
    assert heavy > plain
    assert abs(float(heavy) * 5 - (float(plain) * 3 + 2 * oos_term)) < 1e-4


@pytest.mark.parametrize("scorer", ["bilinear", "siamese"])
def test_bilinear_scorers_learn_and_export(scorer: str, tmp_path: Path) -> None:
    """The projected-bilinear scorers fit the toy problem and their ONNX export agrees with torch."""
    x, examples, agents, ids = toy_problem(seed=1)
    router = ListwiseRouter(scorer=scorer, proj_dim=16, epochs=40, seed=0).fit(
        x, grade_matrix(examples, ids), agents)
    routes = [select(s, ids) for s in router.score(x, agents)]
    hits = [bool(r.agents) and e.labels.get(r.agents[0][0]) == 2 for r, e in zip(routes, examples) if e.labels]
    assert np.mean(hits) > 0.9
    router.save(tmp_path / "router")
    loaded = ListwiseRouter.load(tmp_path / "router")
    assert loaded.config_.scorer == scorer
    onnx = OnnxScorer(export_router(loaded, tmp_path / "router.onnx"))
    np.testing.assert_allclose(onnx.score(x, agents[:4]), router.score(x, agents[:4]), atol=1e-4)


def _pairwise_listwise_loss(scores: torch.Tensor, grades: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The loss written out over every (d, d') pair, as the paper states it: the reference."""
    lower = grades.unsqueeze(1) < grades.unsqueeze(2)
    rivals = scores.unsqueeze(1).expand_as(lower).masked_fill(~lower, float("-inf"))
    terms = torch.logsumexp(torch.cat([scores.unsqueeze(2), rivals], dim=2), dim=2) - scores
    active = (grades > 0) & lower.any(dim=2)
    w = weights.unsqueeze(1).expand_as(terms)[active]
    return (terms[active] * w).sum() / w.sum()


def test_listwise_loss_matches_the_pairwise_definition_in_value_and_gradient() -> None:
    """The O(B x C) loss equals the pairwise one on graded rows with ties, out-of-scope rows
    (only the separator relevant-ish) and row weights, in value and in gradient."""
    from amo.router import listwise_loss

    generator = torch.Generator().manual_seed(0)
    grades = torch.randint(0, 3, (16, 40), generator=generator).float()
    grades[:, -1] = 0.5
    grades[:4, :-1] = 0.0  # out of scope: the separator must beat every agent
    weights = torch.rand(16, generator=generator) + 0.5
    scores = torch.randn(16, 40, generator=generator, requires_grad=True)
    mine = listwise_loss(scores, grades, weights)
    (mine_grad,) = torch.autograd.grad(mine, scores)
    reference = _pairwise_listwise_loss(scores, grades, weights)
    (reference_grad,) = torch.autograd.grad(reference, scores)
    assert torch.allclose(mine, reference, atol=1e-6)
    assert torch.allclose(mine_grad, reference_grad, atol=1e-7)
