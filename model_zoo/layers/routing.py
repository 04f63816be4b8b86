"""Group the rows of a batch by domain, for layers whose weights differ per domain.

A per-domain module (a domain's tower, gate or task layer, STAR's domain weights) only needs the rows of its own
domain. Computing it for every domain on every row costs ``K`` times more, and a batch norm inside it would take
its statistics from every domain's rows; grouping costs one sort. Every domain's weights stay in the autograd
graph even when the batch has none of its rows (an empty matmul gives them a zero gradient), so data-parallel
training sees no unused parameter.

Rows can be handled in *sorted order* (all of domain 0's rows, then domain 1's, ...): :meth:`DomainGroups.sort`
puts a batch in that order, :meth:`DomainGroups.unsort` back, and the per-domain primitives
(:meth:`DomainGroups.sorted_linear`, :func:`~model_zoo.layers.norms.domain_batch_norm`) work on sorted rows, so
that a stack of per-domain layers sorts once and unsorts once.
"""
from __future__ import annotations

import torch


class _PermuteRows(torch.autograd.Function):
    """``x.index_select(dim, perm)`` for a permutation ``perm``, whose gradient is the inverse permutation of the
    incoming gradient: a second gather. Autograd's own backward of ``index_select`` is ``index_add`` into zeros,
    which the CPU runs one index at a time (a few percent of a small model's step); for a permutation both give
    the same values, since every row receives exactly one gradient row."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.dim = dim
        ctx.save_for_backward(inverse)
        return x.index_select(dim, perm)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(ctx.dim, inverse), None, None, None


def permute_rows(x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Rows of ``x`` (along ``dim``) in the order ``perm``; ``inverse`` is ``perm``'s inverse permutation."""
    if dim == 1 and x.shape[0] == 1:  # one slot: gather along the leading axis of the 2-D view (the fast path)
        return _PermuteRows.apply(x.squeeze(0), 0, perm, inverse).unsqueeze(0)
    return _PermuteRows.apply(x, dim, perm, inverse)


class DomainGroups:
    """The rows of a batch sorted by domain.

    Args:
        domain: tower index of each row, ``B``.
        num_domains: ``K``.

    Attributes:
        order: ``B`` row indices in sorted order (stable: rows of a domain keep their batch order).
        counts: rows of each domain, ``K`` Python ints.
        sorted_domain: the domain of each sorted row, ``B``.
    """

    def __init__(self, domain: torch.Tensor, num_domains: int):
        self.domain = domain
        self.num_domains = num_domains
        self.order = torch.argsort(domain, stable=True)
        self.sorted_domain = domain.index_select(0, self.order)
        self.counts = torch.bincount(domain, minlength=num_domains).tolist()
        if len(self.counts) > num_domains:
            raise ValueError(f"domain index {len(self.counts) - 1} out of range for {num_domains} domains")
        self.inverse = torch.empty_like(self.order)
        self.inverse[self.order] = torch.arange(domain.shape[0], device=domain.device)

    def sort(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """``B x ...`` in batch order -> ``B x ...`` in sorted order (the batch axis is ``dim``)."""
        return permute_rows(x, self.order, self.inverse, dim)

    def unsort(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Inverse of :meth:`sort`."""
        return permute_rows(x, self.inverse, self.order, dim)

    def own(self, per_domain: torch.Tensor) -> torch.Tensor:
        """Each row's own slot of a per-domain input, in sorted order: ``K x B x ...`` (slot ``s`` = domain ``s``'s
        value of every row) -> ``B x ...``."""
        B = per_domain.shape[1]
        # index_select on the flattened slots: a deterministic backward (index_add), unlike advanced indexing
        return per_domain.flatten(0, 1).index_select(0, self.sorted_domain * B + self.order)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``B x ...`` -> ``K`` tensors, the rows of each domain (``n_s x ...``)."""
        return torch.split(self.sort(x), self.counts)

    def merge(self, parts) -> torch.Tensor:
        """Inverse of :meth:`split`: ``K`` tensors of ``n_s x ...`` -> ``B x ...`` in the original row order."""
        return self.unsort(torch.cat(list(parts), dim=0))

    def sorted_linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Each sorted row times its own domain's weights: ``x`` ``B x I`` (sorted), ``weight`` ``K x I x O``,
        ``bias`` ``K x O`` (or ``K x 1 x O``) -> ``B x O`` (sorted).

        One matmul per domain on its contiguous block of rows; an empty block still puts its weights in the
        graph. ``unbind`` (not ``weight[s]``) so that the backward stacks the ``K`` gradients once instead of
        adding ``K`` full-size zero-padded copies.
        """
        weights = weight.unbind(0)
        biases = bias.reshape(weight.shape[0], 1, -1).unbind(0) if bias is not None else None
        parts = []
        for s, rows in enumerate(torch.split(x, self.counts)):
            parts.append(torch.addmm(biases[s], rows, weights[s]) if biases is not None else rows @ weights[s])
        return torch.cat(parts, dim=0)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Row ``b`` times its own domain's weights: ``x`` ``B x I``, ``weight`` ``K x I x O``, ``bias`` ``K x O``
        -> ``B x O``, in batch order."""
        return self.unsort(self.sorted_linear(self.sort(x), weight, bias))
