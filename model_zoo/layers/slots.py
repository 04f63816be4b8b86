"""Dropping the leading axis of a one-slot tensor without a copy in the backward."""
from __future__ import annotations

import torch


def single(x: torch.Tensor) -> torch.Tensor:
    """The only slot of ``1 x ...`` as ``...`` (a one-table embedding, a one-MLP :class:`BatchedMLP`'s output).

    ``x.squeeze(0)``, a view whose gradient is a view too; ``x[0]`` gives the same values, but its backward fills
    a zero tensor of ``x``'s whole shape and copies the gradient into it (a few percent of a Shared Bottom step
    on the CPU). Raises if the leading axis is not 1, where ``squeeze`` would silently keep it.
    """
    if x.shape[0] != 1:
        raise ValueError(f"single: expected a leading axis of 1, got shape {tuple(x.shape)}")
    return x.squeeze(0)
