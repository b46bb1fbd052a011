"""The planner: decision trees, fitted on end-to-end traces, that pick the ordered agent path.

A path is first decoded step by step. At each step the *stop tree* decides whether the path ends here,
from prompt-level features (a PCA reduction of the prompt embedding, text cues, the router's
separator and how many agents are above it and not yet run, what ran so far). If it goes on, the
*next tree* scores each candidate agent on agent-agnostic features: the candidate's router score,
rank and gap to the separator, whether and how often it already ran, how often it followed the
previous agent (and the last two) in the training traces, where the prompt mentions its name,
and, with `neighbours > 0`, how the paths of the most similar training prompts vote for it. The
best-scoring candidate runs next. No feature is tied to a fixed agent list, so an agent that no
training trace contains is planned through its router score, and any ordered path can be
composed, seen or not.

With `rerank_neighbours > 0` the decoded path is one candidate among the whole paths of the most
similar training prompts, and a third tree, the *rerank tree*, picks the plan among them from
path-level, agent-agnostic features: whether the decoder produced it, how many neighbours share
it and how similar the first of them is, the router margins of its agents, the decoder's own
probabilities along it (the stop and next trees scoring each step), transition counts along it,
how often the path occurs in training and whether the prompt names its agents in that order.
Decoding keeps unseen paths reachable; the neighbours' paths recover whole paths that step-by-step
decoding loses.

Transition counts and neighbour votes used as features for the training rows are cross-fitted
(taken from the other folds), so the trees do not learn to trust statistics that include the
row's own trace; the rerank tree's training rows come from stop and next trees fitted without
the row's fold.

All trees are saved as plain JSON (thresholds, features, leaves), never pickle; prediction walks
the arrays directly, so a plan costs well under a millisecond and every decision prints as rules.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

PLANNER_FILE = "planner.json"
FORMAT_VERSION = 3
KIND = "amo.tree_planner"
STOP = "<stop>"
START = "<start>"
MISSING_SCORE = -1000.0  # an agent the current router index does not score
NO_MENTION = 2.0  # mention position of an agent whose name the prompt does not mention (positions are 0..1)
LOG_FLOOR = 1e-3  # probabilities below this count as this in a path's log-probability
_ORDER_CUES = ("then", "after", "before", "first", "finally", "and", "also", "next")
_TREE_KEYS = ("left", "right", "feature", "threshold", "value")


_K = TypeVar("_K")


class _Votes(dict[_K, float]):
    """Weighted votes: a missing key reads 0.0 and is not added (Counter's rule, with float counts)."""

    def __missing__(self, key: _K) -> float:
        return 0.0


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
RERANK_FEATURES = ["from_decoder", "proposers", "proposer_share", "first_proposer_rank", "first_proposer_similarity",
                   "similarity_gap", "top_similarity", "length", "length_minus_decoded", "prefix_shared_with_decoded",
                   "mean_margin", "min_margin", "n_above_not_in_path", "log_prob", "min_p_next", "mean_p_next",
                   "p_stop_at_end", "max_p_stop_before_end", "min_transition_count", "mean_transition_rate",
                   "path_count", "mention_share", "mentions_in_order", "min_agent_vote", "mean_agent_vote",
                   "min_link_vote", "length_vote", "worst_agent_rank", "overlap_with_decoded",
                   "log_prob_gap", "min_agent_vote_gap", "proposer_share_gap", "mean_margin_gap"]
_GAP_OF = ("log_prob", "min_agent_vote", "proposer_share", "mean_margin")  # minus the best candidate's value


def _pair(history: Sequence[str]) -> str:
    """The key of the last two steps in the second-order transition table."""
    return ">".join([START, START, *history][-2:])


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
    choice: list[str] = field(default_factory=list)  # the rerank tree's tests that picked the path

    @property
    def abstained(self) -> bool:
        return not self.path


@dataclass
class _Step:
    """What the stop and next trees say after one path prefix of one prompt."""

    p_stop: float
    stop_x: list[float]
    candidates: list[str] | None = None
    p_next: dict[str, float] = field(default_factory=dict)


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
        self.above: list[int] = np.flatnonzero(scores > separator).tolist()
        self.ascending = np.sort(scores)  # an agent's rank: how many score above it
        self.top = float(self.ascending[-1]) if len(scores) else 0.0
        self._mention: dict[str, tuple[float, float]] = {}
        self.near: list[tuple[float, list[str]]] = []  # (weight, path) of the nearest training prompts
        self.near_similarity = 0.0
        self.path_vote: _Votes[str] = _Votes()
        self.proposals: list[tuple[float, list[str]]] = []  # (similarity, path): candidate whole paths
        self.router_top: list[str] | None = None
        self._totals: dict[int, tuple[Mapping[str, int], int]] = {}
        self.followers: dict[str, list[str]] = {}  # previous agent -> the agents that most often followed it
        self._votes: dict[tuple[int, str], tuple[_Votes[str], _Votes[str]]] = {}

    def set_neighbours(self, similarities: np.ndarray, paths: Sequence[list[str]]) -> None:
        """The nearest training prompts, weighted by their cosine similarity (best first)."""
        weights = np.clip(similarities, 1e-6, None)
        weights = weights / weights.sum() if len(weights) else weights
        self.near = list(zip(weights.tolist(), paths))
        self.near_similarity = float(similarities[0]) if len(similarities) else 0.0
        for w, path in self.near:
            for agent in set(path):
                self.path_vote[agent] += w

    def step_votes(self, step: int, previous: str) -> tuple[_Votes[str], _Votes[str]]:
        """Weighted votes of the neighbours for the agent at `step`, and for the agent that follows
        `previous` anywhere in their paths."""
        key = (step, previous)
        if key in self._votes:
            return self._votes[key]
        at: _Votes[str] = _Votes()
        follow: _Votes[str] = _Votes()
        for w, path in self.near:
            if step < len(path):
                at[path[step]] += w
            for a, b in zip([START, *path], path):
                if a == previous:
                    follow[b] += w
                    break
        self._votes[key] = (at, follow)
        return at, follow

    def total(self, after: Mapping[str, int]) -> int:
        """The sum of a transition table row (memoised: a prompt's plan reads the same rows often)."""
        key = id(after)
        if key not in self._totals:
            self._totals[key] = (after, sum(after.values()))  # keeps `after` alive, so its id stays its own
        return self._totals[key][1]

    def rank(self, agent: str) -> int:
        """How many agents the router scores above this one."""
        return int(len(self.ascending) - np.searchsorted(self.ascending, self.score(agent), side="right"))

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
                 neighbours: int = 10, rerank_neighbours: int = 0, rerank_max_depth: int = 6,
                 rerank_min_samples_leaf: int = 10, follow_min_traces: int = 0) -> None:
        self.pca_dims = pca_dims
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.next_max_depth = next_max_depth
        self.next_min_samples_leaf = next_min_samples_leaf
        self.min_next = min_next
        self.neighbours = neighbours
        self.rerank_neighbours = rerank_neighbours
        self.rerank_max_depth = rerank_max_depth
        self.rerank_min_samples_leaf = rerank_min_samples_leaf
        self.follow_min_traces = follow_min_traces
        self.max_path_len = max_path_len
        self.seed = seed
        self.candidates = candidates
        self.folds = folds

    @classmethod
    def from_params(cls, params: Any) -> TreePlanner:
        """An unfitted planner from params.yaml's `planner` section (amo.config.PlannerParams)."""
        return cls(**params.model_dump())

    # -- features -------------------------------------------------------------------------
    def _stop_row(self, ctx: _Prompt, reduced: np.ndarray, step: int, history: list[str],
                  transitions: Mapping[str, Mapping[str, int]]) -> list[float]:
        previous = history[-1] if history else START
        ran = set(history)
        not_run = [ctx.scores[i] for i in ctx.above if ctx.ids[i] not in ran]
        after, after_two = transitions.get(previous, {}), transitions.get(_pair(history), {})
        total, total_two = ctx.total(after), ctx.total(after_two)
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
        if ctx.router_top is None:  # the same at every step of a prompt
            k = min(self.candidates, len(ctx.scores))
            top = np.argpartition(-ctx.scores, k - 1)[:k] if k else np.array([], dtype=int)
            ctx.router_top = [ctx.ids[i] for i in top[np.argsort(-ctx.scores[top], kind="stable")]]
        previous = history[-1] if history else START
        if previous not in ctx.followers:
            after = transitions.get(previous, {})
            ctx.followers[previous] = [a for a, _ in sorted(after.items(), key=lambda kv: (-kv[1], kv[0]))
                                       [: self.candidates] if a != STOP]
        chosen = [*ctx.router_top, *ctx.followers[previous], *history]
        at, follow = ctx.step_votes(len(history), history[-1] if history else START)
        chosen += [*at, *follow]
        return [a for a in dict.fromkeys(chosen) if a in ctx.column]

    def _next_rows(self, ctx: _Prompt, step: int, history: list[str], candidates: list[str],
                   transitions: Mapping[str, Mapping[str, int]], counts: Mapping[str, int],
                   only: str | None = None) -> list[list[float]]:
        """One row per candidate (or only the row of candidate `only`, among the same candidates)."""
        previous = history[-1] if history else START
        after, after_two = transitions.get(previous, {}), transitions.get(_pair(history), {})
        total, total_two = ctx.total(after), ctx.total(after_two)
        ran = Counter(history)
        previous_at = ctx.mention(previous)[0] if history else 0.0
        cand_scores = [ctx.score(a) for a in candidates]
        fresh_scores = [s for a, s in zip(candidates, cand_scores) if not ran[a]]
        if only is not None:
            candidates, cand_scores = [only], [ctx.score(only)]
        ranks = (len(ctx.ascending) - np.searchsorted(ctx.ascending, cand_scores, side="right")).tolist()
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
        """Fit the trees on the traces. `scores` is one {agent: score} per prompt, or an
        (N, len(agents)) matrix in the order of `agents`."""
        ids = list(agents)
        matrix = _score_matrix(scores, ids)
        path_lists = [list(p) for p in paths]
        separators = [float(s) for s in separators]
        self._fit_decoder(prompts, embeddings, matrix, separators, path_lists, ids)
        self.rerank_tree_: dict[str, list[Any]] | None = None
        if self.rerank_neighbours:
            self._fit_reranker(prompts, embeddings, matrix, separators, path_lists, ids)
        return self

    def _fit_decoder(self, prompts: Sequence[str], embeddings: np.ndarray, matrix: np.ndarray,
                     separators: Sequence[float], paths: list[list[str]], ids: list[str]) -> None:
        """The stop and next trees, the PCA, the transition table and the stored neighbours."""
        from sklearn.decomposition import PCA

        column = {a: i for i, a in enumerate(ids)}
        dims = min(self.pca_dims, embeddings.shape[0], embeddings.shape[1])
        self.pca_mean_ = embeddings.mean(axis=0).astype(np.float64)
        self.pca_components_ = np.zeros((0, embeddings.shape[1]))
        if dims:
            pca = PCA(n_components=dims, random_state=self.seed).fit(embeddings)
            self.pca_mean_ = pca.mean_.astype(np.float64)
            self.pca_components_ = pca.components_.astype(np.float64)
        self.stop_features_ = STOP_FEATURES + [f"prompt_pc{i}" for i in range(dims)]
        self.next_features_ = list(NEXT_FEATURES)
        self.transitions_, self.agent_counts_ = _transitions(paths)
        self.transition_totals_ = {a: sum(after.values()) for a, after in self.transitions_.items()}

        # Rounded as saved, so a loaded planner finds the same neighbours.
        keep = self.neighbours or self.rerank_neighbours
        self.neighbour_embeddings_ = np.round(_unit(embeddings), 5) if keep else np.zeros((0, 0))
        self.neighbour_paths_ = paths if keep else []
        self.path_counts_ = Counter(tuple(p) for p in self.neighbour_paths_)

        fold_of = self._folds(len(paths))
        held_out = {f: _transitions([p for p, g in zip(paths, fold_of) if g != f]) for f in set(fold_of.tolist())}
        stop_x: list[list[float]] = []
        stop_y: list[bool] = []
        next_x: list[list[float]] = []
        next_y: list[bool] = []
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

    def _folds(self, n: int) -> np.ndarray:
        return np.random.default_rng(self.seed).permutation(n) % max(self.folds, 2)

    def _fit_reranker(self, prompts: Sequence[str], embeddings: np.ndarray, matrix: np.ndarray,
                      separators: Sequence[float], paths: list[list[str]], ids: list[str]) -> None:
        """The rerank tree, on candidate paths proposed and scored for each training trace by a
        decoder fitted without that trace's fold (so it learns how far to trust the decoder and the
        neighbours on prompts they have not seen)."""
        column = {a: i for i, a in enumerate(ids)}
        fold_of = self._folds(len(paths))
        x: list[list[float]] = []
        y: list[bool] = []
        for fold in sorted(set(fold_of.tolist())):
            rest, mine = np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)
            if not len(rest):
                continue
            decoder = TreePlanner(**self._params())
            decoder._fit_decoder([prompts[i] for i in rest.tolist()], embeddings[rest], matrix[rest],
                                 [separators[i] for i in rest.tolist()], [paths[i] for i in rest.tolist()], ids)
            for i in mine.tolist():
                ctx = _Prompt(prompts[i], matrix[i], float(separators[i]), ids, column)
                decoder._find_neighbours(ctx, embeddings[i])
                reduced = (embeddings[i] - decoder.pca_mean_) @ decoder.pca_components_.T
                candidates, rows, _ = decoder._rerank_rows(ctx, reduced, {})
                x.extend(rows)
                y.extend(c == paths[i] for c in candidates)
        self.rerank_features_ = list(RERANK_FEATURES)
        self.rerank_tree_ = self._grow(np.array(x, dtype=np.float64).reshape(-1, len(RERANK_FEATURES)),
                                       np.array(y), self.rerank_max_depth, self.rerank_min_samples_leaf)

    def _params(self) -> dict[str, Any]:
        return {"pca_dims": self.pca_dims, "max_depth": self.max_depth,
                "min_samples_leaf": self.min_samples_leaf, "max_path_len": self.max_path_len,
                "seed": self.seed, "candidates": self.candidates, "folds": self.folds,
                "next_max_depth": self.next_max_depth,
                "next_min_samples_leaf": self.next_min_samples_leaf, "min_next": self.min_next,
                "neighbours": self.neighbours, "rerank_neighbours": self.rerank_neighbours,
                "rerank_max_depth": self.rerank_max_depth, "rerank_min_samples_leaf": self.rerank_min_samples_leaf,
                "follow_min_traces": self.follow_min_traces}

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
        """The training prompts most similar to this one (in fit: from other folds): the first
        `neighbours` vote, the first `rerank_neighbours` propose their paths."""
        wanted = max(self.neighbours, self.rerank_neighbours)
        if not wanted or not len(self.neighbour_paths_):
            return
        similarities = self.neighbour_embeddings_ @ _unit(embedding[None, :])[0]
        if exclude is not None:
            similarities = np.where(exclude, -np.inf, similarities)
        k = min(wanted, int(np.isfinite(similarities).sum()))
        if k == 0:
            return
        top = np.argpartition(-similarities, k - 1)[:k]
        top = top[np.argsort(-similarities[top], kind="stable")]
        if self.neighbours:
            near = top[: self.neighbours]
            ctx.set_neighbours(similarities[near], [self.neighbour_paths_[i] for i in near])
        ctx.proposals = [(float(similarities[i]), self.neighbour_paths_[i]) for i in top[: self.rerank_neighbours]]

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
    def _rules(tree: Mapping[str, list], names: Sequence[str], x: Sequence[float]) -> list[str]:
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

    def _stop_at(self, ctx: _Prompt, reduced: np.ndarray, memo: dict, prefix: tuple[str, ...]) -> _Step:
        """The stop tree's view after `prefix` (memoised per prefix, as are the next tree's scores)."""
        step = memo.get(prefix)
        if step is None:
            stop_x = self._stop_row(ctx, reduced, len(prefix), list(prefix), self.transitions_)
            step = memo[prefix] = _Step(self.stop_tree_["value"][self._leaf(self.stop_tree_, stop_x)], stop_x)
        return step

    def _next_at(self, ctx: _Prompt, step: _Step, prefix: tuple[str, ...], agent: str | None = None) -> list[str]:
        """The next tree's P(next) after `prefix` for every candidate (agent None) or for `agent`
        alone, recorded in `step.p_next`; returns the candidates (`step.candidates`)."""
        if step.candidates is None:
            step.candidates = self._candidates(ctx, list(prefix), self.transitions_)
        candidates = step.candidates
        wanted = candidates if agent is None else [agent]
        if all(a in step.p_next for a in wanted):
            return candidates
        among = candidates if agent is None or agent in candidates else [*candidates, agent]
        rows = self._next_rows(ctx, len(prefix), list(prefix), among, self.transitions_, self.agent_counts_, agent)
        for a, row in zip(wanted, rows):
            step.p_next[a] = self.next_tree_["value"][self._leaf(self.next_tree_, row)]
        return candidates

    def _decode(self, ctx: _Prompt, reduced: np.ndarray, memo: dict) -> list[str]:
        """The greedy path: the stop tree ends it, else the next tree's best candidate runs next."""
        path: list[str] = []
        for _ in range(self.max_path_len):
            prefix = tuple(path)
            step = self._stop_at(ctx, reduced, memo, prefix)
            if step.p_stop > 0.5:
                break
            candidates = self._next_at(ctx, step, prefix)
            if not candidates:
                break
            best = max(candidates, key=lambda a: (step.p_next[a], ctx.score(a)))  # router score breaks ties
            if step.p_next[best] < self.min_next:
                break
            path.append(best)
        return path

    def _rerank_rows(self, ctx: _Prompt, reduced: np.ndarray, memo: dict,
                     explain: bool = False) -> tuple[list[list[str]], list[list[float]], list[str]]:
        """The candidate paths (the decoded one first, then the neighbours' paths, nearest first),
        their rerank features, and (with `explain`) where each came from."""
        decoded = self._decode(ctx, reduced, memo)
        proposed: dict[tuple[str, ...], list[tuple[int, float]]] = {}
        for rank, (similarity, path) in enumerate(ctx.proposals):
            if all(a in ctx.column for a in path):
                proposed.setdefault(tuple(path), []).append((rank, similarity))
        candidates = [decoded, *(list(p) for p in proposed if list(p) != decoded)]
        total = sum(max(s, 0.0) for s, _ in ctx.proposals) or 1.0
        top_similarity = ctx.proposals[0][0] if ctx.proposals else 0.0
        agent_vote: _Votes[str] = _Votes()
        link_vote: _Votes[tuple[str, str]] = _Votes()
        length_vote: _Votes[int] = _Votes()
        for similarity, path in ctx.proposals:
            weight = max(similarity, 0.0) / total
            for agent in dict.fromkeys(path):
                agent_vote[agent] += weight
            for link in dict.fromkeys(pairwise([START, *path, STOP])):
                link_vote[link] += weight
            length_vote[len(path)] += weight
        rows, origins = [], []
        for path in candidates:
            by = proposed.get(tuple(path), [])
            first_rank, first_similarity = by[0] if by else (len(ctx.proposals), -1.0)
            if explain:
                origins.append(", ".join((["decoded"] if path is decoded else [])
                                         + [f"neighbour {r + 1} ({s:.3f})" for r, s in by[:3]]
                                         + ([f"+{len(by) - 3} neighbours"] if len(by) > 3 else [])))
            margins = [ctx.score(a) - ctx.separator for a in path]
            members = set(path)
            log_prob, p_nexts, p_stops = 0.0, [], []
            for t in range(len(path) + 1):
                prefix = tuple(path[:t])
                step = self._stop_at(ctx, reduced, memo, prefix)
                if t == len(path):
                    break
                self._next_at(ctx, step, prefix, path[t])
                p_stops.append(step.p_stop)
                p_nexts.append(step.p_next[path[t]])
                log_prob += math.log(max(1.0 - step.p_stop, LOG_FLOOR)) + math.log(max(p_nexts[-1], LOG_FLOOR))
            log_prob += math.log(max(step.p_stop, LOG_FLOOR))
            chain = [START, *path, STOP]
            counts = [self.transitions_.get(a, {}).get(b, 0) for a, b in pairwise(chain)]
            rates = [n / max(self.transition_totals_.get(a, 0), 1) for n, a in zip(counts, chain)]
            named = [m for m in (ctx.mention(a)[0] for a in path) if m != NO_MENTION]
            shared = next((i for i, (a, b) in enumerate(zip(path, decoded)) if a != b), min(len(path), len(decoded)))
            rows.append([
                float(path is decoded), float(len(by)), sum(max(s, 0.0) for _, s in by) / total, float(first_rank),
                first_similarity, top_similarity - first_similarity if by else 2.0, top_similarity,
                float(len(path)), float(len(path) - len(decoded)), float(shared),
                sum(margins) / len(margins) if margins else 0.0, min(margins) if margins else 0.0,
                float(sum(ctx.ids[i] not in members for i in ctx.above)), log_prob,
                min(p_nexts) if p_nexts else 1.0, sum(p_nexts) / len(p_nexts) if p_nexts else 1.0, step.p_stop,
                max(p_stops) if p_stops else 0.0, float(min(counts)), sum(rates) / len(rates),
                float(self.path_counts_.get(tuple(path), 0)), len(named) / len(path) if path else 0.0,
                float(named == sorted(named)),
                min((agent_vote[a] for a in path), default=0.0),
                sum(agent_vote[a] for a in path) / len(path) if path else 0.0,
                min(link_vote[pair] for pair in pairwise([START, *path, STOP])), length_vote[len(path)],
                float(max(ctx.rank(a) for a in path)) if path else 0.0,
                len(members & set(decoded)) / max(len(members | set(decoded)), 1)])
        at = [RERANK_FEATURES.index(name) for name in _GAP_OF]
        best = [max(row[i] for row in rows) for i in at]
        for row in rows:
            row.extend(row[i] - b for i, b in zip(at, best))
        return candidates, rows, origins

    def _path_rules(self, ctx: _Prompt, reduced: np.ndarray, memo: dict, path: list[str],
                    decoded: bool) -> list[list[str]]:
        """Per step of `path`, the stop and next trees' tests and decisions along it."""
        rules = []
        for t in range(len(path) + 1):
            prefix = tuple(path[:t])
            step = self._stop_at(ctx, reduced, memo, prefix)
            why = ["stop tree:", *self._rules(self.stop_tree_, self.stop_features_, step.stop_x)]
            if t == len(path):
                if decoded and t == self.max_path_len:
                    break
                candidates = self._next_at(ctx, step, prefix)
                best = max(candidates, key=lambda a: (step.p_next[a], ctx.score(a)), default=None)
                if step.p_stop > 0.5 or best is None:
                    why.append(f"-> stop (P(stop) = {step.p_stop:.2f})")
                elif decoded:
                    why.append(f"-> stop (P(stop) = {step.p_stop:.2f}, but no candidate reaches P(next) = "
                               f"{self.min_next:.2f}; best {best} at {step.p_next[best]:.2f})")
                else:
                    why.append(f"-> stop (P(stop) = {step.p_stop:.2f}; the rerank tree's path ends here)")
                rules.append(why)
                break
            agent = path[t]
            candidates = self._next_at(ctx, step, prefix)
            row = self._next_rows(ctx, t, list(prefix), candidates if agent in candidates
                                  else [*candidates, agent], self.transitions_, self.agent_counts_, agent)[0]
            self._next_at(ctx, step, prefix, agent)
            rank = 1 + sum(step.p_next[a] > step.p_next[agent] for a in candidates if a != agent)
            n = len(set(candidates) | {agent})
            overruled = ", the rerank tree's path goes on" if step.p_stop > 0.5 else ""
            why += [f"-> continue (P(stop) = {step.p_stop:.2f}{overruled})", f"next tree, candidate {agent}:",
                    *self._rules(self.next_tree_, self.next_features_, row),
                    f"-> {agent} (P(next) = {step.p_next[agent]:.2f}, "
                    + (f"best of {n})" if rank == 1 else f"rank {rank} of {n}: the rerank tree's path)")]
            rules.append(why)
        return rules

    def plan_scores(self, prompt: str, embedding: np.ndarray, ids: Sequence[str], scores: np.ndarray,
                    explain: bool = True, selected: Sequence[str] | None = None) -> Plan:
        """Plan from the router's score row: one score per agent of `ids`, the separator last.

        With `selected` (the router's selection, best first), the plan follows the router: an
        abstained route gets no plan, and a top agent the trees leave out is put in when the
        traces hold fewer than `follow_min_traces` calls of it (a new or rarely seen agent the
        trees cannot know); otherwise the explanation says which evidence left it out."""
        if selected is not None and not selected:
            return Plan(path=[], rules=[["router abstained: no agent scores above the separator -> no plan"]])
        plan = self._plan_trees(prompt, embedding, ids, scores, explain)
        return plan if selected is None else self._follow(plan, selected[0])

    def _follow(self, plan: Plan, top: str) -> Plan:
        if top in plan.path:
            return plan
        seen = self.agent_counts_.get(top, 0)
        if seen >= self.follow_min_traces:
            why = (f"router's top agent {top} not planned: the trees know it from {seen} training calls "
                   "and chose this path")
            return Plan(plan.path, plan.rules, [*plan.choice, why])
        # Where the traces put it: first unless they end paths with it more often than they start with it.
        starts = self.transitions_.get(START, {}).get(top, 0)
        ends = self.transitions_.get(top, {}).get(STOP, 0)
        first = starts >= ends
        path = [top, *plan.path][: self.max_path_len] if first else [*plan.path, top][-self.max_path_len:]
        why = (f"router's top agent {top} added {'first' if first else 'last'}: {seen} training calls "
               f"(< follow_min_traces {self.follow_min_traces}), the trees cannot know it")
        return Plan(path, plan.rules, [*plan.choice, why])

    def _plan_trees(self, prompt: str, embedding: np.ndarray, ids: Sequence[str], scores: np.ndarray,
                    explain: bool) -> Plan:
        column = self._column(ids)
        ctx = _Prompt(prompt, np.asarray(scores[:-1], dtype=np.float64), float(scores[-1]), ids, column)
        embedding = np.asarray(embedding, dtype=np.float64)
        reduced = (embedding - self.pca_mean_) @ self.pca_components_.T
        self._find_neighbours(ctx, embedding)
        memo: dict[tuple[str, ...], _Step] = {}
        choice: list[str] = []
        if self.rerank_tree_ is None:
            path = self._decode(ctx, reduced, memo)
            best = 0
        else:
            candidates, rows, origins = self._rerank_rows(ctx, reduced, memo, explain)
            p = [self.rerank_tree_["value"][self._leaf(self.rerank_tree_, row)] for row in rows]
            best = max(range(len(rows)), key=p.__getitem__)  # ties: the decoded path, then the nearest neighbour's
            path = candidates[best]
            if explain:
                choice = ["candidate paths:", *(f"{i + 1}. {' -> '.join(c) or 'abstain'} [{o}] P(chosen) = {q:.2f}"
                                                for i, (c, o, q) in enumerate(zip(candidates, origins, p))),
                          f"rerank tree, candidate {best + 1}:",
                          *self._rules(self.rerank_tree_, self.rerank_features_, rows[best]),
                          f"-> candidate {best + 1} (P(chosen) = {p[best]:.2f}, best of {len(rows)})"]
        rules = self._path_rules(ctx, reduced, memo, path, decoded=best == 0) if explain else []
        return Plan(path=path, rules=rules, choice=choice)

    def plan(self, prompt: str, embedding: np.ndarray, scores: Mapping[str, float], separator: float,
             explain: bool = True, selected: Sequence[str] | None = None) -> Plan:
        """Plan from {agent: router score} and the separator's score."""
        ids = list(scores)
        return self.plan_scores(prompt, embedding, ids, np.array([*scores.values(), separator]), explain,
                                selected)

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
                "params": self._params(),
                "pca": {"mean": self.pca_mean_.tolist(), "components": self.pca_components_.tolist()},
                "transitions": {a: dict(after) for a, after in self.transitions_.items()},
                "neighbours": {"embeddings": self.neighbour_embeddings_.tolist(),
                               "paths": [list(p) for p in self.neighbour_paths_]},
                "stop_tree": {"features": list(self.stop_features_),
                              **{k: list(v) for k, v in self.stop_tree_.items()}},
                "next_tree": {"features": list(self.next_features_),
                              **{k: list(v) for k, v in self.next_tree_.items()}},
                "rerank_tree": None if self.rerank_tree_ is None else
                {"features": list(self.rerank_features_), **{k: list(v) for k, v in self.rerank_tree_.items()}}}

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
            planner.transition_totals_ = {a: sum(after.values()) for a, after in planner.transitions_.items()}
            planner.neighbour_embeddings_ = np.array(data["neighbours"]["embeddings"], dtype=np.float64)
            planner.neighbour_paths_ = [[str(a) for a in path] for path in data["neighbours"]["paths"]]
            planner.path_counts_ = Counter(tuple(p) for p in planner.neighbour_paths_)
            planner.stop_features_ = [str(f) for f in data["stop_tree"]["features"]]
            planner.next_features_ = [str(f) for f in data["next_tree"]["features"]]
            planner.stop_tree_ = {k: list(data["stop_tree"][k]) for k in _TREE_KEYS}
            planner.next_tree_ = {k: list(data["next_tree"][k]) for k in _TREE_KEYS}
            rerank = data["rerank_tree"]
            planner.rerank_tree_ = None if rerank is None else {k: list(rerank[k]) for k in _TREE_KEYS}
            planner.rerank_features_ = [] if rerank is None else [str(f) for f in rerank["features"]]
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
        if (self.rerank_tree_ is None) != (self.rerank_neighbours == 0):
            raise PlannerFormatError(f"rerank_neighbours is {self.rerank_neighbours} but the rerank tree is "
                                     f"{'missing' if self.rerank_tree_ is None else 'there'}")
        if self.rerank_tree_ is not None and self.rerank_features_ != RERANK_FEATURES:
            raise PlannerFormatError("rerank tree features are not the ones this amo computes")
        trees = [("stop tree", self.stop_tree_, len(self.stop_features_)),
                 ("next tree", self.next_tree_, len(self.next_features_))]
        if self.rerank_tree_ is not None:
            trees.append(("rerank tree", self.rerank_tree_, len(self.rerank_features_)))
        for name, tree, n_features in trees:
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
