"""Side-by-side routing evaluation for the benchmarks: amo's router, a zero-shot cosine router
and a logistic-regression classifier over the same embeddings, routed by one rule.

Every system gives a score matrix (N, A + 1) whose last column is its threshold reference: the
learned separator for amo, 0 for cosine similarity and for classifier probabilities. `select`
with a margin then gives the selection, so "tune the threshold on val" is one function for all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from amo.data import Agent, RoutingExample
from amo.metrics import router_metrics
from amo.routing import Route, select

OOS_LABEL = "__oos__"


def cached_encode(encoder: Any, texts: Sequence[str], cache: Path) -> np.ndarray:
    """encoder.encode(texts), stored in `cache` under a hash of the encoder and the texts."""
    digest = hashlib.sha256(str(getattr(encoder, "path", "")).encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\x00")
    path = Path(cache) / f"embeddings-{digest.hexdigest()[:24]}.npy"
    if path.is_file():
        return np.load(path)
    vectors = encoder.encode(list(texts))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def with_threshold_column(scores: np.ndarray, value: float = 0.0) -> np.ndarray:
    """Append a constant threshold column: the baselines' stand-in for the separator."""
    return np.hstack([scores, np.full((len(scores), 1), value, dtype=scores.dtype)]).astype(np.float32)


def cosine_scores(prompts: np.ndarray, agents: np.ndarray) -> np.ndarray:
    """Zero-shot similarity router (unit vectors): (N, A + 1), threshold column 0."""
    return with_threshold_column(prompts @ agents.T)


def fit_classifier(prompts: np.ndarray, examples: Sequence[RoutingExample], agent_ids: Sequence[str],
                   c: float = 10.0, seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """Logistic regression on in-scope training prompts (top label): returns prompts -> (N, A + 1)
    probabilities, 0 for agents it never saw (it cannot name them), threshold column 0."""
    from sklearn.linear_model import LogisticRegression

    rows = [i for i, e in enumerate(examples) if e.labels]
    targets = [max(examples[i].labels, key=examples[i].labels.__getitem__) for i in rows]
    model = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(prompts[rows], targets)
    column = {agent_id: i for i, agent_id in enumerate(agent_ids)}
    known = np.array([column[label] for label in model.classes_])

    def predict(x: np.ndarray) -> np.ndarray:
        probabilities = np.zeros((len(x), len(agent_ids)), dtype=np.float32)
        probabilities[:, known] = model.predict_proba(x)
        return with_threshold_column(probabilities)

    return predict


def fit_multilabel_classifier(prompts: np.ndarray, examples: Sequence[RoutingExample],
                              agent_ids: Sequence[str], c: float = 10.0,
                              seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """One-vs-rest logistic regression for multi-label data; agents never relevant in training
    get probability 0."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    column = {agent_id: i for i, agent_id in enumerate(agent_ids)}
    y = np.zeros((len(examples), len(agent_ids)), dtype=np.int64)
    for row, example in enumerate(examples):
        for agent_id in example.labels:
            y[row, column[agent_id]] = 1
    seen = np.flatnonzero(y.sum(0) > 0)
    model = OneVsRestClassifier(LogisticRegression(C=c, max_iter=1000, random_state=seed))
    model.fit(prompts, y[:, seen])

    def predict(x: np.ndarray) -> np.ndarray:
        probabilities = np.zeros((len(x), len(agent_ids)), dtype=np.float32)
        probabilities[:, seen] = model.predict_proba(x)
        return with_threshold_column(probabilities)

    return predict


def route_all(scores: np.ndarray, agent_ids: Sequence[str], margin: float | np.ndarray, max_k: int = 1) -> list[Route]:
    return [select(row, agent_ids, min_k=0, max_k=max_k, margin=margin) for row in scores]


def top_label(route: Route) -> str:
    return route.agents[0][0] if route.agents else OOS_LABEL


def gold_label(example: RoutingExample) -> str:
    return max(example.labels, key=example.labels.__getitem__) if example.labels else OOS_LABEL


def macro_f1(predicted: Sequence[str], gold: Sequence[str], labels: Sequence[str]) -> float:
    """Mean over `labels` of the per-label F1 of single-label predictions."""
    from collections import Counter

    hits = Counter(p for p, g in zip(predicted, gold) if p == g)
    said, truth = Counter(predicted), Counter(gold)
    values = [2 * hits[label] / (said[label] + truth[label]) if hits[label] else 0.0 for label in labels]
    return float(np.mean(values)) if values else 0.0


def routing_metrics(scores: np.ndarray, examples: Sequence[RoutingExample], agents: Sequence[Agent],
                    margin: float, max_k: int = 1) -> dict[str, float]:
    """CLINC-style figures: the pipeline's own router metrics (`amo.metrics.router_metrics`: in-scope
    accuracy, OOS recall and precision, selection F1, NDCG@5, one definition everywhere) plus
    macro F1 over the agents and "out of scope" and the domain accuracy of the top selected agent
    (both single-label: a prompt's first top-graded agent)."""
    ids = [a.id for a in agents]
    domain = {a.id: a.domain for a in agents}
    routes = route_all(scores, ids, margin, max_k)
    in_scope = [i for i, e in enumerate(examples) if e.labels]
    oos = [i for i, e in enumerate(examples) if not e.labels]
    predicted = [top_label(r) for r in routes]
    gold = [gold_label(e) for e in examples]
    rankings = [[ids[j] for j in row] for row in np.argsort(-scores[:, :-1], axis=1, kind="stable")[:, :5]]
    domain_hits = [predicted[i] != OOS_LABEL and domain[predicted[i]] == domain[gold[i]] for i in in_scope]
    return {
        **router_metrics(routes, examples, rankings),
        "macro_f1": macro_f1(predicted, gold, ids + ([OOS_LABEL] if oos else [])),
        "domain_accuracy": float(np.mean(domain_hits)) if domain_hits else 0.0,
        "margin": float(margin),
    }


def recall_floor_objective(min_oos_recall: float = 0.70) -> Callable[[dict[str, float]], float]:
    """What thresholds are tuned for on val: the highest in-scope accuracy among margins whose OOS
    recall reaches `min_oos_recall`; below that floor, only OOS recall counts."""

    def objective(metrics: dict[str, float]) -> float:
        if metrics["oos_recall"] >= min_oos_recall:
            return 1.0 + metrics["in_scope_accuracy"]
        return metrics["oos_recall"]

    return objective


def tune_margin(scores: np.ndarray, examples: Sequence[RoutingExample], agents: Sequence[Agent],
                objective: Callable[[dict[str, float]], float] | None = None,
                max_k: int = 1, steps: int = 60) -> float:
    """The margin over the threshold column that maximises `objective` on (validation) data,
    searched over quantiles of the best agent's lead over that column."""
    objective = objective or recall_floor_objective()
    lead = scores[:, :-1].max(axis=1) - scores[:, -1]
    grid = np.unique(np.concatenate([[0.0], np.quantile(lead, np.linspace(0.0, 0.99, steps))]))
    best = max(grid, key=lambda m: (objective(routing_metrics(scores, examples, agents, float(m), max_k)),
                                    -abs(m)))
    return float(best)


def ceilings(scores: np.ndarray, examples: Sequence[RoutingExample], agents: Sequence[Agent],
             min_oos_recall: float = 0.70) -> dict[str, float]:
    """Upper bounds read off `examples` themselves (diagnostics, never a result): in-scope
    accuracy of the top agent when the system never abstains, and the best in-scope accuracy any
    margin reaches on these very examples with OOS recall at least `min_oos_recall`. A system
    whose ceiling is below a target cannot reach it with any threshold rule.

    In-scope accuracy only falls as the margin rises, so the best margin is the smallest that
    abstains on enough out-of-scope prompts: the k-th smallest out-of-scope lead (plus 1e-6, as a
    prompt abstains when its lead is at most the margin)."""
    never = routing_metrics(scores, examples, agents, float("-inf"))
    lead = scores[:, :-1].max(axis=1) - scores[:, -1]
    oos_leads = np.sort([lead[i] for i, e in enumerate(examples) if not e.labels])
    if len(oos_leads) == 0:
        raise ValueError("ceilings need out-of-scope examples")
    k = max(1, int(np.ceil(min_oos_recall * len(oos_leads) - 1e-9)))
    best = routing_metrics(scores, examples, agents, float(oos_leads[k - 1]) + 1e-6)
    return {"top1_accuracy": never["in_scope_accuracy"],
            "oracle_in_scope_accuracy": best["in_scope_accuracy"], "oracle_oos_recall": best["oos_recall"]}


def compare_multilabel(router: Any, x: dict[str, np.ndarray], splits: dict[str, Sequence[RoutingExample]],
                       agents: Sequence[Agent], agent_x: np.ndarray, classifier_c: float,
                       max_k: int) -> dict[str, tuple[np.ndarray, dict[str, float]]]:
    """amo, cosine and a one-vs-rest classifier side by side on multi-label routing, same
    embeddings: each system's margin is tuned on val for selection-set F1 (at most `max_k`
    agents). Returns system -> (test scores, test metrics)."""
    ids = [agent.id for agent in agents]
    classify = fit_multilabel_classifier(x["train"], splits["train"], ids, c=classifier_c)
    scored = {
        "amo": (router.score(x["val"], agent_x), router.score(x["test"], agent_x)),
        "cosine": (cosine_scores(x["val"], agent_x), cosine_scores(x["test"], agent_x)),
        "classifier": (classify(x["val"]), classify(x["test"])),
    }
    out = {}
    for name, (val_scores, test_scores) in scored.items():
        margin = tune_margin(val_scores, splits["val"], agents, max_k=max_k,
                             objective=lambda metrics: metrics["selection_f1"])
        out[name] = (test_scores, routing_metrics(test_scores, splits["test"], agents, margin, max_k))
    return out
