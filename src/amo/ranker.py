"""The router's ranker: listwise learning to rank over agent-agnostic evidence for each
(prompt, agent) pair, with the separator as one more candidate.

An agent is known by its description, by the prompts it has already answered (its examples in
the agent index) and, when it had training prompts, by a column of a softmax classifier. The
features (`amo.routing.route_features`: description cosine, nearest / top-3 / centroid example
cosine, example count, classifier log-probability, each also as a lead over the best agent, and
flags saying which evidence exists) feed one small MLP that scores every agent and the
separator, trained with the paper's listwise loss (`amo.router.listwise_loss`).

What "no history" means is learned by cross-fitting: rows are split in folds and agents in
groups; the rows of fold f get their features from a classifier and an example bank built on the
other folds' rows *without* group f's agents, which appear with no classifier column and either
no examples (a new agent) or a few (an agent just given examples by the index step). That is the
state of an agent added after training, competing with agents the classifier knows. So one model
is as sharp as a classifier on agents with history and as general as similarity on new ones.

    ranker = AgentRanker.from_params(params.router).fit(index, x_train, grades_train, val=(x_val, grades_val))
    scores = ranker.score(x_test, index)   # (n, A + 1), the separator last
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from amo.progress import Progress
from amo.router import listwise_loss
from amo.routing import AGENT_FEATURES, PROMPT_FEATURES, AgentIndex, Classifier, route_features

log = logging.getLogger("amo")
WEIGHTS = "ranker.safetensors"
META = "ranker.json"
FORMAT_VERSION = 1


class FeatureRanker(nn.Module):
    """One MLP over [agent features, prompt features, is-separator]: (n, A, Fa), (n, Fp) -> (n, A + 1)."""

    def __init__(self, hidden: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        width = len(AGENT_FEATURES) + len(PROMPT_FEATURES) + 1
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, agent: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        n, a, f = agent.shape
        candidates = torch.cat([agent, agent.new_zeros(n, 1, f)], 1)  # the separator has no agent evidence
        flag = torch.cat([agent.new_zeros(n, a, 1), agent.new_ones(n, 1, 1)], 1)
        x = torch.cat([candidates, prompt.unsqueeze(1).expand(n, a + 1, prompt.shape[1]), flag], 2)
        return self.mlp(x).squeeze(-1)


def fit_classifier(x: np.ndarray, labels: np.ndarray, ids: Sequence[str], c: float, seed: int) -> Classifier:
    """Multinomial logistic regression (scikit-learn, lbfgs) on rows with a label (column of `ids`)."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(labels)) < 2:  # one class: a constant column, no evidence either way
        classes = np.unique(labels)
        return Classifier(np.zeros((len(classes), x.shape[1]), np.float32), np.zeros(len(classes), np.float32),
                          tuple(ids[int(c)] for c in classes))
    model = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(x, labels)
    weights, bias = model.coef_, model.intercept_
    if len(model.classes_) == 2:  # scikit-learn keeps one row for two classes: sigmoid(w x + b) = softmax([0, w x + b])
        weights, bias = np.vstack([np.zeros_like(weights), weights]), np.concatenate([[0.0], bias])
    return Classifier(np.ascontiguousarray(weights, np.float32), np.ascontiguousarray(bias, np.float32),
                      tuple(ids[int(c)] for c in model.classes_))


def primary_labels(grades: np.ndarray) -> np.ndarray:
    """Each row's highest-graded agent column (the first on ties), -1 when out of scope."""
    agents = grades[:, :-1]
    return np.where(agents.max(1) > 0, agents.argmax(1), -1)


def top_pairs(grades: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, agent column) for every agent of a row's top grade: the classifier's training pairs.
    A multi-label row (a question needing several tools of equal grade) teaches every one of
    them, not only its first column: an agent always listed second would otherwise get no
    classifier column and look like an agent without history."""
    agents = grades[:, :-1]
    top = agents.max(1, keepdims=True)
    rows, columns = np.nonzero((agents == top) & (top > 0))
    return rows, columns


def batched_features(x: np.ndarray, index: AgentIndex, classifier: Classifier | None,
                     batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """route_features in batches of prompts: the per-agent example similarities of a whole fold
    at once would take (rows x agents x examples per agent) floats."""
    parts = [route_features(x[start:start + batch], index, classifier) for start in range(0, max(len(x), 1), batch)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@dataclass
class RankerConfig:
    hidden: int = 64
    dropout: float = 0.0


class AgentRanker:
    """Scikit-learn-style: `fit(...)` returns self; learned state ends in `_`."""

    def __init__(self, hidden: int = 64, dropout: float = 0.0, epochs: int = 12, lr: float = 2e-3,
                 weight_decay: float = 1e-4, batch_size: int = 128, seed: int = 0, oos_weight: float = 1.0,
                 folds: int = 5, shots: Sequence[int] = (0, 0, 0, 1, 5, 20), drop_prob: float = 0.5,
                 classifier_c: float = 10.0, patience: int = 3, group_by: str = "domain") -> None:
        self.hidden, self.dropout, self.epochs, self.lr = hidden, dropout, epochs, lr
        self.weight_decay, self.batch_size, self.seed, self.oos_weight = weight_decay, batch_size, seed, oos_weight
        self.folds, self.shots, self.drop_prob, self.classifier_c = folds, tuple(shots), drop_prob, classifier_c
        self.patience, self.group_by = patience, group_by

    @classmethod
    def from_params(cls, params: Any) -> AgentRanker:
        """From params.yaml's `router` section (amo.config.RouterParams)."""
        return cls(**{k: getattr(params, k) for k in ("hidden", "dropout", "epochs", "lr", "weight_decay",
                                                       "batch_size", "seed", "oos_weight", "folds", "shots",
                                                       "drop_prob", "classifier_c", "patience", "group_by")})

    def _groups(self, index: AgentIndex, rng: np.random.Generator) -> np.ndarray:
        """Agents hidden together in cross-fitting: by domain when there are enough domains
        (a new domain arrives as a block of related agents), else one agent each."""
        if self.group_by == "domain":
            domains = [agent.domain for agent in index.agents]
            if all(domains) and len(set(domains)) >= self.folds:
                return np.unique(domains, return_inverse=True)[1]
        return np.arange(len(index.agents))

    def _crossfit(self, index: AgentIndex, x: np.ndarray, grades: np.ndarray, groups: np.ndarray,
                  rng: np.random.Generator, extra: np.ndarray | None) -> tuple[list[tuple], list[tuple]]:
        """Per fold: (rows, agent features, prompt features, hidden group of the row's agent or
        -1), and the same for the `extra` (validation) rows, each given a random fold."""
        n, ids = len(x), index.ids
        labels = primary_labels(grades)
        pair_rows, pair_agents = top_pairs(grades)
        relevant = grades[:, :-1] > 0
        fold_of_row = rng.permutation(np.arange(n) % self.folds)
        order = rng.permutation(np.unique(groups))
        fold_of_group = dict(zip(order.tolist(), (np.arange(len(order)) % self.folds).tolist()))
        extra_fold = rng.integers(0, self.folds, len(extra)) if extra is not None else None
        parts, extra_parts = [], []
        for f in range(self.folds):
            hidden = np.array([fold_of_group[int(g)] == f for g in groups])
            outside = fold_of_row != f
            known = outside[pair_rows] & ~hidden[pair_agents]
            classifier = fit_classifier(x[pair_rows[known]], pair_agents[known], ids, self.classifier_c, self.seed)
            pairs = [np.argwhere(relevant & outside[:, None] & ~hidden[None, :])]
            for agent in np.flatnonzero(hidden):  # the index step's state: k examples, no classifier column
                k = int(rng.choice(self.shots))
                pool = np.flatnonzero(outside & relevant[:, agent])
                if k and len(pool):
                    chosen = rng.choice(pool, min(k, len(pool)), replace=False)
                    pairs.append(np.stack([chosen, np.full(len(chosen), agent)], 1))
            bank = np.concatenate(pairs)
            fold_index = AgentIndex(index.agents, index.embeddings, x[bank[:, 0]], bank[:, 1])
            rows = np.flatnonzero(fold_of_row == f)
            row_hidden = (labels[rows] >= 0) & hidden[np.maximum(labels[rows], 0)]
            parts.append((rows, *batched_features(x[rows], fold_index, classifier),
                          np.where(row_hidden, groups[np.maximum(labels[rows], 0)], -1)))
            if extra is not None and extra_fold is not None:
                chosen = np.flatnonzero(extra_fold == f)
                extra_parts.append((chosen, *batched_features(extra[chosen], fold_index, classifier)))
            log.info("router cross-fit fold %d/%d: %d agents hidden, %d rows, %d examples",
                     f + 1, self.folds, int(hidden.sum()), len(rows), len(bank))
        return parts, extra_parts

    def fit(self, index: AgentIndex, x: np.ndarray, grades: np.ndarray,
            val: tuple[np.ndarray, np.ndarray] | None = None,
            progress: Callable[[dict[str, float]], None] | None = None) -> AgentRanker:
        """index: the agents (descriptions; its examples are not used), x (N, D) unit prompt
        embeddings with grades (N, A + 1) from `grade_matrix`; val likewise, for early stopping
        (the epoch with the lowest validation loss is kept, `patience` epochs without a better one
        stop training). The serving classifier is then fitted on every labelled row."""
        rng = np.random.default_rng(self.seed)
        torch.manual_seed(self.seed)
        groups = self._groups(index, rng)
        parts, val_parts = self._crossfit(index, x, grades, groups, rng, None if val is None else val[0])
        rows = np.concatenate([p[0] for p in parts])
        agent_f = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        prompt_f = torch.from_numpy(np.concatenate([p[2] for p in parts]))
        y = torch.from_numpy(grades[rows].astype(np.float32))
        weights = torch.where(y[:, :-1].max(1).values > 0, 1.0, float(self.oos_weight))
        # A row of a hidden agent loses that agent's whole group with probability drop_prob: a
        # prompt for an agent nobody added must go to the separator, not to a look-alike.
        drop_group = torch.from_numpy(np.concatenate([p[3] for p in parts]))
        group_of = torch.from_numpy(np.concatenate([groups, [-2]]))
        model = FeatureRanker(self.hidden, self.dropout)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        generator = torch.Generator().manual_seed(self.seed)
        best: tuple[float, dict[str, torch.Tensor]] | None = None
        stale = 0
        self.history_: list[dict[str, float]] = []
        bar = Progress("router epoch", self.epochs, log.info)  # a bar on a terminal, else a line per epoch
        for epoch in range(self.epochs):
            model.train()
            total, batches = 0.0, torch.randperm(len(y), generator=generator).split(self.batch_size)
            for batch in batches:
                scores, target = model(agent_f[batch], prompt_f[batch]), y[batch]
                if self.drop_prob > 0:
                    on = (drop_group[batch] >= 0) & (torch.rand(len(batch), generator=generator) < self.drop_prob)
                    mask = on.unsqueeze(1) & (group_of.unsqueeze(0) == drop_group[batch].unsqueeze(1))
                    scores, target = scores.masked_fill(mask, -1e4), target.masked_fill(mask, 0.0)
                loss = listwise_loss(scores, target, weights[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item()
            record = {"epoch": epoch + 1, "train_loss": round(total / max(len(batches), 1), 5)}
            if val is not None and val_parts:
                record["val_loss"] = round(self._val_loss(model, val_parts, val[1]), 5)
                if best is None or record["val_loss"] < best[0]:
                    best, stale = (record["val_loss"], {k: v.clone() for k, v in model.state_dict().items()}), 0
                else:
                    stale += 1
            self.history_.append(record)
            bar.update(epoch + 1, str(record))
            if progress is not None:
                progress(record)
            if best is not None and stale >= self.patience:
                break
        bar.close()
        if best is not None:
            model.load_state_dict(best[1])
        model.eval()
        self.model_ = model
        self.config_ = RankerConfig(self.hidden, self.dropout)
        pair_rows, pair_agents = top_pairs(grades)
        self.classifier_ = fit_classifier(x[pair_rows], pair_agents, index.ids, self.classifier_c, self.seed)
        return self

    @staticmethod
    @torch.no_grad()
    def _val_loss(model: FeatureRanker, parts: list[tuple], grades: np.ndarray) -> float:
        model.eval()
        total, count = 0.0, 0
        for rows, agent_f, prompt_f in parts:
            target = torch.from_numpy(grades[rows].astype(np.float32))
            active = int((target > 0).sum())
            if active:
                scores = model(torch.from_numpy(agent_f), torch.from_numpy(prompt_f))
                total += float(listwise_loss(scores, target)) * active
                count += active
        return total / max(count, 1)

    @torch.no_grad()
    def score(self, prompts: np.ndarray, index: AgentIndex, batch: int = 512) -> np.ndarray:
        """(N, A + 1) scores for the index's agents, the separator last."""
        parts = []
        for start in range(0, len(prompts), batch):
            agent_f, prompt_f = route_features(prompts[start:start + batch], index, self.classifier_)
            parts.append(self.model_(torch.from_numpy(agent_f), torch.from_numpy(prompt_f)).numpy())
        return np.concatenate(parts) if parts else np.zeros((0, len(index.agents) + 1), np.float32)

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model_.state_dict().items()}, str(directory / WEIGHTS))
        self.classifier_.save(directory)
        (directory / META).write_text(json.dumps({"format_version": FORMAT_VERSION, "config": asdict(self.config_),
                                                  "history": self.history_}, indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: Path) -> AgentRanker:
        from safetensors.torch import load_file

        meta = json.loads((directory / META).read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory / META}: format version {meta.get('format_version')!r}, this amo "
                             f"reads {FORMAT_VERSION}: retrain with `amo train-router`")
        config = RankerConfig(**meta["config"])
        ranker = cls(hidden=config.hidden, dropout=config.dropout)
        ranker.config_, ranker.history_ = config, meta.get("history", [])
        ranker.model_ = FeatureRanker(config.hidden, config.dropout)
        ranker.model_.load_state_dict(load_file(str(directory / WEIGHTS)))
        ranker.model_.eval()
        ranker.classifier_ = Classifier.load(directory)
        return ranker
