"""Disentanglement losses between expert outputs.

Every loss takes the expert outputs ``O`` of shape ``E x N x H`` (``E`` experts, ``N`` rows, ``H`` dims) and
returns a scalar. They are registered by name in :data:`DISENTANGLE_LOSSES` so that a model option such as
``aux_loss: cov`` selects one.
"""
from __future__ import annotations

import torch
from torch import nn

from mdl_bench.benchmark.errors import UserError, close_matches


def sample_rows(outputs: torch.Tensor, rows: int) -> tuple[torch.Tensor, float]:
    """Keep ``rows`` random rows of ``E x N x H`` (all when ``rows`` is 0 or >= N); also return ``N / rows``."""
    n = outputs.shape[1]
    if not rows or rows >= n:
        return outputs, 1.0
    index = torch.randperm(n, device=outputs.device)[:rows]
    return outputs.index_select(1, index), n / rows


class CovLoss(nn.Module):
    """Crocodile's cross-expert covariance loss, eq. (7).

    ``L = 1/d^2 * sum_{p >= q} || (O^p - mean(O^p))^T (O^q - mean(O^q)) ||_1`` where ``O^p`` is the ``N x d``
    output of expert ``p`` and the mean is over rows.

    Options (defaults follow the paper as written):
        pairs: ``"p>=q"`` (default; eq. 7 includes ``p = q``, i.e. each expert's own covariance, diagonal
            variances included) or ``"p>q"`` (cross-expert blocks only).
        normalization: ``"none"`` (default; eq. 7 has no 1/N, and the paper's alpha sensitivity - fine above
            2e-5 - fits an unnormalised sum over a 4096-row batch) or ``"mean"`` (divide by N, a covariance).
        sample_rows: compute on this many random rows of the batch (appendix A: 32 rows of 1024 gave the same
            norms). With ``normalization="none"`` the sampled sum is scaled by ``N / rows`` so that alpha keeps
            its meaning. ``0`` (default) uses every row.

    Shapes:
        ``forward(O)``: ``E x N x d`` -> scalar.
    """

    PAIRS = ("p>=q", "p>q")
    NORMALIZATIONS = ("none", "mean")

    def __init__(self, pairs: str = "p>=q", normalization: str = "none", sample_rows: int = 0):
        super().__init__()
        if pairs not in self.PAIRS:
            raise UserError(f"cov_pairs must be one of {', '.join(self.PAIRS)}, got {pairs!r}")
        if normalization not in self.NORMALIZATIONS:
            raise UserError(f"cov_normalization must be one of {', '.join(self.NORMALIZATIONS)}, got {normalization!r}")
        if sample_rows < 0:
            raise UserError(f"cov_sample_rows must be >= 0, got {sample_rows}")
        self.pairs, self.normalization, self.sample_rows = pairs, normalization, int(sample_rows)

    def block_norms(self, outputs: torch.Tensor) -> torch.Tensor:
        """``E x E`` matrix of ``||cov block (p, q)||_1 / d^2`` (unnormalised in N), on all given rows."""
        E, N, d = outputs.shape
        centred = outputs - outputs.mean(dim=1, keepdim=True)
        flat = centred.permute(1, 0, 2).reshape(N, E * d)
        cross = flat.t() @ flat  # (E*d) x (E*d): every block (p, q) at once
        return cross.abs().view(E, d, E, d).sum(dim=(1, 3)) / (d * d)

    def forward(self, outputs: torch.Tensor) -> torch.Tensor:
        outputs, scale = sample_rows(outputs, self.sample_rows)
        E, N, _ = outputs.shape
        norms = self.block_norms(outputs)
        offset = 0 if self.pairs == "p>=q" else -1
        loss = torch.tril(norms, diagonal=offset).sum()
        if self.normalization == "mean":
            return loss / N
        return loss * scale


DISENTANGLE_LOSSES = {"cov": CovLoss}


def make_disentangle_loss(name: str, **options) -> nn.Module:
    if name not in DISENTANGLE_LOSSES:
        raise UserError(f"unknown aux_loss {name!r}{close_matches(name, DISENTANGLE_LOSSES)}; known: "
                        f"none, {', '.join(DISENTANGLE_LOSSES)}")
    return DISENTANGLE_LOSSES[name](**options)
