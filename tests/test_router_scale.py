"""The router on large catalogues: validation loss computed in chunks equals the one-piece loss."""

from __future__ import annotations

import numpy as np
import torch

from amo.router import ListwiseRouter, ScoringModel, listwise_loss


def test_chunked_validation_loss_equals_the_whole_loss() -> None:
    """Splitting validation prompts into chunks (to bound the (B, C, C) tensors) does not change
    the loss, with graded, multi-label and out-of-scope rows."""
    torch.manual_seed(0)
    model = ScoringModel(16, 8, 0.0, proj_dim=8)
    rng = np.random.default_rng(0)
    prompts = rng.normal(size=(37, 16)).astype(np.float32)
    agents = rng.normal(size=(50, 16)).astype(np.float32)
    grades = np.zeros((37, 51), np.float32)
    grades[:, -1] = 0.5
    for row in range(37):
        if row % 5:  # every fifth prompt is out of scope
            grades[row, rng.choice(50, size=1 + row % 3, replace=False)] = rng.integers(1, 3)
    with torch.no_grad():
        whole = float(listwise_loss(model(torch.from_numpy(prompts), torch.from_numpy(agents)),
                                    torch.from_numpy(grades)))
    assert ListwiseRouter._loss(model, prompts, grades, agents) == whole  # one chunk
    chunked = ListwiseRouter._loss(model, prompts, grades, agents, max_elements=3 * 51 * 51)
    assert abs(chunked - whole) < 1e-5
