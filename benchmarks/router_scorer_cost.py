"""Cost of one training step of the router's scorer on a CLINC-sized problem, per scorer kind,
against the interaction MLP amo shipped before (the full 4 x 384 features per pair, 256 units).

    python benchmarks/router_scorer_cost.py

A step is forward + listwise loss + backward + AdamW on a batch of prompts against 150 agents and
the separator, with random unit vectors (cost does not depend on the values). CPU time of this
process (time.process_time), so a busy shared machine does not inflate it; one thread.
Writes benchmarks/results/router_scorer_cost.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from torch import nn

from amo.router import ScoringModel, listwise_loss

RESULTS = Path("benchmarks/results")


class PreviousScoringModel(nn.Module):
    """The scorer before this change: an MLP over [p, d, p*d, |p-d|] of the raw embeddings."""

    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.separator = nn.Parameter(torch.zeros(dim))
        self.mlp = nn.Sequential(nn.Linear(4 * dim, hidden), nn.GELU(), nn.Linear(hidden, hidden // 2),
                                 nn.GELU(), nn.Linear(hidden // 2, 1))

    def forward(self, prompts: torch.Tensor, agents: torch.Tensor) -> torch.Tensor:
        candidates = torch.cat([agents, self.separator.unsqueeze(0)], dim=0)
        p = prompts.unsqueeze(1).expand(-1, candidates.shape[0], -1)
        d = candidates.unsqueeze(0).expand(prompts.shape[0], -1, -1)
        return self.mlp(torch.cat([p, d, p * d, (p - d).abs()], dim=-1)).squeeze(-1)


def step_seconds(model: nn.Module, prompts: torch.Tensor, agents: torch.Tensor, grades: torch.Tensor,
                 steps: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start = time.process_time()
    for _ in range(steps):
        loss = listwise_loss(model(prompts, agents), grades)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.process_time() - start) / steps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--agents", type=int, default=150)
    parser.add_argument("--prompts", type=int, default=15100, help="training prompts per epoch")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "router_scorer_cost.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dim = 384
    prompts = nn.functional.normalize(torch.randn(args.batch_size, dim), dim=1)
    agents = nn.functional.normalize(torch.randn(args.agents, dim), dim=1)
    grades = torch.zeros(args.batch_size, args.agents + 1)
    grades[torch.arange(args.batch_size), torch.randint(0, args.agents, (args.batch_size,))] = 1.0
    grades[:, -1] = 0.5
    models = {"previous (4x384 MLP, 256 units)": PreviousScoringModel(dim),
              "mlp:64": ScoringModel(dim, 64, 0.1, 64, "mlp"),
              "bilinear:384": ScoringModel(dim, 64, 0.1, 384, "bilinear"),
              "siamese:384": ScoringModel(dim, 64, 0.1, 384, "siamese")}
    steps_per_epoch = -(-args.prompts // args.batch_size)
    result: dict = {"command": "python " + shlex.join(["benchmarks/router_scorer_cost.py", *(argv or sys.argv[1:])]),
                    "threads": 1, "timing": "CPU seconds of this process (shared machine)",
                    "batch_size": args.batch_size, "candidates": args.agents + 1, "scorers": {}}
    for name, model in models.items():
        seconds = step_seconds(model, prompts, agents, grades, args.steps)
        result["scorers"][name] = {"step_ms": round(1000 * seconds, 1),
                                   "epoch_seconds_estimate": round(seconds * steps_per_epoch, 1),
                                   "parameters": sum(p.numel() for p in model.parameters())}
        print(name, result["scorers"][name], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
