"""Routing without torch: the agent index, relevance grades and the separator rule.

The runtime routes with these and the ONNX scorer only, so serving a route never imports torch;
amo.router holds the trainable scoring model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amo.data import Agent, RoutingExample

SEPARATOR_GRADE = 0.5  # between irrelevant (0) and the lowest relevant grade (1)
SELECTION = "selection.json"  # in the router's folder: the margin train_router chose on val


class AgentError(ValueError):
    """An agent that cannot be added: bad id or description, or an id already present."""


def grade_matrix(examples: Sequence[RoutingExample], agent_ids: Sequence[str]) -> np.ndarray:
    """(N, A + 1) relevance grades; the last column is the separator. A label naming an agent
    not in `agent_ids` is refused by row."""
    column = {agent_id: i for i, agent_id in enumerate(agent_ids)}
    grades = np.zeros((len(examples), len(agent_ids) + 1), dtype=np.float32)
    grades[:, -1] = SEPARATOR_GRADE
    for row, example in enumerate(examples):
        for agent_id, grade in example.labels.items():
            if agent_id not in column:
                raise ValueError(f"routing row {row}: labels names unknown agent {agent_id!r}")
            grades[row, column[agent_id]] = grade
    return grades


@dataclass(frozen=True)
class Route:
    """The router's answer for one prompt: selected agents best first, or abstain."""

    agents: list[tuple[str, float]]
    separator: float

    @property
    def abstained(self) -> bool:
        return not self.agents

    def to_dict(self) -> dict[str, Any]:
        return {"agents": [{"id": a, "score": round(s, 4)} for a, s in self.agents],
                "separator": round(self.separator, 4), "abstained": self.abstained}


def select(scores: np.ndarray, agent_ids: Sequence[str], *, min_k: int = 0, max_k: int = 3,
           margin: float | np.ndarray = 0.0) -> Route:
    """Agents scoring above the separator (last entry of `scores`) by `margin` (one for all, or
    one per agent: `agent_margins`), best first."""
    separator = float(scores[-1])
    agents = scores[:-1]
    # The bar in the scores' own precision (float32): a lead equal to the margin abstains.
    bar = (separator + np.asarray(margin, np.float64)).astype(scores.dtype)
    above = np.flatnonzero(agents > bar)  # ascending, so a stable sort keeps ties in index order
    chosen = above[np.argsort(-agents[above], kind="stable")[:max_k]]
    if len(chosen) < min_k:
        chosen = np.argsort(-agents, kind="stable")[:min_k]
    return Route(agents=[(agent_ids[i], float(agents[i])) for i in chosen.tolist()], separator=separator)


def agent_margins(index: AgentIndex, margin: float) -> np.ndarray:
    """The lead over the separator each agent of `index` needs: `margin` (chosen on val, where
    every agent has examples, so calibrated for agents with history) for agents with examples;
    at least the separator itself, max(margin, 0), for an agent known only by its description
    (the separator was trained for that case: cross-fitting hides agents' examples)."""
    counts = index.packed()[2]
    return np.where(counts > 0, margin, max(margin, 0.0)).astype(np.float64)


def rankings(scores: np.ndarray, agent_ids: Sequence[str]) -> list[list[str]]:
    """Every agent best first, per score row (the separator, last, left out); ties keep index order."""
    return [[agent_ids[i] for i in np.argsort(-row[:-1], kind="stable")] for row in scores]


def prompt_key(prompt: str) -> bytes:
    """8 bytes naming a prompt's text (sha256), so an embedding can be reused for it."""
    return hashlib.sha256(prompt.encode("utf-8")).digest()[:8]


class AgentIndex:
    """The candidate agents: their description embeddings and the embeddings of the prompts each
    has already answered (its examples). Rebuilt cheaply when agents or examples change: only
    the new texts are embedded and the trained scorer is untouched."""

    def __init__(self, agents: list[Agent], embeddings: np.ndarray, examples: np.ndarray | None = None,
                 example_agents: np.ndarray | None = None, example_keys: np.ndarray | None = None) -> None:
        if len(agents) != len(embeddings):
            raise ValueError(f"{len(agents)} agents but {len(embeddings)} embeddings")
        dim = embeddings.shape[1] if embeddings.ndim == 2 else 0
        self.agents = agents
        self.embeddings = embeddings.astype(np.float32)
        self.examples = (np.zeros((0, dim), np.float32) if examples is None else examples).astype(np.float32)
        self.example_agents = (np.zeros(0, np.int64) if example_agents is None else example_agents).astype(np.int64)
        # Which prompt each example is (the first 8 bytes of its text's sha256): the index step
        # re-embeds only prompts it has not seen. Zeros when unknown.
        self.example_keys = (np.zeros((len(self.examples), 8), np.uint8) if example_keys is None
                             else np.asarray(example_keys, np.uint8).reshape(-1, 8))
        if not len(self.examples) == len(self.example_agents) == len(self.example_keys):
            raise ValueError(f"{len(self.examples)} example embeddings, {len(self.example_agents)} example agents, "
                             f"{len(self.example_keys)} example keys")
        if len(self.example_agents) and not 0 <= int(self.example_agents.min()) <= int(self.example_agents.max()) < len(agents):
            raise ValueError("an example names an agent outside the index")
        self._packed: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._columns: tuple[Classifier | None, np.ndarray, np.ndarray] | None = None

    @property
    def ids(self) -> list[str]:
        return [agent.id for agent in self.agents]

    @classmethod
    def build(cls, agents: list[Agent], encoder: Any, examples: Sequence[RoutingExample] = ()) -> AgentIndex:
        return cls(agents, encoder.encode([agent.description for agent in agents])).with_examples(examples, encoder)

    def add(self, agents: list[Agent], encoder: Any) -> AgentIndex:
        """This index with `agents` appended; only their descriptions are embedded (the cheap
        index step: the scoring model is untouched and routes to them at once)."""
        known = set(self.ids)
        for agent in agents:
            if agent.id in known:
                raise AgentError(f"agent {agent.id!r} is already in the index")
            known.add(agent.id)
        added = encoder.encode([agent.description for agent in agents]).astype(np.float32)
        return AgentIndex(self.agents + list(agents), np.vstack([self.embeddings, added]), self.examples,
                          self.example_agents, self.example_keys)

    def with_examples(self, rows: Sequence[RoutingExample], encoder: Any = None,
                      embeddings: np.ndarray | None = None) -> AgentIndex:
        """This index plus `rows` as examples of every agent they label (grade >= 1); out-of-scope
        rows add nothing. Their prompts are embedded with `encoder` unless `embeddings` are given.
        A label naming an agent outside the index is refused by row."""
        column = {agent_id: i for i, agent_id in enumerate(self.ids)}
        pairs = []
        for row, example in enumerate(rows):
            for agent_id in example.labels:
                if agent_id not in column:
                    raise AgentError(f"example {row}: labels names agent {agent_id!r}, not in the index")
                pairs.append((row, column[agent_id]))
        if not pairs:
            return self
        if embeddings is None:
            embeddings = encoder.encode([e.prompt for e in rows])
        rows_of, agents_of = np.array(pairs, dtype=np.int64).T
        keys = np.frombuffer(b"".join(prompt_key(rows[r].prompt) for r in rows_of), np.uint8).reshape(-1, 8)
        return AgentIndex(self.agents, self.embeddings, np.vstack([self.examples, embeddings[rows_of]]),
                          np.concatenate([self.example_agents, agents_of]), np.vstack([self.example_keys, keys]))

    def known_prompts(self) -> dict[bytes, np.ndarray]:
        """{prompt key: its embedding} for every example whose key is known."""
        return {key.tobytes(): row for key, row in zip(self.example_keys, self.examples) if key.any()}

    def packed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The examples grouped by agent (E, D), where each agent's group starts (A,), how many
        each agent has (A,), and each agent's unit centroid (A, D); computed once per index. Not
        padded to the largest agent's count: at 100,000 rows one agent can hold thousands of
        examples, and (agents x that count) slots would take gigabytes."""
        if self._packed is None:
            a, dim = len(self.agents), self.embeddings.shape[1]
            counts = np.bincount(self.example_agents, minlength=a)
            order = np.argsort(self.example_agents, kind="stable")
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            bank = np.ascontiguousarray(self.examples[order], np.float32).reshape(len(order), dim)
            centroid = np.zeros((a, dim), np.float32)
            for j in np.flatnonzero(counts):
                centroid[j] = bank[starts[j]:starts[j] + counts[j]].sum(0)
            centroid /= np.maximum(np.linalg.norm(centroid, axis=1, keepdims=True), 1e-9)
            self._packed = (bank, starts, counts, centroid)
        return self._packed

    def classifier_columns(self, classifier: Classifier | None) -> tuple[np.ndarray, np.ndarray]:
        """(the classifier's classes naming an agent of this index, that agent's column), kept for
        the last classifier asked about: routing one prompt should not rebuild an id map of
        thousands of agents."""
        cached = self._columns
        if cached is not None and cached[0] is classifier:
            return cached[1], cached[2]
        column = {agent_id: i for i, agent_id in enumerate(self.ids)}
        known = [(k, column[agent_id]) for k, agent_id in enumerate(classifier.agent_ids if classifier else ())
                 if agent_id in column]
        classes, columns = (np.array(v, np.int64) for v in zip(*known)) if known else (np.zeros(0, np.int64),) * 2
        self._columns = (classifier, classes, columns)
        return classes, columns

    def save(self, directory: Path) -> None:
        from safetensors.numpy import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": np.ascontiguousarray(self.embeddings), "examples": np.ascontiguousarray(self.examples),
                   "example_agents": np.ascontiguousarray(self.example_agents),
                   "example_keys": np.ascontiguousarray(self.example_keys)},
                  str(directory / "agent_index.safetensors"))
        (directory / "agents.json").write_text(json.dumps(
            [asdict(agent) for agent in self.agents], indent=1, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, directory: Path) -> AgentIndex:
        from safetensors.numpy import load_file

        records = json.loads((directory / "agents.json").read_text())
        agents = [Agent.from_record(r) for r in records]
        tensors = load_file(str(directory / "agent_index.safetensors"))
        return cls(agents, tensors["embeddings"], tensors.get("examples"), tensors.get("example_agents"),
                   tensors.get("example_keys"))


@dataclass(frozen=True)
class Classifier:
    """A softmax classifier over the agents that had training prompts (weights (K, D), bias
    (K,), the agent id of each class): one source of evidence for the router. Agents it never
    saw (added later) simply have no classifier column."""

    weights: np.ndarray
    bias: np.ndarray
    agent_ids: tuple[str, ...]

    FILE = "classifier.safetensors"

    def save(self, directory: Path) -> None:
        from safetensors.numpy import save_file

        directory.mkdir(parents=True, exist_ok=True)
        # contiguous: scikit-learn's coef_ can be Fortran-ordered, and safetensors writes raw bytes
        save_file({"weights": np.ascontiguousarray(self.weights, np.float32),
                   "bias": np.ascontiguousarray(self.bias, np.float32)},
                  str(directory / self.FILE), metadata={"agent_ids": json.dumps(list(self.agent_ids))})

    @classmethod
    def load(cls, directory: Path) -> Classifier:
        from safetensors import safe_open

        with safe_open(str(directory / cls.FILE), framework="np") as handle:
            ids = json.loads((handle.metadata() or {})["agent_ids"])
            return cls(handle.get_tensor("weights"), handle.get_tensor("bias"), tuple(ids))


COLUMN_FIT_ROWS = 20_000  # rows of the known agents a new column is fitted against (a seeded sample beyond)


def add_columns(classifier: Classifier, x: np.ndarray, labels: Sequence[str], new_ids: Sequence[str], c: float,
                seed: int = 0) -> Classifier:
    """`classifier` with one column per agent of `new_ids`, fitted on the rows `x` (unit prompt
    embeddings) labelled `labels` (an agent of the classifier or of `new_ids`) while every
    existing column stays fixed: the softmax log-likelihood of the rows plus the L2 penalty
    ||w||^2 / (2c) of scikit-learn's LogisticRegression(C=c), over the new columns only
    (L-BFGS). The index step gives an agent its first examples this way, without refitting the
    classifier; cross-fitting does the same for a hidden agent's few examples, so the ranker
    learns how far a column fitted on k examples can be trusted. Rows of known agents beyond
    COLUMN_FIT_ROWS are sampled (seeded) and weighted to stand for all of them."""
    from scipy.optimize import minimize

    old = {agent: i for i, agent in enumerate(classifier.agent_ids)}
    new = {agent: i for i, agent in enumerate(new_ids)}
    if set(old) & set(new):
        raise ValueError(f"agents already have a column: {sorted(set(old) & set(new))}")
    if not new:
        return classifier
    labels = list(labels)
    unknown = sorted({a for a in labels if a not in old and a not in new})
    if unknown:
        raise ValueError(f"rows labelled with agents outside the classifier and the new ones: {unknown[:5]}")
    x = np.asarray(x, np.float64)
    new_rows = np.array([i for i, a in enumerate(labels) if a in new], np.int64)
    old_rows = np.array([i for i, a in enumerate(labels) if a in old], np.int64)
    weight_old = 1.0
    if len(old_rows) > COLUMN_FIT_ROWS:
        weight_old = len(old_rows) / COLUMN_FIT_ROWS
        old_rows = np.sort(np.random.default_rng(seed).choice(old_rows, COLUMN_FIT_ROWS, replace=False))
    rows = np.concatenate([new_rows, old_rows])
    xr = x[rows]
    weight = np.concatenate([np.ones(len(new_rows)), np.full(len(old_rows), weight_old)])
    z_old = xr @ classifier.weights.T.astype(np.float64) + classifier.bias
    top = z_old.max(1)
    lse_old = top + np.log(np.exp(z_old - top[:, None]).sum(1))
    own = np.zeros(len(rows))  # the logit of each row's own agent, when it is an old one
    own[len(new_rows):] = z_old[np.arange(len(new_rows), len(rows)), [old[labels[i]] for i in old_rows]]
    target = np.zeros((len(rows), len(new)))
    target[np.arange(len(new_rows)), [new[labels[i]] for i in new_rows]] = 1.0
    m, d = len(new), x.shape[1]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:m * d].reshape(m, d), theta[m * d:]
        z = xr @ w.T + b
        high = np.maximum(z.max(1), lse_old)
        lse = high + np.log(np.exp(lse_old - high) + np.exp(z - high[:, None]).sum(1))
        picked = np.where(target.any(1), (z * target).sum(1), own)
        value = float((weight * (lse - picked)).sum() + (w * w).sum() / (2 * c))
        g = weight[:, None] * (np.exp(z - lse[:, None]) - target)
        return value, np.concatenate([(g.T @ xr + w / c).ravel(), g.sum(0)])

    fit = minimize(loss, np.zeros(m * d + m), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    w, b = fit.x[:m * d].reshape(m, d), fit.x[m * d:]
    return Classifier(np.vstack([classifier.weights, w]).astype(np.float32),
                      np.concatenate([classifier.bias, b]).astype(np.float32),
                      (*classifier.agent_ids, *new_ids))


def index_step_classifier(classifier: Classifier, index: AgentIndex, c: float, seed: int = 0,
                          min_examples: int = 1) -> Classifier:
    """The classifier for `index` after the index step: a column for every agent that has at
    least `min_examples` examples in the index but none in `classifier` (add_columns, fitted on
    the index's examples, which are the training prompts of every agent), the other columns
    untouched."""
    known = set(classifier.agent_ids)
    counts = index.packed()[2]
    missing = [agent for agent, count in zip(index.ids, counts)
               if count >= max(min_examples, 1) and agent not in known]
    if not missing:
        return classifier
    ids = index.ids
    return add_columns(classifier, index.examples, [ids[int(a)] for a in index.example_agents], missing, c, seed)


# Features of one (prompt, agent) pair, and of the prompt alone (the same for every candidate).
AGENT_FEATURES = ("desc", "desc_lead", "has_examples", "log_examples", "example_max", "example_top3",
                  "example_centroid", "example_max_lead", "example_top3_lead", "has_classifier",
                  "classifier_logp", "classifier_p", "classifier_lead")
PROMPT_FEATURES = ("best_desc", "desc_gap", "best_example_max", "best_example_top3", "best_centroid",
                   "best_classifier_p", "classifier_entropy", "any_examples", "any_classifier")
LOGP_FLOOR = -15.0


EXAMPLE_CHUNK = 1 << 22  # similarities (prompts x examples) handled at once by example_evidence


def example_evidence(q: np.ndarray, bank: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, A) each agent's best example similarity and the mean of its best min(3, count), for
    unit prompts `q` against the examples grouped by agent (`AgentIndex.packed`); 0 for agents
    without examples. Segment reductions over one (prompts x examples) product, no loop over
    agents: the top 3 of a group are its maximum, then the maximum below it unless the maximum
    is repeated, and so on (ties kept, so the values equal a per-group sort's)."""
    n, a = len(q), len(counts)
    ex_max, ex_top3 = np.zeros((n, a), np.float32), np.zeros((n, a), np.float64)
    present = np.flatnonzero(counts)
    if not len(present):
        return ex_max, ex_top3
    c = counts[present]
    starts = np.concatenate([[0], np.cumsum(c)[:-1]])
    k = np.minimum(c, 3).astype(np.float32)
    low = np.float32(-np.inf)
    step = max(1, EXAMPLE_CHUNK // max(len(bank), 1))
    for lo in range(0, n, step):
        sims = q[lo:lo + step] @ bank.T  # (m, E): an agent's examples are one slice
        first = np.maximum.reduceat(sims, starts, axis=1)
        at_first = sims == np.repeat(first, c, axis=1)
        ties1 = np.add.reduceat(at_first, starts, axis=1, dtype=np.int64)
        below = np.where(at_first, low, sims)  # every copy of the maximum removed
        second_value = np.maximum.reduceat(below, starts, axis=1)
        at_second = below == np.repeat(second_value, c, axis=1)
        ties2 = np.add.reduceat(at_second & (below > low), starts, axis=1, dtype=np.int64)
        third_value = np.maximum.reduceat(np.where(at_second, low, below), starts, axis=1)
        second = np.where(ties1 >= 2, first, second_value)
        third = np.where(ties1 >= 3, first, np.where((ties1 == 2) | (ties2 >= 2), second_value, third_value))
        top = np.stack([first, np.where(c >= 2, second, 0), np.where(c >= 3, third, 0)], axis=2)
        ex_max[lo:lo + step, present] = first
        ex_top3[lo:lo + step, present] = top.sum(2) / k
    return ex_max, ex_top3


def route_features(prompts: np.ndarray, index: AgentIndex, classifier: Classifier | None) -> tuple[np.ndarray, np.ndarray]:
    """(n, A, len(AGENT_FEATURES)) agent features and (n, len(PROMPT_FEATURES)) prompt
    features for unit prompt embeddings (n, D): matrix products against the index only, so
    routing needs no torch. An agent without examples or without a classifier column gets
    zeros there and its flag off: the ranker learned what "no history" means."""
    q = np.ascontiguousarray(prompts, np.float32)
    n, a = len(q), len(index.agents)
    bank, _, counts, centroid = index.packed()
    desc = q @ index.embeddings.T
    has_ex = counts > 0
    if has_ex.any():
        ex_max, ex_top3 = example_evidence(q, bank, counts)
        ex_cent = np.where(has_ex, q @ centroid.T, 0.0)
        best_max = np.where(has_ex, ex_max, -1).max(1, keepdims=True)
        best_top3 = np.where(has_ex, ex_top3, -1).max(1, keepdims=True)
        best_cent = np.where(has_ex, ex_cent, -1).max(1, keepdims=True)
    else:
        ex_max = ex_top3 = ex_cent = np.zeros((n, a), np.float32)
        best_max = best_top3 = best_cent = np.zeros((n, 1), np.float32)
    classes, columns = index.classifier_columns(classifier)
    has_clf = np.zeros(a, bool)
    logp = np.zeros((n, a), np.float32)
    if classifier is not None and len(classes):
        z = q @ classifier.weights.T + classifier.bias
        z = z - z.max(1, keepdims=True)
        lp = (z - np.log(np.exp(z).sum(1, keepdims=True)))[:, classes]
        logp[:, columns] = np.maximum(lp, LOGP_FLOOR)
        has_clf[columns] = True
        prob = np.exp(lp)
        entropy = -(prob * lp).sum(1, keepdims=True) / np.log(max(len(classes), 2))
        best_p = prob.max(1, keepdims=True)
        best_lp = np.maximum(lp.max(1, keepdims=True), LOGP_FLOOR)
    else:
        entropy, best_p, best_lp = np.ones((n, 1)), np.zeros((n, 1)), np.zeros((n, 1))
    clf_p = np.where(has_clf, np.exp(logp), 0.0)
    best_desc = desc.max(1, keepdims=True)
    second = np.partition(desc, a - 2, axis=1)[:, a - 2:a - 1] if a > 1 else best_desc
    hx, hc = np.broadcast_to(has_ex, (n, a)), np.broadcast_to(has_clf, (n, a))
    agent = np.stack([
        desc, desc - best_desc, hx, np.broadcast_to(np.log1p(counts) / np.log1p(100), (n, a)),
        ex_max, ex_top3, ex_cent, np.where(hx, ex_max - best_max, 0), np.where(hx, ex_top3 - best_top3, 0),
        hc, logp / 5.0, clf_p, np.where(hc, (logp - best_lp) / 5.0, 0),
    ], axis=2).astype(np.float32)
    prompt = np.hstack([best_desc, best_desc - second, best_max, best_top3, best_cent, best_p, entropy,
                        np.full((n, 1), float(has_ex.any())), np.full((n, 1), float(has_clf.any()))])
    return agent, prompt.astype(np.float32)


def read_margin(router_dir: Path) -> float:
    """The margin over the separator that train_router chose (selection.json)."""
    return float(json.loads((router_dir / SELECTION).read_text(encoding="utf-8"))["margin"])


def choose_margin(scores: np.ndarray, out_of_scope: np.ndarray, target_recall: float) -> float | None:
    """The margin over the separator that keeps the most in-scope selections while abstaining
    on at least `target_recall` of the out-of-scope prompts (an abstention under `select`: the
    best agent's lead over the separator is at most the margin), set halfway between the
    lead that reaches that share and the next one. None without out-of-scope prompts."""
    leads = np.sort(scores[:, :-1].max(axis=1)[out_of_scope].astype(np.float64) - scores[out_of_scope, -1])
    if not len(leads):
        return None
    k = max(int(np.ceil(target_recall * len(leads))), 1)
    # Halfway to the next lead, so float rounding in `select` cannot flip the k-th prompt.
    following = leads[k] if k < len(leads) else leads[k - 1] + 1.0
    return float((leads[k - 1] + following) / 2)
