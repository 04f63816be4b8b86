"""Group the rows of a batch by domain, for layers whose weights differ per domain.

A per-domain linear map (a domain's gate, STAR's domain weights) only needs the rows of its own domain.
Computing it for every domain on every row costs ``K`` times more; grouping costs one sort. Every domain's
weights stay in the autograd graph even when the batch has none of its rows (an empty matmul gives them a
zero gradient), so data-parallel training sees no unused parameter.
"""
from __future__ import annotations

import torch


class DomainGroups:
    """The rows of a batch sorted by domain.

    Args:
        domain: tower index of each row, ``B``.
        num_domains: ``K``.
    """

    def __init__(self, domain: torch.Tensor, num_domains: int):
        self.domain = domain
        self.num_domains = num_domains
        self.order = torch.argsort(domain, stable=True)
        self.counts = torch.bincount(domain, minlength=num_domains).tolist()
        self.inverse = torch.empty_like(self.order)
        self.inverse[self.order] = torch.arange(domain.shape[0], device=domain.device)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``B x ...`` -> ``K`` tensors, the rows of each domain (``n_s x ...``)."""
        return torch.split(x.index_select(0, self.order), self.counts)

    def merge(self, parts) -> torch.Tensor:
        """Inverse of :meth:`split`: ``K`` tensors of ``n_s x ...`` -> ``B x ...`` in the original row order."""
        return torch.cat(list(parts), dim=0).index_select(0, self.inverse)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Row ``b`` times its own domain's weights: ``x`` ``B x I``, ``weight`` ``K x I x O``, ``bias`` ``K x O``
        -> ``B x O``."""
        parts = []
        for s, rows in enumerate(self.split(x)):
            out = rows @ weight[s]
            parts.append(out + bias[s] if bias is not None else out)
        return self.merge(parts)
