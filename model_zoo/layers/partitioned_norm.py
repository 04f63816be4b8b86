"""STAR's partitioned normalization (Sheng et al., CIKM 2021, section 3.3).

Batch normalization assumes the rows are i.i.d.; in a multi-domain batch they are not, so PN normalises the rows
of each domain ``d`` with the statistics of domain ``d`` alone and scales them with a shared and a
domain-specific affine transform:

    z' = (gamma * gamma_d) * (z - mu_d) / sqrt(var_d + eps) + (beta + beta_d)

Training uses the batch statistics of the rows of ``d`` (and updates ``d``'s moving averages); inference uses
``d``'s moving averages. A public implementation normalises with whole-batch statistics, which removes exactly
the domain differences PN exists to keep; here every statistic is per domain.
"""
from __future__ import annotations

import torch
from torch import nn


class PartitionedNorm(nn.Module):
    """Per-domain batch normalization with shared-times-domain scale and shared-plus-domain shift.

    Args:
        num_features: ``I``.
        num_domains: ``K``.
        eps: added to the variance.
        momentum: weight of the new batch in each domain's moving averages (PyTorch's BatchNorm convention).

    Shapes:
        ``forward(x, domain)``: ``B x I`` and ``B`` tower indices -> ``B x I``.

    A domain with fewer than 2 rows in a training batch has no usable variance; its rows are then normalised
    with its moving averages, which are left unchanged (chosen over whole-batch statistics, which would mix
    domains).
    """

    def __init__(self, num_features: int, num_domains: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.num_features, self.num_domains = num_features, num_domains
        self.eps, self.momentum = float(eps), float(momentum)
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.domain_gamma = nn.Parameter(torch.ones(num_domains, num_features))
        self.domain_beta = nn.Parameter(torch.zeros(num_domains, num_features))
        self.register_buffer("running_mean", torch.zeros(num_domains, num_features))
        self.register_buffer("running_var", torch.ones(num_domains, num_features))

    def init_weights(self) -> None:
        """Identity transform at start: both scales 1, both shifts 0 (called by FuxiCTR's reset_parameters)."""
        nn.init.ones_(self.gamma)
        nn.init.zeros_(self.beta)
        nn.init.ones_(self.domain_gamma)
        nn.init.zeros_(self.domain_beta)

    def domain_statistics(self, x: torch.Tensor, domain: torch.Tensor):
        """Per-domain row counts ``K``, means and biased variances ``K x I`` of a batch."""
        K = self.num_domains
        counts = torch.bincount(domain, minlength=K).to(x.dtype)
        denom = counts.clamp(min=1.0).unsqueeze(1)
        mean = x.new_zeros(K, x.shape[1]).index_add(0, domain, x) / denom
        var = x.new_zeros(K, x.shape[1]).index_add(0, domain, (x - mean.index_select(0, domain)) ** 2) / denom
        return counts, mean, var

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        if self.training:
            counts, mean, var = self.domain_statistics(x, domain)
            usable = (counts >= 2).unsqueeze(1)  # K x 1
            with torch.no_grad():
                m = self.momentum
                unbiased = var * (counts / (counts - 1).clamp(min=1.0)).unsqueeze(1)
                self.running_mean.copy_(torch.where(usable, (1 - m) * self.running_mean + m * mean,
                                                    self.running_mean))
                self.running_var.copy_(torch.where(usable, (1 - m) * self.running_var + m * unbiased,
                                                   self.running_var))
            mean = torch.where(usable, mean, self.running_mean)
            var = torch.where(usable, var, self.running_var)
        else:
            mean, var = self.running_mean, self.running_var
        # index_select, not ``t[domain]``: the backward of advanced indexing (index_put_ with accumulate) sums
        # repeated rows in a thread-dependent order on the CPU, so results varied run to run; index_select's
        # backward (index_add_) is deterministic. Pinned by tests/test_determinism.py.
        rows = lambda t: t.index_select(0, domain)  # K x I -> B x I
        z = (x - rows(mean)) * torch.rsqrt(rows(var) + self.eps)
        return z * (self.gamma * rows(self.domain_gamma)) + (self.beta + rows(self.domain_beta))
