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
is as sharp as a classifier on agents with history and as general as similarity on new ones. A cold
fit repeats the cross-fit (folds dealt afresh each pass) while the passes' route features, rows x
agents, stay within `crossfit_cells`: a small data set shows the ranker many more prompts of hidden
agents (with one pass on the demo's 994 rows, whether a description-only agent was ever selected
depended on the seed; on CLINC150 eight passes put new agents level with cosine), and a large one
keeps one pass, so memory stays bounded.

    ranker = AgentRanker.from_params(params.router).fit(index, x_train, grades_train, val=(x_val, grades_val))
    scores = ranker.score(x_test, index)   # (n, A + 1), the separator last
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from amo.progress import Progress
from amo.router import listwise_loss
from amo.routing import (
    AGENT_FEATURES,
    PROMPT_FEATURES,
    AgentIndex,
    Classifier,
    add_columns,
    index_step_classifier,
    route_features,
)

log = logging.getLogger("amo")
WEIGHTS = "ranker.safetensors"
META = "ranker.json"
CROSSFIT = "crossfit.safetensors"  # the training rows' keys and folds, the fold classifiers: what a warm start reuses
CROSSFIT_META = "crossfit"  # its one metadata entry (JSON: group_folds, agent_ids)
FORMAT_VERSION = 1
MAX_REPEATS = 8  # cross-fit passes of a cold fit at most (AgentRanker.repeats)
FEATURES = [*AGENT_FEATURES, *PROMPT_FEATURES]  # the layout the MLP's first layer reads


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


def fit_classifier(x: np.ndarray, labels: np.ndarray, ids: Sequence[str], c: float, seed: int,
                   init: Classifier | None = None) -> Classifier:
    """Multinomial logistic regression (scikit-learn, lbfgs) on rows with a label (column of `ids`).
    With `init` (a classifier of the same encoder) lbfgs starts from its weights, agent by agent
    (zeros for an agent it lacks): the problem is strictly convex, so the optimum is the same and
    only the iterations to reach it are fewer."""
    from sklearn.linear_model import LogisticRegression

    classes = np.unique(labels)
    if len(classes) < 2:  # one class: a constant column, no evidence either way
        return Classifier(np.zeros((len(classes), x.shape[1]), np.float32), np.zeros(len(classes), np.float32),
                          tuple(ids[int(c)] for c in classes))
    model = LogisticRegression(C=c, max_iter=1000, random_state=seed)
    if init is not None and len(classes) > 2 and init.weights.shape[1] == x.shape[1]:
        row_of = {agent: i for i, agent in enumerate(init.agent_ids)}
        known = [(j, row_of[ids[int(k)]]) for j, k in enumerate(classes) if ids[int(k)] in row_of]
        coef, intercept = np.zeros((len(classes), x.shape[1])), np.zeros(len(classes))
        for j, i in known:
            coef[j], intercept[j] = init.weights[i], init.bias[i]
        model.set_params(warm_start=True)
        model.coef_, model.intercept_ = coef, intercept
    model.fit(x, labels)
    log.info("classifier: %d rows, %d agents, %d lbfgs iterations%s", len(x), len(classes), int(model.n_iter_[0]),
             " (warm-started)" if model.warm_start else "")
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


def classifier_pairs(grades: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, agent column) pairs the classifier learns from: every row's top-graded agents
    (`top_pairs`) and, for an agent that is the top-graded agent of no row, every row it is
    relevant in. Graded hierarchical labels (a review is its leaf category, grade 3, and that
    leaf's parent and top category, grades 2 and 1) never put a parent on top: without this,
    the parents get no classifier column and look like agents without history. Where every
    relevant agent is top-graded in some row (single-label data, equal-grade multi-label rows,
    the demo's graded pairs) the pairs are exactly `top_pairs`'."""
    agents = grades[:, :-1]
    top = agents.max(1, keepdims=True)
    is_top = (agents == top) & (top > 0)
    never_top = ~is_top.any(0)
    rows, columns = np.nonzero(is_top | ((agents > 0) & never_top[None, :]))
    return rows, columns


def batched_features(x: np.ndarray, index: AgentIndex, classifier: Classifier | None,
                     batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """route_features in batches of prompts: the per-agent example similarities of a whole fold
    at once would take (rows x agents x examples per agent) floats."""
    parts = [route_features(x[start:start + batch], index, classifier) for start in range(0, max(len(x), 1), batch)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def without_agents(classifier: Classifier, agents: set[str]) -> Classifier:
    """The classifier with no column for `agents` (the softmax over the others)."""
    keep = [i for i, agent in enumerate(classifier.agent_ids) if agent not in agents]
    return Classifier(classifier.weights[keep], classifier.bias[keep], tuple(classifier.agent_ids[i] for i in keep))


def _stack_and_free(parts: list[tuple], column: int) -> np.ndarray:
    """np.concatenate of every part's `column`, each dropped from `parts` once copied: the agent
    features of 100,000 rows are a gigabyte, and a plain concatenate holds them twice."""
    first = parts[0][column]
    out = np.empty((sum(len(p[column]) for p in parts), *first.shape[1:]), first.dtype)
    start = 0
    for i, part in enumerate(parts):
        block = part[column]
        out[start:start + len(block)] = block
        start += len(block)
        parts[i] = (*part[:column], None, *part[column + 1:])
    return out


@dataclass
class CrossFit:
    """How a fit cross-fitted, kept so that a warm start can reuse it: each training row's key
    (`amo.embeddings.text_keys`, (N, 8) uint8) and fold, each agent group's fold (by name) and the
    classifier each fold's features came from."""

    keys: np.ndarray
    folds: np.ndarray
    group_folds: dict[str, int]
    classifiers: list[Classifier]

    def save(self, directory: Path) -> None:
        from safetensors.numpy import save_file

        tensors = {"keys": np.ascontiguousarray(self.keys, np.uint8), "folds": self.folds.astype(np.int8)}
        for f, c in enumerate(self.classifiers):
            tensors[f"weights.{f}"] = np.ascontiguousarray(c.weights, np.float32)
            tensors[f"bias.{f}"] = np.ascontiguousarray(c.bias, np.float32)
        # One metadata entry: safetensors keeps metadata in a hash map whose order changes from
        # process to process, so two entries would make a forced re-run's file differ byte for byte.
        save_file(tensors, str(directory / CROSSFIT), metadata={CROSSFIT_META: json.dumps(
            {"group_folds": self.group_folds, "agent_ids": [list(c.agent_ids) for c in self.classifiers]},
            sort_keys=True)})

    @classmethod
    def load(cls, directory: Path) -> CrossFit:
        from safetensors import safe_open
        from safetensors.numpy import load_file

        with safe_open(str(directory / CROSSFIT), framework="np") as handle:
            meta = json.loads((handle.metadata() or {})[CROSSFIT_META])
        tensors = load_file(str(directory / CROSSFIT))
        ids = meta["agent_ids"]
        return cls(tensors["keys"], tensors["folds"].astype(np.int64), meta["group_folds"],
                   [Classifier(tensors[f"weights.{f}"], tensors[f"bias.{f}"], tuple(a)) for f, a in enumerate(ids)])


@dataclass
class _Plan:
    """Which fold each row and each agent group is in, the rows to featurize and, when reused,
    each fold's classifier."""

    fold_of_row: np.ndarray
    fold_of_group: dict[int, int]
    featurize: np.ndarray
    classifiers: list[Classifier] | None = None


@dataclass
class RankerConfig:
    hidden: int = 64
    dropout: float = 0.0


class AgentRanker:
    """Scikit-learn-style: `fit(...)` returns self; learned state ends in `_`."""

    model_: FeatureRanker
    classifier_: Classifier
    config_: RankerConfig
    passes_: int  # cross-fit passes of the last fit (AgentRanker.repeats)
    timings_: dict[str, float]  # seconds of the last fit: cross-fitting (of which fold classifiers), epochs,
    # serving classifier

    def __init__(self, hidden: int = 64, dropout: float = 0.0, epochs: int = 12, lr: float = 2e-3,
                 weight_decay: float = 1e-4, batch_size: int = 128, seed: int = 0, oos_weight: float = 1.0,
                 folds: int = 5, shots: Sequence[int] = (0, 0, 0, 1, 5, 20), drop_prob: float = 0.5,
                 classifier_c: float = 10.0, patience: int = 3, group_by: str = "mixed",
                 shot_columns: bool = True, column_min_examples: int = 5, crossfit_cells: int = 24_000_000) -> None:
        self.hidden, self.dropout, self.epochs, self.lr = hidden, dropout, epochs, lr
        self.weight_decay, self.batch_size, self.seed, self.oos_weight = weight_decay, batch_size, seed, oos_weight
        self.folds, self.shots, self.drop_prob, self.classifier_c = folds, tuple(shots), drop_prob, classifier_c
        self.patience, self.group_by, self.shot_columns = patience, group_by, shot_columns
        self.column_min_examples, self.crossfit_cells = column_min_examples, crossfit_cells
        self.generation_ = 0  # warm starts since the last cold fit
        self.crossfit_: CrossFit | None = None
        self.warm_: dict[str, Any] | None = None

    @classmethod
    def from_params(cls, params: Any) -> AgentRanker:
        """From params.yaml's `router` section (amo.config.RouterParams)."""
        return cls(**{k: getattr(params, k) for k in ("hidden", "dropout", "epochs", "lr", "weight_decay",
                                                       "batch_size", "seed", "oos_weight", "folds", "shots",
                                                       "drop_prob", "classifier_c", "patience", "group_by",
                                                       "shot_columns", "column_min_examples", "crossfit_cells")})

    def _groups(self, index: AgentIndex) -> tuple[np.ndarray, list[str]]:
        """Agents hidden together in cross-fitting, (group of each agent, name of each group): by
        domain when there are enough domains (a new domain arrives as a block of related agents),
        else one agent each. `mixed`: half of the domains (a seeded choice) as blocks, the agents
        of the other half one by one, so training sees both a new domain and a new agent among
        known neighbours."""
        if self.group_by in ("domain", "mixed"):
            domains = [agent.domain for agent in index.agents]
            if all(domains) and len(set(domains)) >= self.folds:
                names, groups = np.unique(domains, return_inverse=True)
                if self.group_by == "domain":
                    return groups, [f"domain:{name}" for name in names]
                split = set(np.random.default_rng(self.seed).permutation(len(names))[:len(names) // 2].tolist())
                labels = [f"agent:{agent.id}" if int(g) in split else f"domain:{names[g]}"
                          for agent, g in zip(index.agents, groups)]
                group_names, mixed = np.unique(labels, return_inverse=True)
                return mixed, group_names.tolist()
        return np.arange(len(index.agents)), [f"agent:{agent}" for agent in index.ids]

    def repeats(self, rows: int, agents: int) -> int:
        """Cross-fit passes of a cold fit that featurizes `rows` prompts (training and
        validation) against `agents` agents a pass: as many as fit in `crossfit_cells` route-feature
        cells (rows x agents, 13 float32 features each), at least one, at most MAX_REPEATS. Each pass
        deals rows and agent groups to folds afresh, so a small catalogue still shows the ranker
        many prompts of agents without history, while a large one keeps one pass (0: always one)."""
        return max(1, min(MAX_REPEATS, self.crossfit_cells // max(rows * agents, 1)))

    def _cold_plan(self, n: int, groups: np.ndarray, rng: np.random.Generator) -> _Plan:
        """Rows in random folds, agent groups dealt round-robin over the folds in random order."""
        fold_of_row = rng.permutation(np.arange(n) % self.folds)
        order = rng.permutation(np.unique(groups))
        return _Plan(fold_of_row, dict(zip(order.tolist(), (np.arange(len(order)) % self.folds).tolist())),
                     np.ones(n, bool))

    def _warm_plan(self, parent: AgentRanker, keys: np.ndarray, names: list[str], replay: float,
                   rng: np.random.Generator) -> _Plan:
        """The parent's folds for its rows and groups (new ones drawn at random), its fold
        classifiers, and the rows to train on: those it never saw plus `replay` old rows per new one."""
        assert parent.crossfit_ is not None
        seen = {k.tobytes(): int(f) for k, f in zip(parent.crossfit_.keys, parent.crossfit_.folds)}
        fold_of_row = np.array([seen.get(k.tobytes(), -1) for k in keys], np.int64)
        new = fold_of_row < 0
        fold_of_row[new] = rng.integers(0, self.folds, int(new.sum()))
        fold_of_group = {g: parent.crossfit_.group_folds.get(name, -1) for g, name in enumerate(names)}
        for g in (g for g, f in fold_of_group.items() if f < 0):
            fold_of_group[g] = int(rng.integers(0, self.folds))
        old = np.flatnonzero(~new)
        replayed = rng.choice(old, min(len(old), round(replay * int(new.sum()))), replace=False)
        featurize = new.copy()
        featurize[replayed] = True
        self.warm_ = {"new_rows": int(new.sum()), "replay_rows": len(replayed), "old_rows": len(old)}
        return _Plan(fold_of_row, fold_of_group, featurize, parent.crossfit_.classifiers)

    def _crossfit(self, index: AgentIndex, x: np.ndarray, grades: np.ndarray, groups: np.ndarray,
                  rng: np.random.Generator, extra: np.ndarray | None, plan: _Plan
                  ) -> tuple[list[tuple], list[tuple], list[Classifier]]:
        """Per fold: (rows, agent features, prompt features, hidden group of the row's agent or
        -1) of the plan's rows to featurize, the same for the `extra` (validation) rows, each
        given a random fold, and each fold's classifier (fitted, or the plan's)."""
        ids = index.ids
        labels = primary_labels(grades)
        pair_rows, pair_agents = classifier_pairs(grades)
        relevant = grades[:, :-1] > 0
        fold_of_row, fold_of_group = plan.fold_of_row, plan.fold_of_group
        extra_fold = rng.integers(0, self.folds, len(extra)) if extra is not None else None
        parts, extra_parts, classifiers = [], [], []
        for f in range(self.folds):
            hidden = np.array([fold_of_group[int(g)] == f for g in groups])
            outside = fold_of_row != f
            known = outside[pair_rows] & ~hidden[pair_agents]
            if plan.classifiers is None:
                clock = time.perf_counter()
                classifiers.append(fit_classifier(x[pair_rows[known]], pair_agents[known], ids, self.classifier_c,
                                                  self.seed))
                self.timings_["fold_classifiers_seconds"] += round(time.perf_counter() - clock, 2)
                classifier = classifiers[-1]
            else:  # reused: its agents hidden in this fold (new to it or regrouped) lose their column
                classifiers.append(plan.classifiers[f])
                classifier = without_agents(plan.classifiers[f], {ids[a] for a in np.flatnonzero(hidden)})
            pairs = [np.argwhere(relevant & outside[:, None] & ~hidden[None, :])]
            shots = []
            for agent in np.flatnonzero(hidden):  # the index step's state: k examples, no classifier column
                k = int(rng.choice(self.shots))
                pool = np.flatnonzero(outside & relevant[:, agent])
                if k and len(pool):
                    chosen = rng.choice(pool, min(k, len(pool)), replace=False)
                    shots.append(np.stack([chosen, np.full(len(chosen), agent)], 1))
            pairs.extend(shots)
            columned = [s for s in shots if len(s) >= max(self.column_min_examples, 1)]
            if columned and self.shot_columns:  # ... and the column the index step fits on those k
                classifier = self._shot_columns(classifier, x, pair_rows[known], pair_agents[known],
                                                np.concatenate(columned), ids)
            bank = np.concatenate(pairs)
            fold_index = AgentIndex(index.agents, index.embeddings, x[bank[:, 0]], bank[:, 1])
            rows = np.flatnonzero((fold_of_row == f) & plan.featurize)
            row_hidden = (labels[rows] >= 0) & hidden[np.maximum(labels[rows], 0)]
            parts.append((rows, *batched_features(x[rows], fold_index, classifier),
                          np.where(row_hidden, groups[np.maximum(labels[rows], 0)], -1)))
            if extra is not None and extra_fold is not None:
                chosen = np.flatnonzero(extra_fold == f)
                extra_parts.append((chosen, *batched_features(extra[chosen], fold_index, classifier)))
            log.info("router cross-fit fold %d/%d: %d agents hidden, %d rows, %d examples",
                     f + 1, self.folds, int(hidden.sum()), len(rows), len(bank))
        return parts, extra_parts, classifiers

    def _shot_columns(self, classifier: Classifier, x: np.ndarray, rows: np.ndarray, agents: np.ndarray,
                      shots: np.ndarray, ids: list[str]) -> Classifier:
        """A fold's classifier with a column for each hidden agent fitted on its shots alone, as
        the index step fits one for a new agent's examples (amo.routing.add_columns)."""
        has = set(classifier.agent_ids)
        keep = np.array([ids[a] in has for a in agents], bool)
        labels = [ids[a] for a in agents[keep]] + [ids[a] for a in shots[:, 1]]
        new = list(dict.fromkeys(ids[a] for a in shots[:, 1]))
        return add_columns(classifier, np.concatenate([x[rows[keep]], x[shots[:, 0]]]), labels, new,
                           self.classifier_c, self.seed)

    def index_step(self, index: AgentIndex) -> Classifier:
        """The classifier that serves `index`: this ranker's, plus a column for every agent the
        index gives at least `column_min_examples` examples but the classifier never saw
        (amo.routing.index_step_classifier); without `shot_columns`, this ranker's alone."""
        if not self.shot_columns:  # trained without few-shot columns: it would not know how far to trust one
            return self.classifier_
        return index_step_classifier(self.classifier_, index, self.classifier_c, self.seed, self.column_min_examples)

    def compatible(self, parent: AgentRanker) -> str | None:
        """Why `parent` cannot warm-start this ranker (None: it can)."""
        if parent.crossfit_ is None:
            return "the champion's ranker kept no cross-fit state (rows, folds, fold classifiers)"
        if parent.config_ != RankerConfig(self.hidden, self.dropout):
            return (f"the champion's ranker is {asdict(parent.config_)}, params ask for hidden={self.hidden}, "
                    f"dropout={self.dropout}")
        if len(parent.crossfit_.classifiers) != self.folds:
            return f"the champion cross-fitted {len(parent.crossfit_.classifiers)} folds, params ask for {self.folds}"
        return None

    def fit(self, index: AgentIndex, x: np.ndarray, grades: np.ndarray,
            val: tuple[np.ndarray, np.ndarray] | None = None,
            progress: Callable[[dict[str, float]], None] | None = None,
            keys: np.ndarray | None = None, parent: AgentRanker | None = None, replay: float = 4.0) -> AgentRanker:
        """index: the agents (descriptions; its examples are not used), x (N, D) unit prompt
        embeddings with grades (N, A + 1) from `grade_matrix`; val likewise, for early stopping
        (the epoch with the lowest validation loss is kept, `patience` epochs without a better one
        stop training). The serving classifier is then fitted on every labelled row.

        keys (N, 8): the rows' prompt keys, kept (with the folds) so that this ranker can be a
        parent. parent: a fitted ranker (`compatible`) to warm-start from: its MLP weights are the
        start (and the one to beat on val), its folds and fold classifiers are reused, and only
        the rows it never saw plus `replay` old rows per new one are featurized and trained on;
        its serving classifier starts lbfgs."""
        if parent is not None and (keys is None or self.compatible(parent) is not None):
            raise ValueError(f"cannot warm-start: {self.compatible(parent) or 'no keys for the rows'}")
        rng = np.random.default_rng(self.seed)
        torch.manual_seed(self.seed)
        clock = time.perf_counter()
        groups, names = self._groups(index)
        if parent is None or keys is None:
            passes = self.repeats(len(x) + (0 if val is None else len(val[0])), len(index.agents))
            plans, self.warm_ = [self._cold_plan(len(x), groups, rng) for _ in range(passes)], None
        else:
            plans = [self._warm_plan(parent, keys, names, replay, rng)]
        parts: list[tuple] = []
        val_parts: list[tuple] = []
        fold_classifiers: list[Classifier] = []
        self.timings_ = {"fold_classifiers_seconds": 0.0}
        for plan in plans:  # each repeat hides other agents in other folds: more "no history" to learn from
            more, more_val, classifiers = self._crossfit(index, x, grades, groups, rng,
                                                         None if val is None else val[0], plan)
            parts, val_parts = parts + more, val_parts + more_val
            fold_classifiers = fold_classifiers or classifiers  # the first plan's: what a warm start reuses
        plan, self.passes_ = plans[0], len(plans)
        self.timings_["crossfit_seconds"] = round(time.perf_counter() - clock, 2)  # fold classifiers included
        clock = time.perf_counter()
        self.generation_ = 0 if parent is None else parent.generation_ + 1
        self.crossfit_ = None if keys is None else CrossFit(
            keys, plan.fold_of_row, {names[g]: f for g, f in plan.fold_of_group.items()}, fold_classifiers)
        rows = np.concatenate([p[0] for p in parts])
        agent_f = torch.from_numpy(_stack_and_free(parts, 1))
        prompt_f = torch.from_numpy(_stack_and_free(parts, 2))
        y = torch.from_numpy(grades[rows].astype(np.float32))
        weights = torch.where(y[:, :-1].max(1).values > 0, 1.0, float(self.oos_weight))
        # A row of a hidden agent loses that agent's whole group with probability drop_prob: a
        # prompt for an agent nobody added must go to the separator, not to a look-alike.
        drop_group = torch.from_numpy(np.concatenate([p[3] for p in parts]))
        group_of = torch.from_numpy(np.concatenate([groups, [-2]]))
        model = FeatureRanker(self.hidden, self.dropout)
        best: tuple[float, dict[str, torch.Tensor]] | None = None
        if parent is not None:  # the parent's weights are the start, and the model to beat on val
            model.load_state_dict(parent.model_.state_dict())
            if val is not None and val_parts:
                best = (round(self._val_loss(model, val_parts, val[1]), 5),
                        {k: v.clone() for k, v in model.state_dict().items()})
                assert self.warm_ is not None
                self.warm_["start_val_loss"] = best[0]
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        generator = torch.Generator().manual_seed(self.seed)
        stale = 0
        self.history_: list[dict[str, float]] = []
        bar = Progress("router epoch", self.epochs, log.info)  # a bar on a terminal, else a line per epoch
        for epoch in range(self.epochs if len(y) else 0):
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
        self.timings_["epochs_seconds"] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()
        pair_rows, pair_agents = classifier_pairs(grades)
        self.classifier_ = fit_classifier(x[pair_rows], pair_agents, index.ids, self.classifier_c, self.seed,
                                          init=None if parent is None else parent.classifier_)
        self.timings_["classifier_seconds"] = round(time.perf_counter() - clock, 2)
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
    def score(self, prompts: np.ndarray, index: AgentIndex, batch: int = 512,
              classifier: Classifier | None = None) -> np.ndarray:
        """(N, A + 1) scores for the index's agents, the separator last; with the ranker's own
        classifier unless `classifier` (e.g. `index_step(index)`'s) is given."""
        parts = []
        for start in range(0, len(prompts), batch):
            agent_f, prompt_f = route_features(prompts[start:start + batch], index, classifier or self.classifier_)
            parts.append(self.model_(torch.from_numpy(agent_f), torch.from_numpy(prompt_f)).numpy())
        return np.concatenate(parts) if parts else np.zeros((0, len(index.agents) + 1), np.float32)

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model_.state_dict().items()}, str(directory / WEIGHTS))
        self.classifier_.save(directory)
        if self.crossfit_ is not None:
            self.crossfit_.save(directory)
        (directory / META).write_text(json.dumps({"format_version": FORMAT_VERSION, "config": asdict(self.config_),
                                                  "features": FEATURES, "generation": self.generation_,
                                                  "warm": self.warm_, "history": self.history_},
                                                 indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: Path) -> AgentRanker:
        from safetensors.torch import load_file

        meta = json.loads((directory / META).read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory / META}: format version {meta.get('format_version')!r}, this amo "
                             f"reads {FORMAT_VERSION}: retrain with `amo train-router`")
        if meta.get("features", FEATURES) != FEATURES:
            raise ValueError(f"{directory / META}: features {meta['features']}, this amo computes {FEATURES}: "
                             "retrain with `amo train-router`")
        config = RankerConfig(**meta["config"])
        ranker = cls(hidden=config.hidden, dropout=config.dropout)
        ranker.config_, ranker.history_ = config, meta.get("history", [])
        ranker.generation_, ranker.warm_ = meta.get("generation", 0), meta.get("warm")
        ranker.crossfit_ = CrossFit.load(directory) if (directory / CROSSFIT).is_file() else None
        ranker.model_ = FeatureRanker(config.hidden, config.dropout)
        ranker.model_.load_state_dict(load_file(str(directory / WEIGHTS)))
        ranker.model_.eval()
        ranker.classifier_ = Classifier.load(directory)
        return ranker
