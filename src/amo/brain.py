"""A promoted bundle, loaded and verified: route, plan and invoke for one prompt at a time.

The encoder and base model come from outside the bundle; their weights must hash to what the
manifest names, or the bundle is refused.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amo.bundle import RUNTIME, BundleError, file_problems, verify_bundle
from amo.extras import require
from amo.models import Encoder, resolve_base_model, resolve_encoder, sha256_file
from amo.onnx_encoder import OnnxEncoder, has_onnx_encoder
from amo.onnx_router import OnnxRanker
from amo.planner import Plan, TreePlanner
from amo.routing import AgentIndex, Route, agent_margins, select


def _check_model(kind: str, path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise BundleError(f"{kind} weights {path} hash to {actual[:12]}…, the bundle expects "
                          f"{expected[:12]}…: a different model is installed")


@dataclass
class CopilotAnswer:
    prompt: str
    route: Route
    plan: Plan
    arm_outputs: list[dict[str, str]]

    @property
    def out_of_scope(self) -> bool:
        return self.route.abstained

    @property
    def calls(self) -> list[dict[str, Any]]:
        """Every planned step in order: answered by its arm here, or handed to the agent itself
        (an agent without an arm is a service the caller's agent framework runs)."""
        if self.out_of_scope:
            return []
        answered = {step["agent"]: step for step in self.arm_outputs}
        return [{"agent": agent, "arm": answered[agent]["arm"], "output": answered[agent]["output"]}
                if agent in answered else {"agent": agent, "arm": None, "output": None}
                for agent in self.plan.path]

    @classmethod
    def of(cls, prompt: str, route: Route, plan: Plan, steps: list[tuple[str, str]],
           outputs: list[str]) -> CopilotAnswer:
        """The answer from Brain.copilot_steps' steps and the outputs of their arms (step_arms' order)."""
        by_arm = dict(zip(step_arms(steps), outputs))
        return cls(prompt, route, plan, [{"agent": agent, "arm": arm, "output": by_arm[arm]} for agent, arm in steps])

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "route": self.route.to_dict(), "out_of_scope": self.out_of_scope,
                "plan": {"path": self.plan.path, "abstained": self.plan.abstained},
                "calls": self.calls, "arm_outputs": self.arm_outputs}


class Brain:
    def __init__(self, bundle: Path, verify: bool = True) -> None:
        self.path = Path(bundle)
        self.manifest = verify_bundle(self.path) if verify else json.loads((self.path / "manifest.json").read_text())
        self.runtime = json.loads((self.path / RUNTIME).read_text())
        models = self.manifest["models"]
        batch_size = self.runtime.get("encoder_batch_size", 64)
        self.encoder: Encoder | OnnxEncoder
        if has_onnx_encoder(self.path / "router"):  # inside the bundle, checksummed: no torch
            self.encoder = OnnxEncoder(self.path / "router", batch_size)
        else:
            encoder_dir = resolve_encoder(models["encoder"]["ref"])
            _check_model("encoder", encoder_dir / models["encoder"]["file"], models["encoder"]["sha256"])
            self.encoder = Encoder(encoder_dir, batch_size)
        self.scorer = OnnxRanker(self.path / "router")
        self.index = AgentIndex.load(self.path / "router")
        self.agent_ids = self.index.ids
        self.margins = agent_margins(self.index, self.runtime["router"]["margin"])
        self.planner = TreePlanner.load(self.path / "planner")
        self._arms: Any = None
        self._arms_lock = threading.Lock()
        self._encode_lock = threading.Lock()  # tokenizers refuse concurrent use ("Already borrowed")

    @property
    def bundle_id(self) -> str:
        return self.manifest["bundle_id"]

    def embed(self, prompts: list[str]) -> np.ndarray:
        """L2-normalised vectors of `prompts` by this bundle's encoder (one batch)."""
        with self._encode_lock:
            return self.encoder.encode(prompts)

    def _score(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        embedding = self.embed([prompt])
        return embedding[0], self.scorer.score(embedding, self.index)[0]

    def _route(self, scores: np.ndarray) -> Route:
        r = self.runtime["router"]
        return select(scores, self.index.ids, min_k=r["min_k"], max_k=r["max_k"], margin=self.margins)

    def route(self, prompt: str) -> Route:
        return self._route(self._score(prompt)[1])

    def score_many(self, prompts: list[str], embeddings: np.ndarray | None = None) -> np.ndarray:
        """(N, A + 1) router scores, the separator last: one encoder batch and one ONNX call
        (no encoder call when the prompts' `embeddings` by this bundle's encoder are given)."""
        return self.scorer.score(self.embed(prompts) if embeddings is None else embeddings, self.index)

    def route_scores(self, scores: np.ndarray) -> Route:
        """The selection for one score row, with this bundle's min_k, max_k and margin."""
        return self._route(scores)

    def route_many(self, prompts: list[str]) -> list[Route]:
        """Routes for several prompts at once (the runtime batches concurrent requests this way)."""
        return [self._route(row) for row in self.score_many(prompts)]

    def plan(self, prompt: str) -> tuple[Route, Plan]:
        """The route and the plan that follows it (no plan when the route abstains)."""
        embedding, scores = self._score(prompt)
        return self._plan(prompt, embedding, scores)

    def _plan(self, prompt: str, embedding: np.ndarray, scores: np.ndarray) -> tuple[Route, Plan]:
        route = self._route(scores)
        return route, self.planner.plan_scores(prompt, embedding, self.agent_ids, scores,
                                               selected=[agent for agent, _ in route.agents])

    def plan_many(self, prompts: list[str], embeddings: np.ndarray | None = None) -> list[tuple[Route, Plan]]:
        """`plan` for several prompts: one encoder batch (none with `embeddings`) and one ONNX call."""
        embeddings = self.embed(prompts) if embeddings is None else embeddings
        scores = self.score_many(prompts, embeddings)
        return [self._plan(p, e, s) for p, e, s in zip(prompts, embeddings, scores)]

    @property
    def arms(self) -> Any:
        """The ArmServer, loaded once on first use (the base model takes seconds to load)."""
        with self._arms_lock:
            return self._load_arms()

    def _load_arms(self) -> Any:
        if self._arms is None:
            self._arms = load_arms(self.path, self.manifest, self.runtime)
        return self._arms

    def invoke(self, rows: list[tuple[str | None, str]], max_new_tokens: int | None = None) -> list[str]:
        for arm, _ in rows:  # refuse an unknown arm before loading the base model
            if arm is not None and arm not in self.runtime["arms"]:
                raise KeyError(f"unknown arm {arm!r}; this bundle's arms: {', '.join(self.runtime['arms'])}")
        return self.arms.invoke(rows, max_new_tokens)

    def copilot_steps(self, prompt: str) -> tuple[Route, Plan, list[tuple[str, str]]]:
        """The route, the plan, and the (agent, arm) of every planned step that has an arm (none
        when the route abstains: out of scope, no arm runs)."""
        route, plan = self.plan(prompt)
        if route.abstained:
            return route, plan, []
        arm_of = {agent: arm for arm, agents in self.runtime["arm_agents"].items() for agent in agents}
        return route, plan, [(agent, arm_of[agent]) for agent in plan.path if agent in arm_of]

    def copilot(self, prompt: str) -> CopilotAnswer:
        """Route, plan, then run every planned step that has an arm, in one mixed batch."""
        route, plan, steps = self.copilot_steps(prompt)
        arms = step_arms(steps)
        outputs = self.invoke([(arm, prompt) for arm in arms]) if arms else []
        return CopilotAnswer.of(prompt, route, plan, steps, outputs)


def step_arms(steps: list[tuple[str, str]]) -> list[str]:
    """The arms the steps call, each once: agents that share an arm share one call (same arm,
    same prompt: the same answer)."""
    return list(dict.fromkeys(arm for _, arm in steps))


def load_arms(path: Path, manifest: dict[str, Any], runtime: dict[str, Any]) -> Any:
    """The ArmServer of the bundle at `path`: its arms re-hashed against the manifest (the bundle
    was verified when served, but arms load later), the base model checked against the hash the
    manifest names, then loaded. ExtraNotInstalled without amo[arms]."""
    require("arms", "generation (/invoke, and /copilot's arms)")
    for name in runtime["arms"]:
        problems = file_problems(path, manifest, f"arms/{name}/")
        if problems:
            raise BundleError(f"arm {name!r} of bundle {manifest['bundle_id']} at {path} refused: "
                              + "; ".join(problems))
    from amo.arms import ArmServer
    from amo.models import load_base_model

    ref = manifest["models"]["base_model"]
    base = resolve_base_model(ref["ref"], ref["gguf_file"])
    _check_model("base model", base.weights_file, ref["sha256"])
    model, tokenizer = load_base_model(base)
    return ArmServer(model, tokenizer, {name: path / "arms" / name for name in runtime["arms"]})
