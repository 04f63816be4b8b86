"""Batch normalisation that works on any number of rows, for layers that see only some rows of a batch.

A per-domain network fed only its own domain's rows (Single Domain, a domain's task layer) may get one row of a
small domain in a training batch, or none; ``nn.BatchNorm1d`` raises on one row (no variance) and returns NaN
statistics on none.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RowSafeBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` (same parameters, buffers and state-dict keys) that, in training, normalises a batch of
    fewer than 2 rows with its running statistics and leaves them unchanged, as in evaluation, instead of
    failing. With 2 or more rows it is exactly ``nn.BatchNorm1d``.

    As the norm of a :class:`~model_zoo.layers.BatchedMLP`'s layer (``C = E*H``: MLP ``m``'s channels are
    ``m*H .. m*H+H-1``) it also normalises some of the MLPs alone: ``forward(x, first=f)`` with ``x``
    ``n x B x H`` the channels of MLPs ``f .. f+n-1`` on every row (:func:`subset_batch_norm`), and
    ``forward(x, domain, counts, first)`` each domain's MLPs on that domain's rows only
    (:func:`domain_batch_norm`).

    Shapes:
        ``forward(x)``: ``N x C`` -> ``N x C`` (``N`` may be 0 or 1); ``forward(x, first=f)``: ``n x B x H`` ->
        ``n x B x H``; ``forward(x, domain, counts, first)``: ``B x H`` or ``n x B x H`` (rows sorted by domain,
        ``domain`` their ``B`` domains, ``counts`` the ``K`` domain sizes) -> the same shape.
    """

    def forward(self, x: torch.Tensor, domain: torch.Tensor | None = None, counts: list[int] | None = None,
                first: int = 0) -> torch.Tensor:
        if domain is not None:
            return domain_batch_norm(self, x, domain, counts, first)
        if x.dim() == 3:
            return subset_batch_norm(self, x, first)
        if self.training and x.shape[0] < 2:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def domain_batch_norm(norm: nn.BatchNorm1d, x: torch.Tensor, sorted_domain: torch.Tensor, counts: list[int],
                      first: int = 0) -> torch.Tensor:
    """Batch norms of per-domain MLPs, each on its own domain's rows: what separate ``nn.BatchNorm1d(H)`` would
    give, each called on its domain's block of rows.

    ``norm`` holds the norms of a :class:`~model_zoo.layers.BatchedMLP`'s MLPs side by side (``E*H`` features: MLP
    ``m``'s are ``m*H .. m*H+H-1``), so the state dict is that of one ``BatchNorm1d(E*H)``. Here MLPs
    ``first + s*n + j`` (``j < n``) belong to domain ``s``. In training, domain ``s``'s rows are normalised with
    their own batch mean and (biased) variance, and only domain ``s``'s running statistics move (by ``momentum``,
    unbiased variance, as ``nn.BatchNorm1d``). A domain with fewer than 2 rows in a training batch has no usable
    variance: its rows are normalised with its running statistics, which are left unchanged (as
    :class:`RowSafeBatchNorm1d`; whole-batch statistics would mix domains). A domain with no rows contributes
    nothing. In evaluation every row uses its domain's running statistics.

    Args:
        norm: a ``BatchNorm1d(E*H)`` (affine, with running statistics, float ``momentum``), ``E >= first + K*n``.
        x: ``B x H`` (``n = 1``) or ``n x B x H`` (the domain's ``n`` MLPs), rows sorted by domain.
        sorted_domain: the domain of each row, ``B``.
        counts: rows of each domain, ``K``.
        first: index of domain 0's first MLP.

    Returns:
        the shape of ``x``, rows sorted as ``x``.
    """
    n = x.shape[0] if x.dim() == 3 else 1
    # one MLP per domain: work on the 2-D B x H view, whose row gathers and sums the CPU runs several times faster
    # than the same ones along the middle axis of 1 x B x H
    xs = x.reshape(x.shape[-2], x.shape[-1]) if n == 1 else x  # B x H, or n x B x H
    axis = xs.dim() - 2  # the row axis
    K, H = len(counts), xs.shape[-1]
    cols = slice(first * H, (first + K * n) * H)
    if n == 1:
        per_mlp = lambda t: t[cols].view(K, H)  # K x H: domain s's MLP
    else:
        per_mlp = lambda t: t[cols].view(K, n, H).transpose(0, 1)  # n x K x H views of domain s's MLP j
    running_mean, running_var = per_mlp(norm.running_mean), per_mlp(norm.running_var)
    stats_shape = running_mean.shape
    if norm.training:
        c = torch.tensor(counts, dtype=x.dtype, device=x.device).view(K, 1)  # broadcasts over K x H and n x K x H
        denom = c.clamp(min=1.0)
        mean = xs.new_zeros(stats_shape).index_add(axis, sorted_domain, xs) / denom
        centred = xs - mean.index_select(axis, sorted_domain)
        var = xs.new_zeros(stats_shape).index_add(axis, sorted_domain, centred * centred) / denom
        usable = c >= 2
        with torch.no_grad():
            m = float(norm.momentum)
            unbiased = var * (c / (c - 1).clamp(min=1.0))
            running_mean.copy_(torch.where(usable, (1 - m) * running_mean + m * mean, running_mean))
            running_var.copy_(torch.where(usable, (1 - m) * running_var + m * unbiased, running_var))
            norm.num_batches_tracked.add_(1)
        mean = torch.where(usable, mean, running_mean)
        var = torch.where(usable, var, running_var)
    else:
        mean, var = running_mean, running_var
    scale = torch.rsqrt(var + norm.eps) * per_mlp(norm.weight)  # K x H or n x K x H
    shift = per_mlp(norm.bias) - mean * scale
    out = xs * scale.index_select(axis, sorted_domain) + shift.index_select(axis, sorted_domain)
    return out.view_as(x)


def subset_batch_norm(norm: nn.BatchNorm1d, x: torch.Tensor, first: int) -> torch.Tensor:
    """The batch norms of MLPs ``first .. first+n-1`` of a :class:`~model_zoo.layers.BatchedMLP` (layout as in
    :func:`domain_batch_norm`) on all rows, ``x`` ``n x B x H`` -> ``n x B x H``; as :class:`RowSafeBatchNorm1d`
    (fewer than 2 rows in training: running statistics, left unchanged)."""
    n, B, H = x.shape
    cols = slice(first * H, (first + n) * H)
    training = norm.training and B >= 2
    flat = x.transpose(0, 1).reshape(B, n * H)
    out = F.batch_norm(flat, norm.running_mean[cols], norm.running_var[cols], norm.weight[cols], norm.bias[cols],
                       training, float(norm.momentum) if training else 0.0, norm.eps)
    if training:
        with torch.no_grad():
            norm.num_batches_tracked.add_(1)
    return out.view(B, n, H).transpose(0, 1)
