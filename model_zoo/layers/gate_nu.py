"""PEPNet's Gate Neural Unit (Chang et al., KDD 2023, section 3.3): a two-layer gate that turns prior
information into scaling factors in ``(0, gamma)``.

    x --Linear--> ReLU --Linear--> sigmoid --> * gamma        (gamma = 2: a factor of 1 leaves h unchanged)

EPNet uses it on ``[domain embedding, stopgrad(embedding)]`` to rescale the embedding, PPNet on
``[user/item/author embeddings, stopgrad(EPNet output)]`` to rescale every hidden layer of the DNN. The
stop-gradient lives in the caller (what to detach depends on the use); this layer is the gate alone.
"""
from __future__ import annotations

import torch
from torch import nn


class GateNU(nn.Module):
    """``delta = gamma * sigmoid(W2 ReLU(W1 x + b1) + b2)``.

    Args:
        input_dim: ``I``, width of the prior input.
        output_dim: ``O``, number of scaling factors (one per field, per unit, ...).
        hidden_dim: width of the first layer (default ``O``).
        gamma: upper bound of the factors (the paper's scaling factor, 2).

    Shapes:
        ``forward(x)``: ``B x I`` -> ``B x O``, every value in ``(0, gamma)``.
    """

    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int | None = None, gamma: float = 2.0):
        super().__init__()
        hidden_dim = int(hidden_dim or output_dim)
        self.gamma = float(gamma)
        # nn.Linear layers: FuxiCTR's reset_parameters gives them Xavier-normal weights and zero biases.
        self.hidden = nn.Linear(input_dim, hidden_dim)
        self.output = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * torch.sigmoid(self.output(torch.relu(self.hidden(x))))
