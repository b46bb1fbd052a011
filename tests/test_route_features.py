"""The route features' example evidence (each agent's best and top-3-mean example similarity)
is computed by segment reductions instead of a loop over agents; these tests hold it to the
per-agent sort it replaced, bit for bit, whatever the group sizes, ties and chunking."""

from __future__ import annotations

import numpy as np
import pytest

from amo import routing
from amo.data import Agent
from amo.routing import AgentIndex, Classifier, example_evidence, route_features


def per_agent_sort(q: np.ndarray, bank: np.ndarray, starts: np.ndarray,
                   counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The specification: each agent's examples sorted, the best one and the mean of the best
    min(3, count), 0 for an agent without examples."""
    n, a = len(q), len(counts)
    sims = q @ bank.T
    ex_max, ex_top3 = np.zeros((n, a), np.float32), np.zeros((n, a), np.float64)
    for j in np.flatnonzero(counts):
        c = int(counts[j])
        k = min(3, c)
        top = -np.sort(-sims[:, starts[j]:starts[j] + c], axis=1)[:, :k]
        ex_max[:, j], ex_top3[:, j] = top[:, 0], top.sum(1) / k
    return ex_max, ex_top3


def unit(rng: np.random.Generator, n: int, dim: int = 8) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def index_with(rng: np.random.Generator, counts: list[int], duplicates: bool) -> AgentIndex:
    agents = [Agent(f"agent_{i}", f"agent {i}") for i in range(len(counts))]
    owners = np.repeat(np.arange(len(counts)), counts)
    examples = unit(rng, len(owners))
    if duplicates:  # the same prompt twice or three times for one agent: tied similarities
        for j in range(len(counts)):
            rows = np.flatnonzero(owners == j)
            if len(rows) >= 2:
                examples[rows[1]] = examples[rows[0]]
            if len(rows) >= 4 and j % 2:
                examples[rows[3]] = examples[rows[0]]
            if len(rows) >= 5 and j % 3 == 0:
                examples[rows[4]] = examples[rows[2]]
    shuffle = rng.permutation(len(owners))  # the index packs examples by agent itself
    return AgentIndex(agents, unit(rng, len(counts)), examples[shuffle], owners[shuffle])


@pytest.mark.parametrize("duplicates", [False, True])
@pytest.mark.parametrize("chunk", [1 << 22, 7])
def test_example_evidence_equals_a_per_agent_sort(monkeypatch: pytest.MonkeyPatch, duplicates: bool,
                                                  chunk: int) -> None:
    monkeypatch.setattr(routing, "EXAMPLE_CHUNK", chunk)
    rng = np.random.default_rng(3)
    counts = [0, 1, 2, 3, 4, 5, 0, 9, 1, 30, 2]
    index = index_with(rng, counts, duplicates)
    bank, starts, packed_counts, _ = index.packed()
    q = unit(rng, 13)
    # prompts equal to an example: its own similarity is the group's tied maximum
    q[:3] = index.examples[:3]
    got = example_evidence(q, bank, packed_counts)
    want = per_agent_sort(q, bank, starts, packed_counts)
    assert got[0].dtype == want[0].dtype and got[1].dtype == want[1].dtype
    if chunk > len(q) * len(bank):  # one product, as the specification's: equal bit for bit
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    else:  # a product per prompt: BLAS may round a matrix-vector product differently in the last bit
        np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-6)
    assert (got[0][:, [0, 6]] == 0).all() and (got[1][:, [0, 6]] == 0).all()


def test_example_evidence_without_examples() -> None:
    q = unit(np.random.default_rng(0), 2)
    ex_max, ex_top3 = example_evidence(q, np.zeros((0, 8), np.float32), np.zeros(3, np.int64))
    assert ex_max.shape == ex_top3.shape == (2, 3) and not ex_max.any() and not ex_top3.any()


def test_classifier_columns_follow_the_classifier_asked_about() -> None:
    """The cached id map is the last classifier's: another classifier gets its own columns."""
    rng = np.random.default_rng(1)
    index = index_with(rng, [2, 0, 3], duplicates=False)
    one = Classifier(unit(rng, 2), np.zeros(2, np.float32), ("agent_2", "agent_0"))
    other = Classifier(unit(rng, 2), np.zeros(2, np.float32), ("agent_1", "gone"))
    q = unit(rng, 4)
    first = route_features(q, index, one)[0]
    assert [list(map(int, c)) for c in index.classifier_columns(one)] == [[0, 1], [2, 0]]
    second = route_features(q, index, other)[0]
    assert [list(map(int, c)) for c in index.classifier_columns(other)] == [[0], [1]]
    flag = routing.AGENT_FEATURES.index("has_classifier")
    assert first[0, :, flag].tolist() == [1, 0, 1] and second[0, :, flag].tolist() == [0, 1, 0]
    np.testing.assert_array_equal(route_features(q, index, one)[0], first)
    assert index.classifier_columns(None)[0].size == 0
