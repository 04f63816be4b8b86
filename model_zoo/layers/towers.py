"""Domain towers: one MLP per domain, each run on its own domain's rows only.

Rows are routed (:meth:`~model_zoo.layers.BatchedMLP.routed`): tower ``s`` sees exactly the
rows of domain ``s``, so its batch-norm statistics are its own domain's and its cost does not grow with ``K``
(running every tower on every row and keeping each row's own logit would cost ``K`` times more and normalise each
tower with every domain's rows). Every tower's weights stay in the graph of every step (an empty block of rows
gives them a zero gradient), which data-parallel training needs.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .experts import BatchedMLP
from .routing import DomainGroups


class DomainTowers(nn.Module):
    """``K`` towers ``MLP -> logit``, tower ``s`` on the rows of domain ``s``.

    Shapes:
        ``forward(x, groups)``: ``B x I`` (each row's tower input) or ``K x B x I`` (slot ``s`` = domain ``s``'s
        input of every row; row ``b`` reads slot ``domain[b]``) -> logits ``B``, row ``b`` from tower
        ``domain[b]``.
        ``all_domains(x)``: ``B x I`` or ``K x B x I`` -> ``K x B``, every tower on every row (for analyses that
        compare towers on the same rows; in training mode its batch norm would mix domains).
    """

    def __init__(self, num_domains: int, input_dim: int, hidden_units: Sequence[int] = (),
                 activation: str = "ReLU", dropout: float = 0.0, batch_norm: bool = False):
        super().__init__()
        self.mlp = BatchedMLP(num_domains, input_dim, hidden_units, output_dim=1, activation=activation,
                              dropout=dropout, batch_norm=batch_norm)

    def forward(self, x: torch.Tensor, groups: DomainGroups) -> torch.Tensor:
        return self.mlp.routed(x, groups).squeeze(-1)

    def all_domains(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).squeeze(-1)


def gather_domain(per_domain: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
    """Pick each sample's own domain: ``K x B [x ...]`` and ``B`` domain indices -> ``B [x ...]``."""
    index = domain.view(1, -1, *([1] * (per_domain.dim() - 2))).expand(1, *per_domain.shape[1:])
    return per_domain.gather(0, index).squeeze(0)
