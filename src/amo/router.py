"""The router: listwise learning to rank over agent descriptions, with a learned separator.

A scoring model f(prompt, description) ranks every agent and one extra candidate, the
separator. Relevant agents must score above it and irrelevant ones below, so the agents above
the separator are the selection (dynamic top-k) and none above it means abstain. Agents enter
only through their description embeddings: adding one needs no retraining.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

SCORERS = ("mlp", "bilinear", "siamese")


class ScoringModel(nn.Module):
    """f(prompt, candidate) for every agent plus the separator: (B, D), (C, D) -> (B, C + 1).

    Prompts and candidates are first projected to a small dimension (once per prompt, once per
    candidate), so the per-pair work is small: an interaction MLP over [p, d, p*d, |p-d|] of the
    projections (`kind="mlp"`) or their dot product (`kind="bilinear"`; `kind="siamese"` projects
    prompts and descriptions with one shared matrix, a learned metric rather than per-agent
    weights, so it carries over to agents never seen in training). A learned multiple of the
    encoder's cosine similarity is added to either, which keeps unseen agents' descriptions
    meaningful. The separator is a learned pseudo-description scored by the same function, so
    its threshold moves with the prompt.
    """

    def __init__(self, dim: int, hidden: int, dropout: float, proj_dim: int = 64,
                 kind: str = "mlp") -> None:
        super().__init__()
        if kind not in SCORERS:
            raise ValueError(f"scorer kind must be one of {SCORERS}, got {kind!r}")
        self.kind = kind
        self.separator = nn.Parameter(torch.zeros(dim))
        self.prompt_proj = nn.Linear(dim, proj_dim)
        self.agent_proj: nn.Linear | None = None if kind == "siamese" else nn.Linear(dim, proj_dim)
        self.cosine_scale = nn.Parameter(torch.tensor(10.0))
        self.mlp = nn.Sequential(
            nn.Linear(4 * proj_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1),
        ) if kind == "mlp" else None

    def forward(self, prompts: torch.Tensor, agents: torch.Tensor) -> torch.Tensor:
        candidates = torch.cat([agents, self.separator.unsqueeze(0)], dim=0)  # (C+1, D)
        p = self.prompt_proj(prompts)  # (B, k)
        d = (self.agent_proj or self.prompt_proj)(candidates)  # (C+1, k)
        cosine = prompts @ candidates.t()  # (B, C+1); prompts and agents are unit vectors
        if self.mlp is None:
            return p @ d.t() + self.cosine_scale * cosine
        # The first layer over [p, d, p*d, |p-d|], split by block: the p and d blocks are
        # computed once per prompt and once per candidate instead of once per pair.
        first, rest = cast(nn.Linear, self.mlp[0]), self.mlp[1:]
        w_p, w_d, w_pd, w_abs = first.weight.chunk(4, dim=1)
        pairs_p, pairs_d = p.unsqueeze(1), d.unsqueeze(0)  # (B, 1, k), (1, C+1, k)
        hidden = ((p @ w_p.t()).unsqueeze(1) + (d @ w_d.t() + first.bias).unsqueeze(0)
                  + (pairs_p * pairs_d) @ w_pd.t() + (pairs_p - pairs_d).abs() @ w_abs.t())
        return rest(hidden).squeeze(-1) + self.cosine_scale * cosine  # (B, C+1)


def listwise_loss(scores: torch.Tensor, grades: torch.Tensor,
                  row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Generalised uRank over graded relevance (Zhu, 2510.22781).

    For every candidate d with grade g > 0: -log(exp f(d) / (exp f(d) + sum exp f(d'))), the sum
    over candidates d' of lower grade. The separator has grade 0.5, so it is a "less relevant"
    rival of every relevant agent and must itself beat every irrelevant one.
    scores, grades: (B, C); returns the mean over active terms, each weighted by its row's
    weight when `row_weights` (B,) is given. O(B x C) memory: with candidates sorted by grade,
    the rivals of d are a prefix, whose log-sum-exp is a running one (a catalogue of 4,076
    agents no longer needs a (B, C, C) tensor).
    """
    order = torch.argsort(grades, dim=1, stable=True)
    ranked = torch.gather(grades, 1, order).contiguous()  # (B, C) grades ascending
    prefix = torch.logcumsumexp(torch.gather(scores, 1, order), dim=1)  # (B, C)
    below = torch.searchsorted(ranked, grades.contiguous())  # (B, C): rivals of strictly lower grade
    has_rival = below > 0
    rivals = torch.gather(prefix, 1, (below - 1).clamp(min=0)).masked_fill(~has_rival, float("-inf"))
    terms = torch.logaddexp(scores, rivals) - scores  # (B, C), -log P(d)
    active = (grades > 0) & has_rival
    if row_weights is None:
        return terms[active].sum() / active.sum().clamp(min=1)
    weights = row_weights.unsqueeze(1).expand_as(terms)[active]
    return (terms[active] * weights).sum() / weights.sum().clamp(min=1e-12)


def candidate_columns(grades: torch.Tensor, max_candidates: int, generator: torch.Generator) -> torch.Tensor:
    """Every agent column of a batch's grades (B, A + 1), or for a catalogue above
    `max_candidates` the batch's relevant agents plus sampled negatives; the separator last."""
    n_agents = grades.shape[1] - 1
    if n_agents <= max_candidates:
        return torch.arange(n_agents + 1)
    relevant = torch.nonzero(grades[:, :-1].sum(0) > 0).flatten()
    others = torch.randperm(n_agents, generator=generator)
    others = others[~torch.isin(others, relevant)][: max(max_candidates - len(relevant), 0)]
    return torch.cat([relevant, others, torch.tensor([n_agents])])


@dataclass
class RouterConfig:
    dim: int
    hidden: int = 256
    dropout: float = 0.1
    proj_dim: int = 64
    scorer: str = "mlp"


def _build(config: RouterConfig) -> ScoringModel:
    return ScoringModel(config.dim, config.hidden, config.dropout, config.proj_dim, config.scorer)


class ListwiseRouter:
    """Scikit-learn-style estimator around ScoringModel: fit / score / save / load."""

    def __init__(self, hidden: int = 256, dropout: float = 0.1, epochs: int = 60, lr: float = 1e-3,
                 weight_decay: float = 1e-4, batch_size: int = 64, seed: int = 0,
                 max_candidates: int = 512, proj_dim: int = 64, scorer: str = "mlp",
                 oos_weight: float = 1.0) -> None:
        self.hidden = hidden
        self.dropout = dropout
        self.proj_dim = proj_dim
        self.scorer = scorer
        self.oos_weight = oos_weight
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.seed = seed
        self.max_candidates = max_candidates

    def fit(self, prompts: np.ndarray, grades: np.ndarray, agents: np.ndarray,
            val: tuple[np.ndarray, np.ndarray] | None = None, log: Any = None) -> ListwiseRouter:
        """prompts (N, D) and agents (A, D) embeddings, grades (N, A + 1) from grade_matrix.

        With `val`, the epoch with the lowest validation loss is kept. Out-of-scope rows (no
        relevant agent) weigh `oos_weight` in the loss, the others 1.
        """
        torch.manual_seed(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        self.config_ = RouterConfig(dim=prompts.shape[1], hidden=self.hidden, dropout=self.dropout,
                                    proj_dim=self.proj_dim, scorer=self.scorer)
        model = _build(self.config_)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        x, y, a = torch.from_numpy(prompts), torch.from_numpy(grades), torch.from_numpy(agents)
        w = torch.where((y[:, :-1] > 0).any(dim=1), 1.0, float(self.oos_weight))
        best: tuple[float, dict[str, torch.Tensor]] | None = None
        self.history_: list[dict[str, float]] = []
        for epoch in range(self.epochs):
            model.train()
            total, batches = 0.0, 0
            for rows in torch.randperm(len(x), generator=generator).split(self.batch_size):
                columns = candidate_columns(y[rows], self.max_candidates, generator)
                scores = model(x[rows], a[columns[:-1]])
                loss = listwise_loss(scores, y[rows][:, columns], w[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total, batches = total + loss.item(), batches + 1
            record = {"epoch": epoch + 1, "train_loss": total / max(batches, 1)}
            if val is not None:
                record["val_loss"] = self._loss(model, val[0], val[1], agents)
                if best is None or record["val_loss"] < best[0]:
                    best = (record["val_loss"], {k: v.clone() for k, v in model.state_dict().items()})
            self.history_.append(record)
            if log is not None:
                log(record)
        if best is not None:
            model.load_state_dict(best[1])
        model.eval()
        self.model_ = model
        return self

    @staticmethod
    @torch.no_grad()
    def _loss(model: ScoringModel, prompts: np.ndarray, grades: np.ndarray, agents: np.ndarray,
              max_elements: int = 20_000_000) -> float:
        """Validation loss over all agents, in chunks of prompts: listwise_loss builds (B, C, C)
        tensors, ~4 GB for 55 prompts against 4,076 agents in one piece. Chunk means are weighted
        by their relevant-candidate counts (the active terms), so the result equals the unchunked
        loss."""
        model.eval()
        a = torch.from_numpy(agents)
        chunk = max(1, max_elements // (len(agents) + 1) ** 2)
        total, count = 0.0, 0
        for start in range(0, len(prompts), chunk):
            g = torch.from_numpy(grades[start:start + chunk])
            n = int((g > 0).sum())
            total += float(listwise_loss(model(torch.from_numpy(prompts[start:start + chunk]), a), g)) * n
            count += n
        return total / max(count, 1)

    @torch.no_grad()
    def score(self, prompts: np.ndarray, agents: np.ndarray, batch: int = 256) -> np.ndarray:
        """(N, A + 1) scores, the separator last."""
        a = torch.from_numpy(np.ascontiguousarray(agents, dtype=np.float32))
        parts = [self.model_(torch.from_numpy(np.ascontiguousarray(prompts[i:i + batch], dtype=np.float32)), a)
                 for i in range(0, len(prompts), batch)]
        return torch.cat(parts).numpy() if parts else np.zeros((0, len(agents) + 1), np.float32)

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model_.state_dict().items()},
                  str(directory / "router.safetensors"))
        (directory / "router.json").write_text(json.dumps(
            {"config": asdict(self.config_), "history": self.history_}, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> ListwiseRouter:
        from safetensors.torch import load_file

        meta = json.loads((directory / "router.json").read_text())
        config = RouterConfig(**meta["config"])
        router = cls(hidden=config.hidden, dropout=config.dropout, proj_dim=config.proj_dim,
                     scorer=config.scorer)
        router.config_ = config
        router.history_ = meta.get("history", [])
        model = _build(config)
        model.load_state_dict(load_file(str(directory / "router.safetensors")))
        model.eval()
        router.model_ = model
        return router
