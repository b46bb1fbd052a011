"""The planner estimator: `TreePlanner` fits the stop, next and rerank trees on traces, decodes and
reranks a plan for a prompt, explains it, and saves and loads itself as JSON (see `amo.planner`)."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from amo.planner.features import (
    MISSING_SCORE,
    NEXT_FEATURES,
    RERANK_FEATURES,
    START,
    STOP,
    PathView,
    _pair,
    _Prompt,
    next_rows,
    rerank_rows,
    stop_feature_names,
    stop_row,
)
from amo.planner.trees import PlannerFormatError, check_tree, grow, tree_from_dict, tree_to_dict
from amo.planner.trees import leaf as _leaf
from amo.planner.trees import rules as _rules

PLANNER_FILE = "planner.json"
FORMAT_VERSION = 3
KIND = "amo.tree_planner"
LOG_FLOOR = 1e-3  # probabilities below this count as this in a path's log-probability


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

    # -- decoding helpers -----------------------------------------------------------------
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
        self.stop_features_ = stop_feature_names(dims)
        self.next_features_ = list(NEXT_FEATURES)
        self.transitions_, self.agent_counts_ = _transitions(paths)
        self.repeating_: set[str] | None = {a for p in paths for a in set(p) if p.count(a) > 1}
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
                stop_x.append(stop_row(ctx, reduced, step, history, transitions))
                stop_y.append(step == len(path))
                if step == len(path) or path[step] not in column:
                    continue
                candidates = self._candidates(ctx, history, transitions)
                if path[step] not in candidates:
                    candidates.append(path[step])
                next_x.extend(next_rows(ctx, step, history, candidates, transitions, counts))
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
        return grow(x, y, max_depth, min_samples_leaf, self.seed)

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
    def _stop_at(self, ctx: _Prompt, reduced: np.ndarray, memo: dict, prefix: tuple[str, ...]) -> _Step:
        """The stop tree's view after `prefix` (memoised per prefix, as are the next tree's scores)."""
        step = memo.get(prefix)
        if step is None:
            stop_x = stop_row(ctx, reduced, len(prefix), list(prefix), self.transitions_)
            step = memo[prefix] = _Step(self.stop_tree_["value"][_leaf(self.stop_tree_, stop_x)], stop_x)
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
        rows = next_rows(ctx, len(prefix), list(prefix), among, self.transitions_, self.agent_counts_, agent)
        for a, row in zip(wanted, rows):
            step.p_next[a] = self.next_tree_["value"][_leaf(self.next_tree_, row)]
        return candidates

    def _decode(self, ctx: _Prompt, reduced: np.ndarray, memo: dict) -> list[str]:
        """The greedy path: the stop tree ends it, else the next tree's best candidate runs next.
        An agent runs again only as the traces run agents again (`_may_run_again`)."""
        path: list[str] = []
        for _ in range(self.max_path_len):
            prefix = tuple(path)
            step = self._stop_at(ctx, reduced, memo, prefix)
            if step.p_stop > 0.5:
                break
            candidates = self._next_at(ctx, step, prefix)
            candidates = [a for a in candidates if self._may_run_again(a, path)]
            if not candidates:
                break
            best = max(candidates, key=lambda a: (step.p_next[a], ctx.score(a)))  # router score breaks ties
            if step.p_next[best] < self.min_next:
                break
            path.append(best)
        return path

    def _may_run_again(self, agent: str, path: list[str]) -> bool:
        """Whether `agent` may be the next step of `path`: any agent not in it yet; the last one
        again only if a training trace calls an agent right after itself (`transitions_`); an
        earlier one only if some training trace calls that agent twice (`repeating_`; None, in a
        planner saved before it was recorded: allowed). The next tree scores a repeat from the
        router's score like any candidate: the demo planned `order_status -> order_status`."""
        if agent not in path:
            return True
        if agent == path[-1]:
            return bool(self.transitions_.get(agent, {}).get(agent))
        return self.repeating_ is None or agent in self.repeating_

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
        origins = []
        if explain:
            for path in candidates:
                by = proposed.get(tuple(path), [])
                origins.append(", ".join((["decoded"] if path is decoded else [])
                                         + [f"neighbour {r + 1} ({s:.3f})" for r, s in by[:3]]
                                         + ([f"+{len(by) - 3} neighbours"] if len(by) > 3 else [])))
        rows = rerank_rows(ctx, decoded, candidates, proposed, lambda path: self._path_view(ctx, reduced, memo, path),
                           self.transitions_, self.transition_totals_, self.path_counts_)
        return candidates, rows, origins

    def _path_view(self, ctx: _Prompt, reduced: np.ndarray, memo: dict, path: list[str]) -> PathView:
        """The stop and next trees' probabilities along `path`, and the path's log-probability."""
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
        return PathView(log_prob, p_nexts, p_stops, step.p_stop)

    def _path_rules(self, ctx: _Prompt, reduced: np.ndarray, memo: dict, path: list[str],
                    decoded: bool) -> list[list[str]]:
        """Per step of `path`, the stop and next trees' tests and decisions along it."""
        rules = []
        for t in range(len(path) + 1):
            prefix = tuple(path[:t])
            step = self._stop_at(ctx, reduced, memo, prefix)
            why = ["stop tree:", *_rules(self.stop_tree_, self.stop_features_, step.stop_x)]
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
            row = next_rows(ctx, t, list(prefix), candidates if agent in candidates
                                  else [*candidates, agent], self.transitions_, self.agent_counts_, agent)[0]
            self._next_at(ctx, step, prefix, agent)
            rank = 1 + sum(step.p_next[a] > step.p_next[agent] for a in candidates if a != agent)
            n = len(set(candidates) | {agent})
            overruled = ", the rerank tree's path goes on" if step.p_stop > 0.5 else ""
            why += [f"-> continue (P(stop) = {step.p_stop:.2f}{overruled})", f"next tree, candidate {agent}:",
                    *_rules(self.next_tree_, self.next_features_, row),
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
            p = [self.rerank_tree_["value"][_leaf(self.rerank_tree_, row)] for row in rows]
            best = max(range(len(rows)), key=p.__getitem__)  # ties: the decoded path, then the nearest neighbour's
            path = candidates[best]
            if explain:
                choice = ["candidate paths:", *(f"{i + 1}. {' -> '.join(c) or 'abstain'} [{o}] P(chosen) = {q:.2f}"
                                                for i, (c, o, q) in enumerate(zip(candidates, origins, p))),
                          f"rerank tree, candidate {best + 1}:",
                          *_rules(self.rerank_tree_, self.rerank_features_, rows[best]),
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
                "repeating": None if self.repeating_ is None else sorted(self.repeating_),
                "neighbours": {"embeddings": self.neighbour_embeddings_.tolist(),
                               "paths": [list(p) for p in self.neighbour_paths_]},
                "stop_tree": tree_to_dict(self.stop_tree_, self.stop_features_),
                "next_tree": tree_to_dict(self.next_tree_, self.next_features_),
                "rerank_tree": None if self.rerank_tree_ is None else
                tree_to_dict(self.rerank_tree_, self.rerank_features_)}

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
            repeating = data.get("repeating")  # absent in planners saved before it was recorded
            if repeating is not None and not (isinstance(repeating, list)
                                              and all(isinstance(a, str) for a in repeating)):
                raise PlannerFormatError("repeating is not a list of agent ids")
            planner.repeating_ = None if repeating is None else set(repeating)
            planner.transition_totals_ = {a: sum(after.values()) for a, after in planner.transitions_.items()}
            planner.neighbour_embeddings_ = np.array(data["neighbours"]["embeddings"], dtype=np.float64)
            planner.neighbour_paths_ = [[str(a) for a in path] for path in data["neighbours"]["paths"]]
            planner.path_counts_ = Counter(tuple(p) for p in planner.neighbour_paths_)
            planner.stop_features_ = [str(f) for f in data["stop_tree"]["features"]]
            planner.next_features_ = [str(f) for f in data["next_tree"]["features"]]
            planner.stop_tree_ = tree_from_dict(data["stop_tree"])
            planner.next_tree_ = tree_from_dict(data["next_tree"])
            rerank = data["rerank_tree"]
            planner.rerank_tree_ = None if rerank is None else tree_from_dict(rerank)
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
        if self.stop_features_ != stop_feature_names(dims):
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
            check_tree(name, tree, n_features)

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
