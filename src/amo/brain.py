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

    def _verify_arms(self) -> None:
        """Re-hash every arm's files against the manifest just before they are loaded: the
        bundle was verified when served, but arms load later (on first use)."""
        for name in self.runtime["arms"]:
            problems = file_problems(self.path, self.manifest, f"arms/{name}/")
            if problems:
                raise BundleError(f"arm {name!r} of bundle {self.bundle_id} at {self.path} refused: "
                                  + "; ".join(problems))

    def _load_arms(self) -> Any:
        if self._arms is None:
            from amo.arms import ArmServer
            from amo.models import load_base_model

            self._verify_arms()
            ref = self.manifest["models"]["base_model"]
            base = resolve_base_model(ref["ref"], ref["gguf_file"])
            _check_model("base model", base.weights_file, ref["sha256"])
            model, tokenizer = load_base_model(base)
            self._arms = ArmServer(model, tokenizer, {name: self.path / "arms" / name
                                                      for name in self.runtime["arms"]})
        return self._arms

    def invoke(self, rows: list[tuple[str | None, str]], max_new_tokens: int | None = None) -> list[str]:
        for arm, _ in rows:  # refuse an unknown arm before loading the base model
            if arm is not None and arm not in self.runtime["arms"]:
                raise KeyError(f"unknown arm {arm!r}; this bundle's arms: {', '.join(self.runtime['arms'])}")
        return self.arms.invoke(rows, max_new_tokens)

    def copilot(self, prompt: str) -> CopilotAnswer:
        """Route, plan, then run every planned step that has an arm, in one mixed batch; agents
        that share an arm share one call (same arm, same prompt: the same answer)."""
        route, plan = self.plan(prompt)
        if route.abstained:  # out of scope: no agent is called, no arm runs
            return CopilotAnswer(prompt, route, plan, [])
        arm_of = {agent: arm for arm, agents in self.runtime["arm_agents"].items() for agent in agents}
        steps = [(agent, arm_of[agent]) for agent in plan.path if agent in arm_of]
        arms = list(dict.fromkeys(arm for _, arm in steps))
        outputs = dict(zip(arms, self.invoke([(arm, prompt) for arm in arms]))) if arms else {}
        return CopilotAnswer(prompt, route, plan, [{"agent": agent, "arm": arm, "output": outputs[arm]}
                                                   for agent, arm in steps])
