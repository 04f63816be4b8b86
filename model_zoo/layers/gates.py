"""Gates that mix ``E`` expert outputs into the input of each domain's tower.

A gate gives every domain ``s`` weights over the experts. ``forward(x)`` returns them for every domain
(``B x K x E``, or ``B x K x E x H`` element-wise); ``own(x, groups)`` returns, for each row, only the
weights of the row's own domain (``B x E`` / ``B x E x H``), which is all a prediction needs and ``K`` times
cheaper. :func:`mix` and :func:`mix_own` apply them.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from mdl_bench.model_zoo.core.fuxictr_api import MLP_Block

from .routing import DomainGroups


class SoftmaxGate(nn.Module):
    """MMoE's gate: per domain ``s``, ``softmax(x W_s)`` over the ``E`` experts (one scalar per expert).

    Crocodile's prior-informed gate (PG) is this gate applied to the prior embedding ``r``.

    Shapes:
        ``forward(x)``: ``B x I`` -> ``B x K x E``; ``own(x, groups)``: ``B x I`` -> ``B x E``.
    """

    def __init__(self, input_dim: int, num_domains: int, num_experts: int,
                 hidden_units: Sequence[int] = ()):
        super().__init__()
        self.num_domains, self.num_experts = num_domains, num_experts
        self.net = MLP_Block(input_dim, list(hidden_units), output_dim=num_domains * num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x).view(-1, self.num_domains, self.num_experts), dim=-1)

    def own(self, x: torch.Tensor, groups: DomainGroups) -> torch.Tensor:
        """Only the row's own domain's ``E`` logits: the hidden layers (shared by the domains) run on every row, the
        output layer's block of domain ``s`` on the rows of ``s`` (``E`` outputs per row instead of ``K*E``)."""
        *hidden, out = self.net.mlp  # MLP_Block without output activation: the last module is the output Linear
        h = x
        for module in hidden:
            h = module(h)
        I = out.in_features
        # nn.Linear's K*E output rows, domain-major (as forward's view), as K x I x E
        weight = out.weight.view(self.num_domains, self.num_experts, I).transpose(1, 2)
        bias = out.bias.view(self.num_domains, self.num_experts)
        return torch.softmax(groups.linear(h, weight, bias), dim=-1)


class ElementwiseGate(nn.Module):
    """Crocodile's PEG, eq. (9)-(11): ``g^s = softmax(r W^s)`` with ``W^s`` of shape ``l x E x H``; the softmax
    runs over the ``E`` experts separately for each of the ``H`` dimensions.

    Shapes:
        ``forward(r)``: ``B x l`` -> ``B x K x E x H``; ``own(r, groups)``: ``B x l`` -> ``B x E x H``. Weights sum
        to 1 over ``E`` for every domain and dimension.
    """

    def __init__(self, input_dim: int, num_domains: int, num_experts: int, expert_dim: int):
        super().__init__()
        self.num_domains, self.num_experts, self.expert_dim = num_domains, num_experts, expert_dim
        self.weight = nn.Parameter(torch.empty(num_domains, input_dim, num_experts * expert_dim))
        self.bias = nn.Parameter(torch.zeros(num_domains, num_experts * expert_dim))
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-normal per domain (what FuxiCTR gives an ``nn.Linear``), zero bias."""
        _, d_in, d_out = self.weight.shape
        nn.init.normal_(self.weight, std=math.sqrt(2.0 / (d_in + d_out)))
        nn.init.zeros_(self.bias)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        logits = torch.einsum("bl,klo->bko", r, self.weight) + self.bias
        return torch.softmax(logits.view(-1, self.num_domains, self.num_experts, self.expert_dim), dim=2)

    def own(self, r: torch.Tensor, groups: DomainGroups) -> torch.Tensor:
        logits = groups.linear(r, self.weight, self.bias)
        return torch.softmax(logits.view(-1, self.num_experts, self.expert_dim), dim=1)


def mix(expert_out: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of experts for every domain.

    Args:
        expert_out: ``E x B x H``.
        weights: ``B x K x E`` (one weight per expert) or ``B x K x E x H`` (per dimension).

    Returns:
        ``K x B x H``: ``t^s = sum_p g^s_p * O^p``.
    """
    if weights.dim() == 3:
        return torch.einsum("bke,ebh->kbh", weights, expert_out)
    return (weights.permute(1, 2, 0, 3) * expert_out.unsqueeze(0)).sum(dim=1)


def mix_own(expert_out: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each row's own-domain mixture: ``E x B x H`` and ``B x E`` or ``B x E x H`` -> ``B x H``."""
    if weights.dim() == 2:
        return torch.einsum("be,ebh->bh", weights, expert_out)
    return (weights.transpose(0, 1) * expert_out).sum(dim=0)
