"""Single Domain: one plain DNN per domain, each trained only on its own domain's rows (the tables' reference
row, Crocodile paper section 4.3).

    fields --MultiEmbedding (K tables)--> e^1..e^K                  (K x B x F*D)
    rows grouped by domain:  rows of domain s --> e^s --> DNN_s --> logit
    loss: eq. (8), so DNN_s and table s see exactly the mean BCE of domain s's rows

Nothing is shared between domains: table s and DNN_s are reached only by domain s's rows, which makes this
K independent single-domain models trained side by side (Adam's updates are per parameter, so one optimiser
changes nothing). They are evaluated in the same per-domain table as every other model.

Choices where the paper is open (each with its reason):

* One model object for the K DNNs, so that Single Domain runs, checkpoints and reports like every other row;
  the tables of the K domains are the slices of one multi-embedding (one lookup per field).
* Rows are routed (:class:`~model_zoo.layers.DomainGroups`): DNN_s runs only on domain s's rows, as every
  per-domain tower does (every DNN on every row would cost K times the compute for the same result).
* DNN widths ``dnn_hidden_units: [256, 128, 64]`` = the size rule's bottom [256, 128] plus its tower [64], as
  for the other single-network rows. ``batch_norm: true`` normalises every hidden layer of DNN_s with the
  statistics of domain s's rows in the batch (the DNNs are separate models); a small domain with one row (or
  none) in a batch is normalised with its running statistics instead
  (:class:`~model_zoo.layers.norms.RowSafeBatchNorm1d`).
* ``expert_outputs_for_analysis``: eq. (1) needs "the output norm of domain-specific experts" of the Single
  Domain models. Chosen: the expert output of domain s's network on a row is DNN_s's last hidden layer (the
  input of its logit layer) computed on the row's embeddings from table s - the representation the network's
  prediction is a linear function of. Every domain's network runs on every row (also rows of other domains),
  since D(i,j) compares two networks on the same sample; network s is bound to domain s.
* ``embedding_table_domains``: table s belongs to domain s.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import MultiDomainModel
from .layers import BatchedMLP, DomainGroups, MultiEmbedding, gather_domain


class SingleDomain(MultiDomainModel):
    """K plain DNNs, each with its own embedding table, each fed only its own domain's rows.

    Tuned by the ``tune`` suite: the training recipe every method shares only; it has no own
    hyperparameter that is not a width (widths follow the benchmark's size rule and are not tuned).

    Args:
        dnn_hidden_units: hidden widths of every domain's DNN, followed by a linear logit.
        net_dropout: dropout after every hidden activation.
        batch_norm: batch normalisation in every hidden layer (statistics of the domain's own rows).
    """

    group = "Single Domain"
    display_name = "Single Domain"

    def __init__(self, feature_map, model_id: str = "SingleDomain", gpu: int = -1, learning_rate: float = 1e-3,
                 embedding_dim: int = 16, dnn_hidden_units: Sequence[int] = (256, 128, 64),
                 hidden_activations: str = "ReLU", net_dropout: float = 0.0, batch_norm: bool = False, **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu, learning_rate=learning_rate,
                         embedding_dim=embedding_dim, **kwargs)
        self.embedding = MultiEmbedding(feature_map, embedding_dim, self.num_domains)  # table s: domain s's
        self.dnns = nn.ModuleList([
            DomainDNN(self.embedding.output_dim, dnn_hidden_units, hidden_activations, net_dropout, batch_norm)
            for _ in range(self.num_domains)])
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    @property
    def embedding_table_domains(self) -> list:
        """Table ``s`` of the main embedding belongs to domain ``s``."""
        return list(range(self.num_domains))

    def expert_outputs_for_analysis(self, X):
        """``K x B x H``: every domain's DNN on every row (its own table), its last hidden layer; bound ``0..K-1``."""
        emb = self.embedding.flat(X)  # K x B x F*D, table s in slot s
        return torch.stack([dnn.hidden_output(emb[s]) for s, dnn in enumerate(self.dnns)]), list(range(self.num_domains))

    def logits(self, X, domain):
        own_table = gather_domain(self.embedding.flat(X), domain)  # B x F*D: row b reads its domain's table
        groups = DomainGroups(domain, self.num_domains)
        return groups.merge([dnn(rows) for dnn, rows in zip(self.dnns, groups.split(own_table))]), {}


class DomainDNN(nn.Module):
    """One domain's DNN: hidden layers (``Linear -> [BatchNorm] -> activation -> [Dropout]``), then a linear logit.

    Shapes:
        ``forward(x)``: ``N x I`` -> logits ``N``; ``hidden_output(x)``: ``N x I`` -> ``N x H``.
    """

    def __init__(self, input_dim: int, hidden_units: Sequence[int], activation: str, dropout: float,
                 batch_norm: bool):
        super().__init__()
        self.hidden = BatchedMLP(1, input_dim, hidden_units, activation=activation, dropout=dropout,
                                 batch_norm=batch_norm)
        self.output = nn.Linear(self.hidden.output_dim, 1)

    def hidden_output(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.hidden_output(x)).view(-1)
