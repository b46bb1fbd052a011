"""The planner: a decision tree, fitted on end-to-end traces, that picks the ordered agent path.

The tree decides the next agent (or STOP) from the prompt's features and what ran so far, and is
applied step by step. Features: a PCA reduction of the prompt embedding, the router's score for
every agent it was fitted with and for the separator, and cheap text cues. It is saved as plain
JSON (thresholds, features, leaves), never pickle; prediction walks the arrays directly, so a
plan costs microseconds and every decision can be printed as rules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PLANNER_FILE = "planner.json"
FORMAT_VERSION = 1
STOP = "<stop>"
START = "<start>"
MISSING_SCORE = -1000.0  # an agent the planner knows that the current index no longer has
_ORDER_CUES = ("then", "after", "before", "first", "finally", "and", "also", "next")


class PlannerFormatError(ValueError):
    """A planner file that is not a whole, consistent planner."""


def text_features(prompt: str) -> list[float]:
    words = re.findall(r"[a-z']+", prompt.lower())
    return [float(len(words))] + [float(words.count(cue)) for cue in _ORDER_CUES]


TEXT_FEATURE_NAMES = ["n_words"] + [f"count_{cue}" for cue in _ORDER_CUES]


@dataclass(frozen=True)
class Plan:
    path: list[str]
    rules: list[list[str]]  # per step, the tests that led to its decision

    @property
    def abstained(self) -> bool:
        return not self.path


class TreePlanner:
    """Scikit-learn-style: `fit(...)` returns self; learned state ends in `_`."""

    def __init__(self, pca_dims: int = 16, max_depth: int = 12, min_samples_leaf: int = 2,
                 max_path_len: int = 4, seed: int = 0) -> None:
        self.pca_dims = pca_dims
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.max_path_len = max_path_len
        self.seed = seed

    # -- features -------------------------------------------------------------------------
    def _base_features(self, embedding: np.ndarray, scores: dict[str, float], separator: float,
                       prompt: str) -> list[float]:
        reduced = (embedding - self.pca_mean_) @ self.pca_components_.T
        agent_scores = [scores.get(agent, MISSING_SCORE) for agent in self.agents_]
        return [*reduced.tolist(), *agent_scores, separator, *text_features(prompt)]

    def _step_features(self, base: list[float], step: int, previous: str) -> list[float]:
        onehot = [1.0 if previous == name else 0.0 for name in (START, *self.agents_)]
        return [*base, float(step), *onehot]

    # -- fit ------------------------------------------------------------------------------
    def fit(self, prompts: Sequence[str], embeddings: np.ndarray, scores: Sequence[dict[str, float]],
            separators: Sequence[float], paths: Sequence[Sequence[str]], agents: Sequence[str]) -> TreePlanner:
        """One row per decision in every trace: (features, step, previous agent) -> next or STOP."""
        from sklearn.decomposition import PCA
        from sklearn.tree import DecisionTreeClassifier

        self.agents_ = list(agents)
        dims = min(self.pca_dims, embeddings.shape[0], embeddings.shape[1])
        pca = PCA(n_components=dims, random_state=self.seed).fit(embeddings)
        self.pca_mean_ = pca.mean_.astype(np.float64)
        self.pca_components_ = pca.components_.astype(np.float64)
        self.feature_names_ = ([f"prompt_pc{i}" for i in range(dims)]
                               + [f"score[{a}]" for a in self.agents_] + ["score[separator]"]
                               + TEXT_FEATURE_NAMES + ["step"]
                               + [f"previous=={a}" for a in (START, *self.agents_)])
        rows, targets = [], []
        for prompt, emb, score, sep, path in zip(prompts, embeddings, scores, separators, paths):
            base = self._base_features(emb, score, sep, prompt)
            steps = list(path)[: self.max_path_len] + [STOP]
            for step, target in enumerate(steps):
                previous = steps[step - 1] if step else START
                rows.append(self._step_features(base, step, previous))
                targets.append(target)
        tree = DecisionTreeClassifier(max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf,
                                      random_state=self.seed).fit(np.array(rows), np.array(targets))
        self.classes_ = [str(c) for c in tree.classes_]
        t = tree.tree_
        self.tree_ = {"left": t.children_left.tolist(), "right": t.children_right.tolist(),
                      "feature": t.feature.tolist(), "threshold": t.threshold.tolist(),
                      "leaf_class": t.value[:, 0, :].argmax(axis=1).tolist()}
        return self

    # -- predict --------------------------------------------------------------------------
    def _decide(self, x: list[float]) -> tuple[str, list[str]]:
        tree, node, rules = self.tree_, 0, []
        while tree["left"][node] != -1:
            feature, threshold = tree["feature"][node], tree["threshold"][node]
            name = self.feature_names_[feature]
            if x[feature] <= threshold:
                rules.append(f"{name} = {x[feature]:.4g} <= {threshold:.4g}")
                node = tree["left"][node]
            else:
                rules.append(f"{name} = {x[feature]:.4g} > {threshold:.4g}")
                node = tree["right"][node]
        return self.classes_[tree["leaf_class"][node]], rules

    def plan(self, prompt: str, embedding: np.ndarray, scores: dict[str, float], separator: float) -> Plan:
        base = self._base_features(embedding, scores, separator, prompt)
        path: list[str] = []
        rules: list[list[str]] = []
        previous = START
        for step in range(self.max_path_len):
            decision, why = self._decide(self._step_features(base, step, previous))
            rules.append(why + [f"-> {decision}"])
            if decision == STOP or decision in path:
                break
            path.append(decision)
            previous = decision
        return Plan(path=path, rules=rules)

    # -- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "kind": "amo.tree_planner",
                "params": {"pca_dims": self.pca_dims, "max_depth": self.max_depth,
                           "min_samples_leaf": self.min_samples_leaf,
                           "max_path_len": self.max_path_len, "seed": self.seed},
                "agents": self.agents_, "classes": self.classes_, "feature_names": self.feature_names_,
                "pca": {"mean": self.pca_mean_.tolist(), "components": self.pca_components_.tolist()},
                "tree": {k: list(v) for k, v in self.tree_.items()}}

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / PLANNER_FILE).write_text(json.dumps(self.to_dict()) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = PLANNER_FILE) -> TreePlanner:
        try:
            if data.get("kind") != "amo.tree_planner" or data.get("format_version") != FORMAT_VERSION:
                raise PlannerFormatError("not an amo tree planner of format version 1")
            planner = cls(**data["params"])
            planner.agents_ = list(data["agents"])
            planner.classes_ = list(data["classes"])
            planner.feature_names_ = list(data["feature_names"])
            planner.pca_mean_ = np.array(data["pca"]["mean"], dtype=np.float64)
            planner.pca_components_ = np.array(data["pca"]["components"], dtype=np.float64)
            planner.tree_ = {k: list(data["tree"][k]) for k in
                             ("left", "right", "feature", "threshold", "leaf_class")}
            planner._check()
        except PlannerFormatError as exc:
            raise PlannerFormatError(f"{source}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise PlannerFormatError(f"{source}: malformed planner ({type(exc).__name__}: {exc})") from None
        return planner

    def _check(self) -> None:
        nodes = len(self.tree_["left"])
        if not nodes or any(len(self.tree_[k]) != nodes for k in self.tree_):
            raise PlannerFormatError("tree arrays differ in length")
        n_features = len(self.feature_names_)
        for node in range(nodes):
            left, right = self.tree_["left"][node], self.tree_["right"][node]
            if left == -1:
                if not 0 <= self.tree_["leaf_class"][node] < len(self.classes_):
                    raise PlannerFormatError(f"node {node}: leaf class out of range")
            elif not (node < left < nodes and node < right < nodes
                      and 0 <= self.tree_["feature"][node] < n_features):
                raise PlannerFormatError(f"node {node}: child or feature index out of range")
        expected = self.pca_components_.shape[0] + len(self.agents_) + 1 + len(TEXT_FEATURE_NAMES) + 2 + len(self.agents_)
        if n_features != expected:
            raise PlannerFormatError(f"{n_features} feature names, expected {expected}")

    @classmethod
    def load(cls, directory: Path) -> TreePlanner:
        path = directory / PLANNER_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PlannerFormatError(f"{path}: cannot read planner: {exc}") from None
        return cls.from_dict(data, str(path))
