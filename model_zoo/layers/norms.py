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

    Shapes:
        ``forward(x)``: ``N x C`` -> ``N x C`` (``N`` may be 0 or 1).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def domain_batch_norm(norm: nn.BatchNorm1d, x: torch.Tensor, sorted_domain: torch.Tensor,
                      counts: list[int]) -> torch.Tensor:
    """``K`` batch norms in one, each on its own domain's rows: what ``K`` separate ``nn.BatchNorm1d(H)`` would
    give, each called on its domain's block of rows.

    ``norm`` holds the ``K`` norms side by side (``K*H`` features: domain ``s``'s are ``s*H .. s*H+H-1``, the
    layout of :class:`~model_zoo.layers.BatchedMLP`'s norms), so the state dict is that of one
    ``BatchNorm1d(K*H)``. In training, domain ``s``'s rows are normalised with their own batch mean and (biased)
    variance, and only domain ``s``'s running statistics move (by ``momentum``, unbiased variance, as
    ``nn.BatchNorm1d``). A domain with fewer than 2 rows in a training batch has no usable variance: its rows are
    normalised with its running statistics, which are left unchanged (as :class:`RowSafeBatchNorm1d`; whole-batch
    statistics would mix domains). A domain with no rows contributes nothing. In evaluation every row uses its
    domain's running statistics.

    Args:
        norm: a ``BatchNorm1d(K*H)`` (affine, with running statistics, float ``momentum``).
        x: ``B x H``, rows sorted by domain.
        sorted_domain: the domain of each row, ``B``.
        counts: rows of each domain, ``K``.

    Returns:
        ``B x H``, sorted as ``x``.
    """
    K, H = len(counts), x.shape[1]
    running_mean, running_var = norm.running_mean.view(K, H), norm.running_var.view(K, H)
    if norm.training:
        n = torch.tensor(counts, dtype=x.dtype, device=x.device)
        denom = n.clamp(min=1.0).unsqueeze(1)  # K x 1
        mean = x.new_zeros(K, H).index_add(0, sorted_domain, x) / denom
        centred = x - mean.index_select(0, sorted_domain)
        var = x.new_zeros(K, H).index_add(0, sorted_domain, centred * centred) / denom
        usable = (n >= 2).unsqueeze(1)  # K x 1
        with torch.no_grad():
            m = float(norm.momentum)
            unbiased = var * (n / (n - 1).clamp(min=1.0)).unsqueeze(1)
            running_mean.copy_(torch.where(usable, (1 - m) * running_mean + m * mean, running_mean))
            running_var.copy_(torch.where(usable, (1 - m) * running_var + m * unbiased, running_var))
            norm.num_batches_tracked.add_(1)
        mean = torch.where(usable, mean, running_mean)
        var = torch.where(usable, var, running_var)
    else:
        mean, var = running_mean, running_var
    scale = torch.rsqrt(var + norm.eps) * norm.weight.view(K, H)  # K x H
    shift = norm.bias.view(K, H) - mean * scale
    return x * scale.index_select(0, sorted_domain) + shift.index_select(0, sorted_domain)
