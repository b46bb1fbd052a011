"""Metrics shared by evaluation and benchmarks; pure functions over plain Python values."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence


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
