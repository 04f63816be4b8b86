"""Shared-Bottom (Caruana, 1997) with domains in place of tasks.

    fields --embedding (one shared table)--> x                 (B x F*D)
    x --shared bottom MLP-------------------> h                 (B x H)
    h --tower s (one per domain)-----------> logit of domain s; tower s runs on the rows of domain s only

The only domain-specific parameters are the towers; a row's loss reaches only its own domain's tower (rows are
routed to their domain's tower), while the bottom and the embeddings learn from every domain.
"""
from __future__ import annotations

from typing import Sequence

from .base import MultiDomainModel
from .layers import BatchedMLP, DomainGroups, DomainTowers, MultiEmbedding, single


class SharedBottom(MultiDomainModel):
    """One bottom MLP shared by all domains, one tower per domain.

    Tuned by the ``tune`` suite: the training recipe every method shares only; it has no own
    hyperparameter that is not a width (widths follow the benchmark's size rule and are not tuned).

    Args:
        bottom_hidden_units: widths of the shared bottom MLP; its last width feeds the towers.
        tower_hidden_units: widths of each domain tower before the logit.
    """

    group = "MTL (SE)"
    display_name = "Shared Bottom"

    def __init__(self, feature_map, model_id: str = "SharedBottom", gpu: int = -1, learning_rate: float = 1e-3,
                 embedding_dim: int = 16, bottom_hidden_units: Sequence[int] = (256, 128),
                 tower_hidden_units: Sequence[int] = (64,), hidden_activations: str = "ReLU",
                 net_dropout: float = 0.0, batch_norm: bool = False, **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu, learning_rate=learning_rate,
                         embedding_dim=embedding_dim, **kwargs)
        self.embedding = MultiEmbedding(feature_map, embedding_dim, 1)
        self.bottom = BatchedMLP(1, self.embedding.output_dim, bottom_hidden_units, activation=hidden_activations,
                                 dropout=net_dropout, batch_norm=batch_norm)
        self.towers = DomainTowers(self.num_domains, self.bottom.output_dim, tower_hidden_units,
                                   activation=hidden_activations, dropout=net_dropout, batch_norm=batch_norm)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def logits(self, X, domain):
        h = single(self.bottom(single(self.embedding.flat(X))))  # B x H
        return self.towers(h, DomainGroups(domain, self.num_domains)), {}  # tower s on the rows of domain s
