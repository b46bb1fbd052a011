"""The planner's features: one prompt's inputs (`_Prompt`), its text cues, and the rows of the stop,
next and rerank trees.

Each row builder computes a dict {feature name: value} and emits it in the order of its name list
(`STOP_FEATURES`, `NEXT_FEATURES`, `RERANK_FEATURES`), after checking that the dict's keys are
exactly those names: a value cannot land under another feature's name.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from typing import TypeVar

import numpy as np

STOP = "<stop>"
START = "<start>"
MISSING_SCORE = -1000.0  # an agent the current router index does not score
NO_MENTION = 2.0  # mention position of an agent whose name the prompt does not mention (positions are 0..1)
_ORDER_CUES = ("then", "after", "before", "first", "finally", "and", "also", "next")

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
_GAP_OF = ("log_prob", "min_agent_vote", "proposer_share", "mean_margin")  # minus the best candidate's value
RERANK_FEATURES = ["from_decoder", "proposers", "proposer_share", "first_proposer_rank", "first_proposer_similarity",
                   "similarity_gap", "top_similarity", "length", "length_minus_decoded", "prefix_shared_with_decoded",
                   "mean_margin", "min_margin", "n_above_not_in_path", "log_prob", "min_p_next", "mean_p_next",
                   "p_stop_at_end", "max_p_stop_before_end", "min_transition_count", "mean_transition_rate",
                   "path_count", "mention_share", "mentions_in_order", "min_agent_vote", "mean_agent_vote",
                   "min_link_vote", "length_vote", "worst_agent_rank", "overlap_with_decoded",
                   *(f"{name}_gap" for name in _GAP_OF)]


def _keys(names: Sequence[str]) -> frozenset[str]:
    keys = frozenset(names)
    if len(keys) != len(names):
        raise ValueError(f"feature names repeat: {sorted(n for n, c in Counter(names).items() if c > 1)}")
    return keys


_TEXT_KEYS = _keys(TEXT_FEATURE_NAMES)
_STOP_KEYS = _keys(STOP_FEATURES)
_NEXT_KEYS = _keys(NEXT_FEATURES)
_RERANK_KEYS = _keys(RERANK_FEATURES)


def ordered(values: Mapping[str, float], names: Sequence[str], keys: frozenset[str]) -> list[float]:
    """`values` as a row in the order of `names`; `keys` is `frozenset(names)`, and the values must
    name exactly those features."""
    if values.keys() != keys:
        raise RuntimeError(f"feature row: missing {sorted(keys - values.keys())}, "
                           f"unexpected {sorted(values.keys() - keys)}")
    return [values[name] for name in names]


def stop_feature_names(dims: int) -> list[str]:
    """The stop tree's features: `STOP_FEATURES`, then the prompt embedding's `dims` PCA components."""
    return STOP_FEATURES + [f"prompt_pc{i}" for i in range(dims)]


_K = TypeVar("_K")


class _Votes(dict[_K, float]):
    """Weighted votes: a missing key reads 0.0 and is not added (Counter's rule, with float counts)."""

    def __missing__(self, key: _K) -> float:
        return 0.0


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def text_values(prompt: str) -> dict[str, float]:
    """{name in TEXT_FEATURE_NAMES: value}: the prompt's length in words and its order cues."""
    words = _words(prompt)
    return {"n_words": float(len(words)), **{f"count_{cue}": float(words.count(cue)) for cue in _ORDER_CUES}}


def text_features(prompt: str) -> list[float]:
    return ordered(text_values(prompt), TEXT_FEATURE_NAMES, _TEXT_KEYS)


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
        self.text = text_values(prompt)
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


def stop_row(ctx: _Prompt, reduced: np.ndarray, step: int, history: list[str],
             transitions: Mapping[str, Mapping[str, int]]) -> list[float]:
    """The stop tree's row after `history`: `STOP_FEATURES`, then the reduced prompt embedding."""
    previous = history[-1] if history else START
    ran = set(history)
    not_run = [ctx.scores[i] for i in ctx.above if ctx.ids[i] not in ran]
    after, after_two = transitions.get(previous, {}), transitions.get(_pair(history), {})
    total, total_two = ctx.total(after), ctx.total(after_two)
    values: dict[str, float] = {
        "step": float(step),
        "separator": ctx.separator,
        "n_above": float(len(ctx.above)),
        "n_above_not_run": float(len(not_run)),
        "best_not_run_margin": (max(not_run) - ctx.separator) if not_run else -1.0,
        "previous_margin": (ctx.score(previous) - ctx.separator) if history else 0.0,
        "stop_rate_after_previous": after.get(STOP, 0) / total if total else -1.0,
        "previous_seen": float(total),
        "stop_rate_after_last_two": after_two.get(STOP, 0) / total_two if total_two else -1.0,
        "last_two_seen": float(total_two),
        "neighbour_similarity": ctx.near_similarity,
        "neighbour_stop_vote": sum(w for w, p in ctx.near if len(p) == step),
        "neighbour_longer_vote": sum(w for w, p in ctx.near if len(p) > step),
        "nearest_remaining_steps": float(len(ctx.near[0][1]) - step) if ctx.near else 0.0,
        **ctx.text,
    }
    return [*ordered(values, STOP_FEATURES, _STOP_KEYS), *reduced.tolist()]


def next_rows(ctx: _Prompt, step: int, history: list[str], candidates: list[str],
              transitions: Mapping[str, Mapping[str, int]], counts: Mapping[str, int],
              only: str | None = None) -> list[list[float]]:
    """The next tree's rows (`NEXT_FEATURES`): one per candidate (or only the row of candidate
    `only`, among the same candidates)."""
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
        values: dict[str, float] = {
            "step": float(step),
            "score": s,
            "margin": s - ctx.separator,
            "rank": float(rank),
            "gap_to_top": ctx.top - s,
            "rank_among_not_run": float(sum(other > s for other in fresh_scores)) if fresh else -1.0,
            "times_ran": float(ran[a]),
            "is_previous": float(a == previous),
            "transition_rate": after.get(a, 0) / total if total else 0.0,
            "transition_count": float(after.get(a, 0)),
            "transition_rate_after_last_two": after_two.get(a, 0) / total_two if total_two else -1.0,
            "agent_trace_count": float(counts.get(a, 0)),
            "mention_position": position,
            "mention_after_previous": position - previous_at,
            "mention_share": share,
            "n_above": float(len(ctx.above)),
            "neighbour_similarity": ctx.near_similarity,
            "neighbour_step_vote": at[a],
            "neighbour_follow_vote": follow[a],
            "neighbour_path_vote": ctx.path_vote[a],
            "nearest_has_it_here": float(step < len(nearest) and nearest[step] == a),
        }
        rows.append(ordered(values, NEXT_FEATURES, _NEXT_KEYS))
    return rows


@dataclass(frozen=True)
class PathView:
    """What the stop and next trees say along one candidate path."""

    log_prob: float  # of the whole path, stop at its end included
    p_nexts: list[float]  # P(next) of each of its agents
    p_stops: list[float]  # P(stop) before each of its agents
    p_stop_at_end: float  # P(stop) after its last agent


def rerank_rows(ctx: _Prompt, decoded: list[str], candidates: Sequence[list[str]],
                proposed: Mapping[tuple[str, ...], Sequence[tuple[int, float]]],
                view: Callable[[list[str]], PathView], transitions: Mapping[str, Mapping[str, int]],
                transition_totals: Mapping[str, int], path_counts: Mapping[tuple[str, ...], int]) -> list[list[float]]:
    """The rerank tree's rows (`RERANK_FEATURES`), one per candidate path (`decoded` is the
    decoder's path, the first candidate; `proposed` gives each neighbour path's (rank,
    similarity) proposers; `view(path)` the decoder's probabilities along a path)."""
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
    rows: list[dict[str, float]] = []
    for path in candidates:
        by = proposed.get(tuple(path), [])
        first_rank, first_similarity = by[0] if by else (len(ctx.proposals), -1.0)
        margins = [ctx.score(a) - ctx.separator for a in path]
        members = set(path)
        probs = view(path)
        p_nexts, p_stops = probs.p_nexts, probs.p_stops
        chain = [START, *path, STOP]
        counts = [transitions.get(a, {}).get(b, 0) for a, b in pairwise(chain)]
        rates = [n / max(transition_totals.get(a, 0), 1) for n, a in zip(counts, chain)]
        named = [m for m in (ctx.mention(a)[0] for a in path) if m != NO_MENTION]
        shared = next((i for i, (a, b) in enumerate(zip(path, decoded)) if a != b), min(len(path), len(decoded)))
        rows.append({
            "from_decoder": float(path is decoded),
            "proposers": float(len(by)),
            "proposer_share": sum(max(s, 0.0) for _, s in by) / total,
            "first_proposer_rank": float(first_rank),
            "first_proposer_similarity": first_similarity,
            "similarity_gap": top_similarity - first_similarity if by else 2.0,
            "top_similarity": top_similarity,
            "length": float(len(path)),
            "length_minus_decoded": float(len(path) - len(decoded)),
            "prefix_shared_with_decoded": float(shared),
            "mean_margin": sum(margins) / len(margins) if margins else 0.0,
            "min_margin": min(margins) if margins else 0.0,
            "n_above_not_in_path": float(sum(ctx.ids[i] not in members for i in ctx.above)),
            "log_prob": probs.log_prob,
            "min_p_next": min(p_nexts) if p_nexts else 1.0,
            "mean_p_next": sum(p_nexts) / len(p_nexts) if p_nexts else 1.0,
            "p_stop_at_end": probs.p_stop_at_end,
            "max_p_stop_before_end": max(p_stops) if p_stops else 0.0,
            "min_transition_count": float(min(counts)),
            "mean_transition_rate": sum(rates) / len(rates),
            "path_count": float(path_counts.get(tuple(path), 0)),
            "mention_share": len(named) / len(path) if path else 0.0,
            "mentions_in_order": float(named == sorted(named)),
            "min_agent_vote": min((agent_vote[a] for a in path), default=0.0),
            "mean_agent_vote": sum(agent_vote[a] for a in path) / len(path) if path else 0.0,
            "min_link_vote": min(link_vote[pair] for pair in pairwise([START, *path, STOP])),
            "length_vote": length_vote[len(path)],
            "worst_agent_rank": float(max(ctx.rank(a) for a in path)) if path else 0.0,
            "overlap_with_decoded": len(members & set(decoded)) / max(len(members | set(decoded)), 1),
        })
    best = {name: max(values[name] for values in rows) for name in _GAP_OF}
    for values in rows:
        values.update({f"{name}_gap": values[name] - best[name] for name in _GAP_OF})
    return [ordered(values, RERANK_FEATURES, _RERANK_KEYS) for values in rows]
