"""Batched MLPs: ``E`` independent MLPs (experts, towers) evaluated together with batched matmuls."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from mdl_bench.model_zoo.core.fuxictr_api import get_activation

from .norms import RowSafeBatchNorm1d
from .routing import DomainGroups


def logit_layer(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``torch.baddbmm(bias, x, weight)`` for a one-wide output (``x`` ``E x B x I``, ``weight`` ``E x I x 1``,
    ``bias`` ``E x 1 x 1``), computed as its transpose ``weight^T x^T``: each output is the same dot product, so
    values and gradients are ``baddbmm``'s to float32 rounding, but a batched matmul one column wide takes a slow
    path (a tower's logit layer, forward and backward, took ten times longer than its transpose on a 2-core CPU)."""
    return torch.baddbmm(bias.transpose(1, 2), weight.transpose(1, 2), x.transpose(1, 2)).transpose(1, 2)


class BatchedMLP(nn.Module):
    """``E`` MLPs with identical shapes and separate weights, computed as one ``bmm`` per layer.

    Every hidden layer is ``Linear -> [BatchNorm] -> activation -> [Dropout]`` as in FuxiCTR's ``MLP_Block``;
    with ``output_dim`` a final ``Linear`` without activation is added (towers emit logits).

    Input may be shared by all MLPs (``B x I``; the first layer is then one ``B x I @ I x (E*H)`` matmul) or
    separate (``E x B x I``).

    Args:
        num_mlps: ``E``.
        input_dim: ``I``.
        hidden_units: widths of the hidden layers.
        output_dim: width of an extra linear output layer, or ``None``.

    Shapes:
        ``forward(x)``: ``B x I`` or ``E x B x I`` -> ``E x B x H_last`` (``H_last = output_dim`` if given).
        ``routed(x, groups)`` (one MLP per domain, ``E = K``): ``B x I`` or ``K x B x I`` -> ``B x H_last``.
    """

    def __init__(self, num_mlps: int, input_dim: int, hidden_units: Sequence[int] = (),
                 output_dim: int | None = None, activation: str = "ReLU", dropout: float = 0.0,
                 batch_norm: bool = False):
        super().__init__()
        self.num_mlps = num_mlps
        self.input_dim = input_dim
        dims = [input_dim] + list(hidden_units) + ([output_dim] if output_dim is not None else [])
        self.num_hidden = len(hidden_units)
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.empty(num_mlps, d_in, d_out)) for d_in, d_out in zip(dims[:-1], dims[1:])])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(num_mlps, 1, d_out)) for d_out in dims[1:]])
        # row-safe: an MLP fed one domain's rows may get a single row of a small domain
        self.norms = nn.ModuleList([RowSafeBatchNorm1d(num_mlps * h) for h in hidden_units] if batch_norm else [])
        self.activations = nn.ModuleList([get_activation(activation) for _ in hidden_units])
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.output_dim = dims[-1]
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-normal per MLP and zero bias, what FuxiCTR's ``reset_parameters`` gives ``nn.Linear``."""
        for weight, bias in zip(self.weights, self.biases):
            _, d_in, d_out = weight.shape
            nn.init.normal_(weight, std=math.sqrt(2.0 / (d_in + d_out)))
            nn.init.zeros_(bias)

    def linear(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weights[layer], self.biases[layer]
        if x.dim() == 2:  # shared input: one wide matmul, then split the columns per MLP
            E, d_in, d_out = weight.shape
            out = x @ weight.permute(1, 0, 2).reshape(d_in, E * d_out)  # B x (E*d_out)
            return out.view(x.shape[0], E, d_out).transpose(0, 1) + bias
        if weight.shape[-1] == 1:
            return logit_layer(x, weight, bias)
        return torch.baddbmm(bias, x, weight)

    def routed(self, x: torch.Tensor, groups: DomainGroups, sorted_rows: bool = False, per_domain: int | None = None,
               first: int = 0) -> torch.Tensor:
        """MLP ``s`` on the rows of domain ``s`` only (``E = K``): row ``b`` goes through MLP ``domain[b]``.

        Each MLP sees exactly what it would see if called alone on its domain's rows, batch-norm statistics
        included (:func:`~model_zoo.layers.norms.domain_batch_norm`: train-mode statistics and running-statistics
        updates from the domain's own rows; a domain with one row in a training batch uses its running
        statistics). Per layer: one matmul per domain on its block of sorted rows, the rest vectorised over the
        batch, so the cost is that of one MLP on ``B`` rows whatever ``K`` is. Every MLP's weights stay in the
        graph when its domain has no rows (zero gradient), as data-parallel training needs.

        Args:
            x: ``B x I`` (row ``b``'s input) or ``K x B x I`` (slot ``s`` = domain ``s``'s input of every row;
                row ``b`` reads slot ``domain[b]``).
            groups: the batch's rows grouped by domain.
            sorted_rows: ``x`` (``B x I``) and the output are in ``groups``' sorted order.
            per_domain: ``n``, MLPs per domain: domain ``s`` owns MLPs ``first + s*n .. first + s*n + n-1``, each
                run on the rows of ``s`` (``None``: one MLP per domain, ``E = K``).
            first: index of domain 0's first MLP (with ``per_domain``).

        Returns:
            ``B x H_last`` (``n x B x H_last`` with ``per_domain``), in batch order (sorted with ``sorted_rows``).
        """
        K, n = groups.num_domains, per_domain or 1
        if per_domain is None and self.num_mlps != K:
            raise ValueError(f"routed: {self.num_mlps} MLPs for {K} domains")
        if x.dim() == 3:
            x = groups.own(x)  # sorted
        elif not sorted_rows:
            x = groups.sort(x)
        x = x.unsqueeze(0)  # 1 x B x I: the n MLPs of a domain read the same rows
        mlps = slice(first, first + K * n)
        for layer in range(len(self.weights)):
            weight, bias = self.weights[layer][mlps], self.biases[layer][mlps]  # (K*n) x d_in x d_out, (K*n) x 1 x d
            d_in, d_out = weight.shape[1:]
            blocks = torch.split(x, groups.counts, dim=1)
            weights = weight.view(K, n, d_in, d_out).unbind(0)  # unbind: one stacked gradient in the backward
            biases = bias.view(K, n, 1, d_out).unbind(0)
            parts = [torch.baddbmm(biases[s], block.expand(n, -1, -1), weights[s]) for s, block in enumerate(blocks)]
            x = torch.cat(parts, dim=1)  # n x B x d_out, sorted
            if layer < self.num_hidden:
                if self.norms:
                    x = self.norms[layer](x, groups.sorted_domain, groups.counts, first)  # each domain's rows
                x = self.activations[layer](x)
                if self.dropout is not None:
                    x = self.dropout(x)
        if not sorted_rows:
            x = groups.unsort(x, dim=1)
        return x if per_domain is not None else x.squeeze(0)

    def subset(self, x: torch.Tensor, first: int, count: int) -> torch.Tensor:
        """MLPs ``first .. first+count-1`` alone on every row (as :meth:`forward` computes them, without the others):
        ``B x I`` or ``count x B x I`` -> ``count x B x H_last``."""
        mlps = slice(first, first + count)
        for layer in range(len(self.weights)):
            weight, bias = self.weights[layer][mlps], self.biases[layer][mlps]
            x = torch.baddbmm(bias, x.unsqueeze(0).expand(count, -1, -1) if x.dim() == 2 else x, weight)
            if layer < self.num_hidden:
                if self.norms:
                    x = self.norms[layer](x, first=first)
                x = self.activations[layer](x)
                if self.dropout is not None:
                    x = self.dropout(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in range(len(self.weights)):
            x = self.linear(layer, x)  # E x B x d
            if layer < self.num_hidden:
                if self.norms:
                    E, B, d = x.shape
                    x = self.norms[layer](x.transpose(0, 1).reshape(B, E * d)).view(B, E, d).transpose(0, 1)
                x = self.activations[layer](x)
                if self.dropout is not None:
                    x = self.dropout(x)
        return x
