"""Routing without torch: the agent index, relevance grades and the separator rule.

The runtime routes with these and the ONNX scorer only, so serving a route never imports torch;
amo.router holds the trainable scoring model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amo.data import Agent, RoutingExample

SEPARATOR_GRADE = 0.5  # between irrelevant (0) and the lowest relevant grade (1)


class AgentError(ValueError):
    """An agent that cannot be added: bad id or description, or an id already present."""


def grade_matrix(examples: Sequence[RoutingExample], agent_ids: Sequence[str]) -> np.ndarray:
    """(N, A + 1) relevance grades; the last column is the separator. A label naming an agent
    not in `agent_ids` is refused by row."""
    column = {agent_id: i for i, agent_id in enumerate(agent_ids)}
    grades = np.zeros((len(examples), len(agent_ids) + 1), dtype=np.float32)
    grades[:, -1] = SEPARATOR_GRADE
    for row, example in enumerate(examples):
        for agent_id, grade in example.labels.items():
            if agent_id not in column:
                raise ValueError(f"routing row {row}: labels names unknown agent {agent_id!r}")
            grades[row, column[agent_id]] = grade
    return grades


@dataclass(frozen=True)
class Route:
    """The router's answer for one prompt: selected agents best first, or abstain."""

    agents: list[tuple[str, float]]
    separator: float

    @property
    def abstained(self) -> bool:
        return not self.agents

    def to_dict(self) -> dict[str, Any]:
        return {"agents": [{"id": a, "score": round(s, 4)} for a, s in self.agents],
                "separator": round(self.separator, 4), "abstained": self.abstained}


def select(scores: np.ndarray, agent_ids: Sequence[str], *, min_k: int = 0, max_k: int = 3,
           margin: float = 0.0) -> Route:
    """Agents scoring above the separator (last entry of `scores`) by `margin`, best first."""
    separator = float(scores[-1])
    order = np.argsort(-scores[:-1], kind="stable")
    chosen = [int(i) for i in order if scores[i] > separator + margin][:max_k]
    if len(chosen) < min_k:
        chosen = [int(i) for i in order[:min_k]]
    return Route(agents=[(agent_ids[i], float(scores[i])) for i in chosen], separator=separator)


class AgentIndex:
    """The candidate agents with their description embeddings; rebuilt cheaply when agents change."""

    def __init__(self, agents: list[Agent], embeddings: np.ndarray) -> None:
        if len(agents) != len(embeddings):
            raise ValueError(f"{len(agents)} agents but {len(embeddings)} embeddings")
        self.agents = agents
        self.embeddings = embeddings.astype(np.float32)

    @property
    def ids(self) -> list[str]:
        return [agent.id for agent in self.agents]

    @classmethod
    def build(cls, agents: list[Agent], encoder: Any) -> AgentIndex:
        return cls(agents, encoder.encode([agent.description for agent in agents]))

    def add(self, agents: list[Agent], encoder: Any) -> AgentIndex:
        """This index with `agents` appended; only their descriptions are embedded (the cheap
        index step: the scoring model is untouched and routes to them at once)."""
        known = set(self.ids)
        for agent in agents:
            if agent.id in known:
                raise AgentError(f"agent {agent.id!r} is already in the index")
            known.add(agent.id)
        added = encoder.encode([agent.description for agent in agents]).astype(np.float32)
        return AgentIndex(self.agents + list(agents), np.vstack([self.embeddings, added]))

    def save(self, directory: Path) -> None:
        from safetensors.numpy import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": self.embeddings}, str(directory / "agent_index.safetensors"))
        (directory / "agents.json").write_text(json.dumps(
            [asdict(agent) for agent in self.agents], indent=1, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, directory: Path) -> AgentIndex:
        from safetensors.numpy import load_file

        records = json.loads((directory / "agents.json").read_text())
        agents = [Agent.from_record(r) for r in records]
        return cls(agents, load_file(str(directory / "agent_index.safetensors"))["embeddings"])
