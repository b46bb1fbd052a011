"""Metrics shared by evaluation and benchmarks; pure functions over plain Python values."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from amo.data import RoutingExample
    from amo.routing import Route


def set_f1(predicted: Iterable[str], gold: Iterable[str]) -> float:
    """F1 between two sets; two empty sets agree perfectly (a correct abstention)."""
    p, g = set(predicted), set(gold)
    if not p and not g:
        return 1.0
    hits = len(p & g)
    return 0.0 if hits == 0 else 2 * hits / (len(p) + len(g))


def ndcg_at_k(ranked: Sequence[str], grades: dict[str, int], k: int = 5) -> float:
    gains = [grades.get(agent, 0) for agent in ranked[:k]]
    dcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted(grades.values(), reverse=True)[:k]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def links(path: Sequence[str]) -> list[tuple[str, str]]:
    return list(zip(path, path[1:]))


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def router_rows(routes: Sequence[Route], examples: Sequence[RoutingExample],
                rankings: Sequence[Sequence[str]]) -> dict[str, list[float]]:
    """Per test row, the value each router metric averages: in-scope accuracy and NDCG@5 per
    in-scope prompt, OOS recall per out-of-scope prompt, selection F1 per prompt. Two bundles
    routed on the same rows can then be compared row by row (the gate's paired test)."""
    in_scope = [i for i, e in enumerate(examples) if e.labels]

    def primary_hit(i: int) -> bool:
        top = max(examples[i].labels.values())
        return bool(routes[i].agents) and examples[i].labels.get(routes[i].agents[0][0]) == top

    return {
        "in_scope_accuracy": [float(primary_hit(i)) for i in in_scope],
        "oos_recall": [float(r.abstained) for r, e in zip(routes, examples) if not e.labels],
        "selection_f1": [set_f1([a for a, _ in r.agents], e.labels) for r, e in zip(routes, examples)],
        "ndcg_at_5": [ndcg_at_k(rankings[i], examples[i].labels) for i in in_scope],
    }


def router_metrics(routes: Sequence[Route], examples: Sequence[RoutingExample],
                   rankings: Sequence[Sequence[str]]) -> dict[str, float]:
    """The router on held-out prompts: in-scope accuracy (the first selected agent has the
    prompt's top grade), out-of-scope recall and precision of abstaining, selection F1 (an
    abstention on an out-of-scope prompt scores 1) and NDCG@5 of the full ranking."""
    rows = router_rows(routes, examples, rankings)
    abstained = [e for r, e in zip(routes, examples) if r.abstained]
    return {**{name: _mean(values) for name, values in rows.items()},
            "oos_precision": _mean([not e.labels for e in abstained]), "prompts": len(examples)}


def planner_rows(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict[str, list[float]]:
    """Per trace, the value each planner metric averages: exact path, node F1, link (a -> b) F1."""
    def link_names(path: Sequence[str]) -> list[str]:
        return [f"{a}>{b}" for a, b in links(path)]

    return {
        "exact_path": [float(list(p) == list(g)) for p, g in zip(predicted, gold)],
        "node_f1": [set_f1(p, g) for p, g in zip(predicted, gold)],
        "link_f1": [set_f1(link_names(p), link_names(g)) for p, g in zip(predicted, gold)],
    }


def planner_metrics(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict[str, float]:
    """Planned paths against the traces' paths: exact path, node F1 and link (a -> b) F1."""
    return {**{name: _mean(values) for name, values in planner_rows(predicted, gold).items()},
            "traces": len(gold)}


def json_fields(text: str) -> set[tuple[str, str]] | None:
    """(key, value) pairs of a flat JSON object, or None when the text is not one."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(value, dict):
        return None
    return {(str(k), json.dumps(v, sort_keys=True)) for k, v in value.items()}


def json_field_f1(predicted: str, gold: str) -> float:
    fields = json_fields(predicted)
    expected = json_fields(gold) or set()
    if fields is None:
        return 0.0
    return set_f1([f"{k}={v}" for k, v in fields], [f"{k}={v}" for k, v in expected])


def rouge_l(predicted: str, gold: str) -> float:
    """ROUGE-L F1 over lower-cased whitespace tokens."""
    a, b = predicted.lower().split(), gold.lower().split()
    if not a or not b:
        return float(a == b)
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def exact(predicted: str, gold: str) -> float:
    return float(predicted.strip() == gold.strip())


TEXT_METRICS = {"json_f1": json_field_f1, "rouge_l": rouge_l, "exact": exact}
