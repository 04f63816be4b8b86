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
