"""Domain towers: one MLP per domain, all run on the whole batch, each sample read from its own domain's tower.

Running every tower on every row (instead of routing rows) keeps every parameter in the graph of every
step, which data-parallel training needs; gradients still reach tower ``s`` only from rows of domain ``s``
because the logits are gathered by domain before the loss.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .experts import BatchedMLP


class DomainTowers(nn.Module):
    """``K`` towers ``MLP -> logit``.

    Shapes:
        ``forward(x)``: ``B x I`` (same input for every tower) or ``K x B x I`` -> logits ``K x B``.
    """

    def __init__(self, num_domains: int, input_dim: int, hidden_units: Sequence[int] = (),
                 activation: str = "ReLU", dropout: float = 0.0, batch_norm: bool = False):
        super().__init__()
        self.mlp = BatchedMLP(num_domains, input_dim, hidden_units, output_dim=1, activation=activation,
                              dropout=dropout, batch_norm=batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).squeeze(-1)


def gather_domain(per_domain: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
    """Pick each sample's own domain: ``K x B [x ...]`` and ``B`` domain indices -> ``B [x ...]``."""
    index = domain.view(1, -1, *([1] * (per_domain.dim() - 2))).expand(1, *per_domain.shape[1:])
    return per_domain.gather(0, index).squeeze(0)
