"""Batched MLPs: ``E`` independent MLPs (experts, towers) evaluated together with batched matmuls."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from fuxictr.pytorch.torch_utils import get_activation

from .norms import RowSafeBatchNorm1d


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
