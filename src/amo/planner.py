"""The planner: two decision trees, fitted on end-to-end traces, that pick the ordered agent path.

A plan is built step by step. At each step the *stop tree* decides whether the path ends here,
from prompt-level features (a PCA reduction of the prompt embedding, text cues, the router's
separator and how many agents are above it and not yet run, what ran so far). If it goes on, the
*next tree* scores each candidate agent on agent-agnostic features: the candidate's router score,
rank and gap to the separator, whether and how often it already ran, how often it followed the
previous agent (and the last two) in the training traces, where the prompt mentions its name,
and, with `neighbours > 0`, how the paths of the most similar training prompts vote for it. The
best-scoring candidate runs next. No feature is tied to a fixed agent list, so an agent that no
training trace contains is planned through its router score, and any ordered path can be
composed, seen or not.

Transition counts and neighbour votes used as features for the training rows are cross-fitted
(taken from the other folds), so the trees do not learn to trust statistics that include the
row's own trace.

Both trees are saved as plain JSON (thresholds, features, leaves), never pickle; prediction walks
the arrays directly, so a plan costs well under a millisecond and every decision prints as rules.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

PLANNER_FILE = "planner.json"
FORMAT_VERSION = 2
KIND = "amo.tree_planner"
STOP = "<stop>"
START = "<start>"
MISSING_SCORE = -1000.0  # an agent the current router index does not score
NO_MENTION = 2.0  # mention position of an agent whose name the prompt does not mention (positions are 0..1)
_ORDER_CUES = ("then", "after", "before", "first", "finally", "and", "also", "next")
_TREE_KEYS = ("left", "right", "feature", "threshold", "value")


class PlannerFormatError(ValueError):
    """A planner file that is not a whole, consistent planner."""


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def text_features(prompt: str) -> list[float]:
    words = _words(prompt)
    return [float(len(words))] + [float(words.count(cue)) for cue in _ORDER_CUES]


TEXT_FEATURE_NAMES = ["n_words"] + [f"count_{cue}" for cue in _ORDER_CUES]
STOP_FEATURES = ["step", "separator", "n_above", "n_above_not_run", "best_not_run_margin",
                 "previous_margin", "stop_rate_after_previous", "previous_seen", "stop_rate_after_last_two",
                 "last_two_seen", "neighbour_similarity", "neighbour_stop_vote", "neighbour_longer_vote",
                 "nearest_remaining_steps", *TEXT_FEATURE_NAMES]
NEXT_FEATURES = ["step", "score", "margin", "rank", "gap_to_top", "rank_among_not_run", "times_ran",
                 "is_previous", "transition_rate", "transition_count", "transition_rate_after_last_two",
                 "agent_trace_count",
                 "mention_position", "mention_after_previous", "mention_share", "n_above",
                 "neighbour_similarity", "neighbour_step_vote", "neighbour_follow_vote", "neighbour_path_vote",
                 "nearest_has_it_here"]


def _pair(history: Sequence[str]) -> str:
    """The key of the last two steps in the second-order transition table."""
    return ">".join(([START, START] + list(history))[-2:])


def _stem(word: str) -> str:
    return word[:5]


@lru_cache(maxsize=65536)
def name_tokens(agent_id: str) -> tuple[str, ...]:
    """Stems of the words in an agent id (`file_write`, `getHealthWorkforce`), 4+ letters."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", agent_id)
    return tuple(sorted({_stem(w) for w in _words(spaced.replace("_", " ")) if len(w) >= 4}))


@dataclass(frozen=True)
class Plan:
    path: list[str]
    rules: list[list[str]]  # per step, the tests that led to its decisions

    @property
    def abstained(self) -> bool:
        return not self.path


class _Prompt:
    """One prompt's inputs, arranged once for all steps of a plan (or of a training trace)."""

    def __init__(self, prompt: str, scores: np.ndarray, separator: float, ids: Sequence[str],
                 column: Mapping[str, int]) -> None:
        self.scores, self.separator, self.ids, self.column = scores, separator, ids, column
        words = _words(prompt)
        self.n_words = max(len(words), 1)
        self.first: dict[str, int] = {}
        for i, word in enumerate(words):
            self.first.setdefault(_stem(word), i)
        self.text = text_features(prompt)
        self.above = np.flatnonzero(scores > separator)
        self.ascending = np.sort(scores)  # an agent's rank: how many score above it
        self.top = float(self.ascending[-1]) if len(scores) else 0.0
        self._mention: dict[str, tuple[float, float]] = {}
        self.near: list[tuple[float, list[str]]] = []  # (weight, path) of the nearest training prompts
        self.near_similarity = 0.0
        self.path_vote: Counter[str] = Counter()
        self._votes: dict[tuple[int, str], tuple[Counter[str], Counter[str]]] = {}

    def set_neighbours(self, similarities: np.ndarray, paths: Sequence[list[str]]) -> None:
        """The nearest training prompts, weighted by their cosine similarity (best first)."""
        weights = np.clip(similarities, 1e-6, None)
        weights = weights / weights.sum() if len(weights) else weights
        self.near = list(zip(weights.tolist(), paths))
        self.near_similarity = float(similarities[0]) if len(similarities) else 0.0
        for w, path in self.near:
            for agent in set(path):
                self.path_vote[agent] += w

    def step_votes(self, step: int, previous: str) -> tuple[Counter[str], Counter[str]]:
        """Weighted votes of the neighbours for the agent at `step`, and for the agent that follows
        `previous` anywhere in their paths."""
        key = (step, previous)
        if key in self._votes:
            return self._votes[key]
        at, follow = Counter(), Counter()
        for w, path in self.near:
            if step < len(path):
                at[path[step]] += w
            for a, b in zip([START, *path], path):
                if a == previous:
                    follow[b] += w
                    break
        self._votes[key] = (at, follow)
        return at, follow

    def score(self, agent: str) -> float:
        col = self.column.get(agent)
        return float(self.scores[col]) if col is not None else MISSING_SCORE

    def mention(self, agent: str) -> tuple[float, float]:
        """(first position of the agent's name in the prompt, 0..1, or NO_MENTION; share of its
        name words the prompt contains)."""
        if agent not in self._mention:
            tokens = name_tokens(agent)
            hits = [self.first[t] for t in tokens if t in self.first]
            position = min(hits) / self.n_words if hits else NO_MENTION
            self._mention[agent] = (position, len(hits) / len(tokens) if tokens else 0.0)
        return self._mention[agent]


class TreePlanner:
    """Scikit-learn-style: `fit(...)` returns self; learned state ends in `_`."""

    def __init__(self, pca_dims: int = 16, max_depth: int = 12, min_samples_leaf: int = 2,
                 max_path_len: int = 4, seed: int = 0, candidates: int = 10, folds: int = 5,
                 next_max_depth: int = 8, next_min_samples_leaf: int = 10, min_next: float = 0.0,
                 neighbours: int = 10) -> None:
        self.pca_dims = pca_dims
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.next_max_depth = next_max_depth
        self.next_min_samples_leaf = next_min_samples_leaf
        self.min_next = min_next
        self.neighbours = neighbours
        self.max_path_len = max_path_len
        self.seed = seed
        self.candidates = candidates
        self.folds = folds

    # -- features -------------------------------------------------------------------------
    def _stop_row(self, ctx: _Prompt, reduced: np.ndarray, step: int, history: list[str],
                  transitions: Mapping[str, Mapping[str, int]]) -> list[float]:
        previous = history[-1] if history else START
        ran = set(history)
        not_run = [ctx.scores[i] for i in ctx.above if ctx.ids[i] not in ran]
        after, after_two = transitions.get(previous, {}), transitions.get(_pair(history), {})
        total, total_two = sum(after.values()), sum(after_two.values())
        return [float(step), ctx.separator, float(len(ctx.above)), float(len(not_run)),
                (max(not_run) - ctx.separator) if not_run else -1.0,
                (ctx.score(previous) - ctx.separator) if history else 0.0,
                after.get(STOP, 0) / total if total else -1.0, float(total),
                after_two.get(STOP, 0) / total_two if total_two else -1.0, float(total_two),
                ctx.near_similarity, sum(w for w, p in ctx.near if len(p) == step),
                sum(w for w, p in ctx.near if len(p) > step),
                float(len(ctx.near[0][1]) - step) if ctx.near else 0.0,
                *ctx.text, *reduced.tolist()]

    def _candidates(self, ctx: _Prompt, history: list[str],
                    transitions: Mapping[str, Mapping[str, int]]) -> list[str]:
        """The router's top agents, the agents that followed the previous one in training, the
        agents that already ran (a path may call an agent again), and the agents the nearest
        training prompts call at this step or after the previous agent."""
        k = min(self.candidates, len(ctx.scores))
        top = np.argpartition(-ctx.scores, k - 1)[:k] if k else np.array([], dtype=int)
        chosen = [ctx.ids[i] for i in top[np.argsort(-ctx.scores[top], kind="stable")]]
        after = transitions.get(history[-1] if history else START, {})
        chosen += [a for a, _ in sorted(after.items(), key=lambda kv: (-kv[1], kv[0]))[: self.candidates]
                   if a != STOP]
        chosen += history
        at, follow = ctx.step_votes(len(history), history[-1] if history else START)
        chosen += [*at, *follow]
        return [a for a in dict.fromkeys(chosen) if a in ctx.column]

    def _next_rows(self, ctx: _Prompt, step: int, history: list[str], candidates: list[str],
                   transitions: Mapping[str, Mapping[str, int]], counts: Mapping[str, int]) -> list[list[float]]:
        previous = history[-1] if history else START
        after, after_two = transitions.get(previous, {}), transitions.get(_pair(history), {})
        total, total_two = sum(after.values()), sum(after_two.values())
        ran = Counter(history)
        previous_at = ctx.mention(previous)[0] if history else 0.0
        cand_scores = [ctx.score(a) for a in candidates]
        ranks = (len(ctx.ascending) - np.searchsorted(ctx.ascending, cand_scores, side="right")).tolist()
        fresh_scores = [s for a, s in zip(candidates, cand_scores) if not ran[a]]
        at, follow = ctx.step_votes(step, previous)
        nearest = ctx.near[0][1] if ctx.near else []
        rows = []
        for a, s, rank in zip(candidates, cand_scores, ranks):
            fresh = not ran[a]
            position, share = ctx.mention(a)
            rows.append([
                float(step), s, s - ctx.separator, float(rank), ctx.top - s,
                float(sum(other > s for other in fresh_scores)) if fresh else -1.0, float(ran[a]),
                float(a == previous), after.get(a, 0) / total if total else 0.0, float(after.get(a, 0)),
                after_two.get(a, 0) / total_two if total_two else -1.0, float(counts.get(a, 0)),
                position, position - previous_at, share, float(len(ctx.above)),
                ctx.near_similarity, at[a], follow[a], ctx.path_vote[a],
                float(step < len(nearest) and nearest[step] == a)])
        return rows

    # -- fit ------------------------------------------------------------------------------
    def fit(self, prompts: Sequence[str], embeddings: np.ndarray,
            scores: Sequence[Mapping[str, float]] | np.ndarray, separators: Sequence[float],
            paths: Sequence[Sequence[str]], agents: Sequence[str]) -> TreePlanner:
        """Fit both trees on the traces. `scores` is one {agent: score} per prompt, or an
        (N, len(agents)) matrix in the order of `agents`."""
        from sklearn.decomposition import PCA

        ids = list(agents)
        column = {a: i for i, a in enumerate(ids)}
        matrix = _score_matrix(scores, ids)
        dims = min(self.pca_dims, embeddings.shape[0], embeddings.shape[1])
        self.pca_mean_ = embeddings.mean(axis=0).astype(np.float64)
        self.pca_components_ = np.zeros((0, embeddings.shape[1]))
        if dims:
            pca = PCA(n_components=dims, random_state=self.seed).fit(embeddings)
            self.pca_mean_ = pca.mean_.astype(np.float64)
            self.pca_components_ = pca.components_.astype(np.float64)
        self.stop_features_ = STOP_FEATURES + [f"prompt_pc{i}" for i in range(dims)]
        self.next_features_ = list(NEXT_FEATURES)
        paths = [list(p) for p in paths]
        self.transitions_, self.agent_counts_ = _transitions(paths)

        # Rounded as saved, so a loaded planner finds the same neighbours.
        self.neighbour_embeddings_ = np.round(_unit(embeddings), 5) if self.neighbours else np.zeros((0, 0))
        self.neighbour_paths_ = paths if self.neighbours else []

        fold_of = np.random.default_rng(self.seed).permutation(len(paths)) % max(self.folds, 2)
        held_out = {f: _transitions([p for p, g in zip(paths, fold_of) if g != f]) for f in set(fold_of.tolist())}
        stop_x, stop_y, next_x, next_y = [], [], [], []
        for prompt, emb, row, sep, path, fold in zip(prompts, embeddings, matrix, separators, paths, fold_of):
            transitions, counts = held_out[int(fold)]
            ctx = _Prompt(prompt, row, float(sep), ids, column)
            self._find_neighbours(ctx, emb, exclude=fold_of == fold)
            reduced = (emb - self.pca_mean_) @ self.pca_components_.T
            for step in range(len(path) + 1):
                if step == self.max_path_len:
                    break
                history = path[:step]
                stop_x.append(self._stop_row(ctx, reduced, step, history, transitions))
                stop_y.append(step == len(path))
                if step == len(path) or path[step] not in column:
                    continue
                candidates = self._candidates(ctx, history, transitions)
                if path[step] not in candidates:
                    candidates.append(path[step])
                next_x.extend(self._next_rows(ctx, step, history, candidates, transitions, counts))
                next_y.extend(a == path[step] for a in candidates)
        self.stop_tree_ = self._grow(np.array(stop_x), np.array(stop_y), self.max_depth, self.min_samples_leaf)
        self.next_tree_ = self._grow(np.array(next_x, dtype=np.float64).reshape(-1, len(NEXT_FEATURES)),
                                     np.array(next_y), self.next_max_depth, self.next_min_samples_leaf)
        return self

    def _grow(self, x: np.ndarray, y: np.ndarray, max_depth: int, min_samples_leaf: int) -> dict[str, list]:
        """A fitted binary tree as plain arrays; `value` is the share of positive rows in a node."""
        from sklearn.tree import DecisionTreeClassifier

        if len(x) == 0 or len(set(y.tolist())) < 2:
            return {"left": [-1], "right": [-1], "feature": [0], "threshold": [0.0],
                    "value": [float(y.mean()) if len(y) else 0.0]}
        tree = DecisionTreeClassifier(max_depth=max_depth, min_samples_leaf=min_samples_leaf,
                                      random_state=self.seed).fit(x, y.astype(int)).tree_
        value = tree.value[:, 0, :]
        return {"left": tree.children_left.tolist(), "right": tree.children_right.tolist(),
                "feature": [max(int(f), 0) for f in tree.feature], "threshold": tree.threshold.tolist(),
                "value": (value[:, 1] / value.sum(axis=1)).tolist()}

    def _find_neighbours(self, ctx: _Prompt, embedding: np.ndarray, exclude: np.ndarray | None = None) -> None:
        """The `neighbours` training prompts most similar to this one (in fit: from other folds)."""
        if not self.neighbours or not len(self.neighbour_paths_):
            return
        similarities = self.neighbour_embeddings_ @ _unit(embedding[None, :])[0]
        if exclude is not None:
            similarities = np.where(exclude, -np.inf, similarities)
        k = min(self.neighbours, int(np.isfinite(similarities).sum()))
        if k == 0:
            return
        top = np.argpartition(-similarities, k - 1)[:k]
        top = top[np.argsort(-similarities[top], kind="stable")]
        ctx.set_neighbours(similarities[top], [self.neighbour_paths_[i] for i in top])

    # -- predict --------------------------------------------------------------------------
    @staticmethod
    def _leaf(tree: Mapping[str, list], x: Sequence[float]) -> int:
        """The leaf that row x falls into (plain lists: faster than numpy for a dozen rows)."""
        left, right, feature, threshold = tree["left"], tree["right"], tree["feature"], tree["threshold"]
        node = 0
        while left[node] != -1:
            node = left[node] if x[feature[node]] <= threshold[node] else right[node]
        return node

    @staticmethod
    def _rules(tree: Mapping[str, list], names: Sequence[str], x: np.ndarray) -> list[str]:
        node, rules = 0, []
        while tree["left"][node] != -1:
            feature, threshold = tree["feature"][node], tree["threshold"][node]
            if x[feature] <= threshold:
                rules.append(f"{names[feature]} = {x[feature]:.4g} <= {threshold:.4g}")
                node = tree["left"][node]
            else:
                rules.append(f"{names[feature]} = {x[feature]:.4g} > {threshold:.4g}")
                node = tree["right"][node]
        return rules

    def plan_scores(self, prompt: str, embedding: np.ndarray, ids: Sequence[str], scores: np.ndarray,
                    explain: bool = True) -> Plan:
        """Plan from the router's score row: one score per agent of `ids`, the separator last."""
        column = self._column(ids)
        ctx = _Prompt(prompt, np.asarray(scores[:-1], dtype=np.float64), float(scores[-1]), ids, column)
        embedding = np.asarray(embedding, dtype=np.float64)
        reduced = (embedding - self.pca_mean_) @ self.pca_components_.T
        self._find_neighbours(ctx, embedding)
        path: list[str] = []
        rules: list[list[str]] = []
        for step in range(self.max_path_len):
            stop_x = self._stop_row(ctx, reduced, step, path, self.transitions_)
            p_stop = self.stop_tree_["value"][self._leaf(self.stop_tree_, stop_x)]
            why = ["stop tree:", *self._rules(self.stop_tree_, self.stop_features_, stop_x)] if explain else []
            candidates = self._candidates(ctx, path, self.transitions_) if p_stop <= 0.5 else []
            if not candidates:
                rules.append([*why, f"-> stop (P(stop) = {p_stop:.2f})"])
                break
            x = self._next_rows(ctx, step, path, candidates, self.transitions_, self.agent_counts_)
            p_next = [self.next_tree_["value"][self._leaf(self.next_tree_, row)] for row in x]
            best = max(range(len(x)), key=lambda i: (p_next[i], x[i][1]))  # router score breaks ties
            if p_next[best] < self.min_next:
                rules.append([*why, (f"-> stop (P(stop) = {p_stop:.2f}, but no candidate reaches P(next) = "
                                     f"{self.min_next:.2f}; best {candidates[best]} at {p_next[best]:.2f})")])
                break
            if explain:
                why += [f"-> continue (P(stop) = {p_stop:.2f})", f"next tree, candidate {candidates[best]}:",
                        *self._rules(self.next_tree_, self.next_features_, x[best]),
                        f"-> {candidates[best]} (P(next) = {p_next[best]:.2f}, best of {len(candidates)})"]
            rules.append(why)
            path.append(candidates[best])
        return Plan(path=path, rules=rules)

    def plan(self, prompt: str, embedding: np.ndarray, scores: Mapping[str, float], separator: float,
             explain: bool = True) -> Plan:
        """Plan from {agent: router score} and the separator's score."""
        ids = list(scores)
        return self.plan_scores(prompt, embedding, ids, np.array([*scores.values(), separator]), explain)

    def _column(self, ids: Sequence[str]) -> dict[str, int]:
        cached = getattr(self, "_column_cache", None)
        if cached is None or cached[0] is not ids:
            cached = (ids, {a: i for i, a in enumerate(ids)})
            if len(cached[1]) != len(ids):
                raise ValueError("agent ids given to the planner are not unique")
            self._column_cache = cached
        return cached[1]

    # -- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "kind": KIND,
                "params": {"pca_dims": self.pca_dims, "max_depth": self.max_depth,
                           "min_samples_leaf": self.min_samples_leaf, "max_path_len": self.max_path_len,
                           "seed": self.seed, "candidates": self.candidates, "folds": self.folds,
                           "next_max_depth": self.next_max_depth,
                           "next_min_samples_leaf": self.next_min_samples_leaf, "min_next": self.min_next,
                           "neighbours": self.neighbours},
                "pca": {"mean": self.pca_mean_.tolist(), "components": self.pca_components_.tolist()},
                "transitions": {a: dict(after) for a, after in self.transitions_.items()},
                "neighbours": {"embeddings": self.neighbour_embeddings_.tolist(),
                               "paths": [list(p) for p in self.neighbour_paths_]},
                "stop_tree": {"features": list(self.stop_features_), **{k: list(v) for k, v in self.stop_tree_.items()}},
                "next_tree": {"features": list(self.next_features_), **{k: list(v) for k, v in self.next_tree_.items()}}}

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / PLANNER_FILE).write_text(json.dumps(self.to_dict()) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = PLANNER_FILE) -> TreePlanner:
        try:
            if not isinstance(data, dict) or data.get("kind") != KIND:
                raise PlannerFormatError(f"not an amo tree planner (kind {KIND!r} expected)")
            if data.get("format_version") != FORMAT_VERSION:
                raise PlannerFormatError(f"format version {data.get('format_version')!r}, this amo reads "
                                         f"{FORMAT_VERSION}: refit it with `amo fit-planner`")
            planner = cls(**data["params"])
            planner.pca_mean_ = np.array(data["pca"]["mean"], dtype=np.float64)
            planner.pca_components_ = np.array(data["pca"]["components"], dtype=np.float64)
            if planner.pca_components_.size == 0:  # pca_dims 0: JSON keeps no shape for an empty matrix
                planner.pca_components_ = planner.pca_components_.reshape(0, len(planner.pca_mean_))
            planner.transitions_ = {str(a): {str(b): int(n) for b, n in after.items()}
                                    for a, after in data["transitions"].items()}
            planner.agent_counts_ = _incoming(planner.transitions_)
            planner.neighbour_embeddings_ = np.array(data["neighbours"]["embeddings"], dtype=np.float64)
            planner.neighbour_paths_ = [[str(a) for a in path] for path in data["neighbours"]["paths"]]
            planner.stop_features_ = [str(f) for f in data["stop_tree"]["features"]]
            planner.next_features_ = [str(f) for f in data["next_tree"]["features"]]
            planner.stop_tree_ = {k: list(data["stop_tree"][k]) for k in _TREE_KEYS}
            planner.next_tree_ = {k: list(data["next_tree"][k]) for k in _TREE_KEYS}
            planner._check()
        except PlannerFormatError as exc:
            raise PlannerFormatError(f"{source}: {exc}") from None
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise PlannerFormatError(f"{source}: malformed planner ({type(exc).__name__}: {exc})") from None
        return planner

    def _check(self) -> None:
        dims = self.pca_components_.shape[0] if self.pca_components_.ndim == 2 else -1
        if self.pca_components_.ndim != 2 or self.pca_mean_.shape != (self.pca_components_.shape[1],):
            raise PlannerFormatError("pca mean and components do not match")
        if len(self.neighbour_paths_) != len(self.neighbour_embeddings_) or (
                len(self.neighbour_paths_) and self.neighbour_embeddings_.shape[1:] != self.pca_mean_.shape):
            raise PlannerFormatError("neighbour embeddings and paths do not match")
        if self.stop_features_ != STOP_FEATURES + [f"prompt_pc{i}" for i in range(dims)]:
            raise PlannerFormatError("stop tree features are not the ones this amo computes")
        if self.next_features_ != NEXT_FEATURES:
            raise PlannerFormatError("next tree features are not the ones this amo computes")
        for name, tree, n_features in (("stop tree", self.stop_tree_, len(self.stop_features_)),
                                       ("next tree", self.next_tree_, len(self.next_features_))):
            nodes = len(tree["left"])
            if not nodes or any(len(tree[k]) != nodes for k in _TREE_KEYS):
                raise PlannerFormatError(f"{name}: arrays differ in length")
            for node in range(nodes):
                left, right = tree["left"][node], tree["right"][node]
                if not 0.0 <= float(tree["value"][node]) <= 1.0:
                    raise PlannerFormatError(f"{name} node {node}: value is not a probability")
                if left == -1 and right == -1:
                    continue
                if not (node < left < nodes and node < right < nodes
                        and 0 <= tree["feature"][node] < n_features
                        and np.isfinite(float(tree["threshold"][node]))):
                    raise PlannerFormatError(f"{name} node {node}: child, feature or threshold out of range")

    @classmethod
    def load(cls, directory: Path) -> TreePlanner:
        path = directory / PLANNER_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PlannerFormatError(f"{path}: cannot read planner: {exc}") from None
        return cls.from_dict(data, str(path))


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)


def _score_matrix(scores: Sequence[Mapping[str, float]] | np.ndarray, ids: Sequence[str]) -> np.ndarray:
    if isinstance(scores, np.ndarray):
        if scores.ndim != 2 or scores.shape[1] != len(ids):
            raise ValueError(f"score matrix of shape {scores.shape}, expected (N, {len(ids)})")
        return scores.astype(np.float64)
    return np.array([[s.get(a, MISSING_SCORE) for a in ids] for s in scores], dtype=np.float64)


def _incoming(transitions: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for previous, after in transitions.items():
        if ">" not in previous:
            counts.update({a: n for a, n in after.items() if a != STOP})
    return dict(counts)


def _transitions(paths: Sequence[Sequence[str]]) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """{previous: {next: count}} over the paths, START and STOP included, for the previous agent
    and for the last two ("a>b"); and how often each agent appears."""
    table: dict[str, Counter[str]] = defaultdict(Counter)
    for path in paths:
        for step, b in enumerate([*path, STOP]):
            table[path[step - 1] if step else START][b] += 1
            table[_pair(path[:step])][b] += 1
    transitions = {a: dict(sorted(after.items())) for a, after in sorted(table.items())}
    return transitions, _incoming(transitions)
