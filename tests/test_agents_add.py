"""`amo agents add`: a new agent is routable after the index step alone, and bad agents are refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from amo.agents import add_agent
from amo.cli import app
from amo.config import load_params
from amo.data import Agent, RoutingExample, read_agents
from amo.ranker import AgentRanker
from amo.routing import AgentError, AgentIndex, grade_matrix, select

ROOT = Path(__file__).resolve().parents[1]
WORDS = {
    "weather": "rain sunny forecast temperature umbrella cloudy",
    "music": "song playlist album artist guitar melody",
    "banking": "balance transfer deposit account savings loan",
    "travel": "flight hotel passport luggage airport ticket",
    "cooking": "recipe oven bake ingredients dinner spices",
    "fitness": "workout running gym muscles stretching cardio",
}
NOISE = ["please", "could", "you", "tell", "me", "about", "the", "my", "now", "today"]


class BagOfWordsEncoder:
    """A deterministic stand-in for the sentence encoder: hashed words, L2-normalised."""

    dim = 256

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                vectors[row, int(hashlib.sha256(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)


def prompt(words: str, rng: np.random.Generator) -> str:
    picked = rng.choice(words.split(), 2, replace=False).tolist() + rng.choice(NOISE, 2).tolist()
    return " ".join(rng.permutation(picked))


def corpus(rng: np.random.Generator, names: list[str], per_agent: int = 40) -> list[RoutingExample]:
    rows = [RoutingExample(prompt(WORDS[name], rng), {name: 1}) for name in names for _ in range(per_agent)]
    return rows + [RoutingExample(" ".join(rng.choice(NOISE, 4)), {}) for _ in range(per_agent)]


@pytest.fixture()
def trained(tmp_path: Path) -> tuple[Path, AgentRanker, BagOfWordsEncoder]:
    """The pipeline's ranker trained on five agents (fitness is left out), its index (with the
    training prompts as examples) saved in tmp_path."""
    rng, encoder = np.random.default_rng(0), BagOfWordsEncoder()
    known = [name for name in WORDS if name != "fitness"]
    agents = [Agent(name, f"handles questions about {WORDS[name]}") for name in known]
    train, val = corpus(rng, known), corpus(rng, known, 10)
    index = AgentIndex.build(agents, encoder)
    x = encoder.encode([e.prompt for e in train])
    router = AgentRanker(hidden=16, epochs=300, batch_size=32, folds=3, group_by="agent").fit(
        index, x, grade_matrix(train, index.ids),
        val=(encoder.encode([e.prompt for e in val]), grade_matrix(val, index.ids)))
    index.with_examples(train, embeddings=x).save(tmp_path / "router")
    router.save(tmp_path / "router")
    return tmp_path / "router", router, encoder


@pytest.mark.slow  # a subprocess, a spawned process or a trained model: not in make test-fast
def test_new_agent_is_routed_to_after_the_index_step_alone(trained, tmp_path: Path) -> None:
    """After add_agent (no retraining) fitness prompts go to the new agent; old ones are unchanged."""
    index_dir, router, encoder = trained
    weights = (index_dir / "ranker.safetensors").read_bytes()
    rng = np.random.default_rng(1)
    fitness = [prompt(WORDS["fitness"], rng) for _ in range(20)]
    before = AgentIndex.load(index_dir)
    assert "fitness" not in before.ids

    agents_file = tmp_path / "agents.jsonl"
    result = add_agent(load_params(ROOT / "params.yaml").data,
                       Agent("fitness", f"handles questions about {WORDS['fitness']}", "health"),
                       agents_file, index_dir, encoder=encoder)
    assert result["index"]["agents"] == 6
    assert (index_dir / "ranker.safetensors").read_bytes() == weights  # the model was not retrained
    assert [a.id for a in read_agents(agents_file)] == ["fitness"]

    after = AgentIndex.load(index_dir)
    np.testing.assert_array_equal(after.embeddings[:5], before.embeddings)
    np.testing.assert_array_equal(after.examples, before.examples)

    def shares(prompts: list[str], agent: str, index: AgentIndex) -> tuple[float, float]:
        """How often `agent` ranks first, and how often it is selected first (above the separator)."""
        scores = router.score(encoder.encode(prompts), index)
        first = [index.ids[int(row[:-1].argmax())] == agent for row in scores]
        routes = [select(row, index.ids) for row in scores]
        return float(np.mean(first)), float(np.mean([bool(r.agents) and r.agents[0][0] == agent for r in routes]))

    assert shares(fitness, "fitness", after)[0] >= 0.9  # from its description alone
    assert shares([prompt(WORDS["music"], rng) for _ in range(20)], "music", after) == (1.0, 1.0)
    # Example prompts, taken in by the index step alone, change its scores (the CLINC150 few-shot
    # benchmark measures how much they help); it stays first, and nothing was retrained.
    shots = [RoutingExample(prompt(WORDS["fitness"], rng), {"fitness": 1}) for _ in range(20)]
    with_examples = after.with_examples(shots, encoder)
    assert len(with_examples.examples) == len(after.examples) + 20
    x = encoder.encode(fitness)
    assert np.abs(router.score(x, with_examples)[:, 5] - router.score(x, after)[:, 5]).max() > 0.1
    assert shares(fitness, "fitness", with_examples)[0] >= 0.9
    assert (index_dir / "ranker.safetensors").read_bytes() == weights


def test_add_agent_refuses_duplicates_and_bad_fields(trained, tmp_path: Path) -> None:
    """A duplicate id, a malformed id or a too-short description is refused before anything is written."""
    index_dir, _, encoder = trained
    params = load_params(ROOT / "params.yaml").data
    snapshot = (index_dir / "agents.json").read_text()
    with pytest.raises(AgentError, match="'music' is already in the index"):
        add_agent(params, Agent("music", "plays songs from a playlist of any artist"), None, index_dir, encoder)
    with pytest.raises(AgentError, match="must match"):
        add_agent(params, Agent("bad id!", "a perfectly fine description here"), None, index_dir, encoder)
    with pytest.raises(AgentError, match="description must have"):
        add_agent(params, Agent("short", "too short"), None, index_dir, encoder)
    assert (index_dir / "agents.json").read_text() == snapshot


def test_cli_appends_to_agents_file_and_names_a_duplicate(tmp_path: Path, monkeypatch) -> None:
    """`amo agents add` appends one record; adding the same id again exits 1 naming the file."""
    monkeypatch.chdir(tmp_path)
    runner, params = CliRunner(), str(ROOT / "params.yaml")
    agents_file = tmp_path / "agents.jsonl"
    args = ["--params", params, "agents", "add", "fitness", "--description",
            "plans workouts, running and gym sessions", "--domain", "health", "--tag", "sport",
            "--agents", str(agents_file)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert json.loads(agents_file.read_text()) == {"id": "fitness", "description":
                                                   "plans workouts, running and gym sessions",
                                                   "domain": "health", "tags": ["sport"]}
    second = runner.invoke(app, args)
    assert second.exit_code == 1
    assert "already exists" in second.output and "agents.jsonl" in second.output
