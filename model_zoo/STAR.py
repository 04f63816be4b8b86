"""STAR: Star Topology Adaptive Recommender (Sheng et al., "One Model to Serve All", CIKM 2021).

    fields --embedding (one shared table)--> e                          (B x F*D)
    e --partitioned normalization, stats of the row's domain d--> z   sec. 3.3
    z --star FCN: layer l uses W_l ⊙ W_l^d and b_l + b_l^d, ReLU--> h   sec. 3.2
    h --star output layer (same rule, NO activation)--> s_m             (B)
    [domain embedding (+ domain-describing fields)] --aux MLP--> s_a    sec. 3.4
    logit = s_m + s_a;  p = sigmoid(logit)

Each domain's effective network is the element-wise product of the shared (centre) weights and its own
(leaf) weights; biases add. A row of domain ``d`` only meets domain ``d``'s weights, which is computed by
grouping the rows by domain (:class:`~model_zoo.layers.DomainGroups`: one matmul per domain and layer, every
domain's weights in the graph of every step).

Choices where the paper is open or public code differs (each with its reason):

* Partitioned normalization uses the statistics of each domain's rows in the batch (and per-domain moving
  averages at inference), as the paper defines it; a public implementation normalises with whole-batch
  statistics, which is plain BN. Chosen placement: on the star FCN's input (the paper's figure 3 puts PN between
  the embedding layer and the star FCN). ``batch_norm: true`` (the recipe switch every model takes) also puts PN
  after every hidden layer's linear map: STAR's normalisation is PN by design, so where the other models put a
  batch norm, STAR puts its per-domain one.
* Leaf weights start at 1 and leaf biases at 0, so every domain starts from the shared network and the product
  only departs from it where a domain's data push it (the paper does not give an initialisation; a random leaf
  init would scale the shared weights by noise).
* The final star layer emits the logit with no activation; a public implementation puts a ReLU on it, which
  makes every logit >= 0 (all predicted probabilities >= 0.5) and kills the gradient of negative ones.
* Auxiliary network: a small MLP on the embeddings of ``aux_fields`` (default the domain indicator; the paper
  feeds "the domain indicator and other features that depict the domain" - the synthetic data has no other
  domain-describing field, so add them here when a dataset has some). Its logit is added to the main logit.
* ``expert_outputs_for_analysis`` (Diversity Index, covariance heatmaps): one expert per domain, domain s's
  effective star FCN on every row, its last hidden layer; bound to domain s (eq. 3).
* Widths follow the benchmark's size rule: the star FCN is [256, 128, 64] (bottom [256, 128] plus the [64]
  tower width of the other methods), because STAR has no separate towers - the star product is its per-domain
  part.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from mdl_bench.model_zoo.core.fuxictr_api import MLP_Block
from mdl_bench.model_zoo.core.fuxictr_api import get_activation

from .base import MultiDomainModel
from .layers import DomainGroups, FieldSelection, MultiEmbedding, check_fields, single
from .layers.partitioned_norm import PartitionedNorm


class StarLinear(nn.Module):
    """One star-topology layer: row ``b`` of domain ``d`` gets ``x_b (W ⊙ W_d) + (b + b_d)``.

    Shapes:
        ``forward(x, groups)``: ``B x I`` -> ``B x O``; ``effective()``: ``K x I x O`` and ``K x O``.
    """

    def __init__(self, input_dim: int, output_dim: int, num_domains: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(input_dim, output_dim))
        self.bias = nn.Parameter(torch.zeros(output_dim))
        self.domain_weight = nn.Parameter(torch.ones(num_domains, input_dim, output_dim))
        self.domain_bias = nn.Parameter(torch.zeros(num_domains, output_dim))
        self.init_weights()

    def init_weights(self) -> None:
        """Shared weights Xavier-normal (what FuxiCTR gives an ``nn.Linear``); leaf weights 1, biases 0."""
        d_in, d_out = self.weight.shape
        nn.init.normal_(self.weight, std=math.sqrt(2.0 / (d_in + d_out)))
        nn.init.zeros_(self.bias)
        nn.init.ones_(self.domain_weight)
        nn.init.zeros_(self.domain_bias)

    def effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each domain's weights ``W ⊙ W_d`` (``K x I x O``) and bias ``b + b_d`` (``K x O``)."""
        return self.weight * self.domain_weight, self.bias + self.domain_bias

    def forward(self, x: torch.Tensor, groups: DomainGroups) -> torch.Tensor:
        weight, bias = self.effective()
        return groups.linear(x, weight, bias)


class STAR(MultiDomainModel):
    """STAR with partitioned normalization, star-topology FCN and auxiliary network.

    Tuned by the ``tune`` suite: the training recipe every method shares only; it has no own
    hyperparameter that is not a width (widths follow the benchmark's size rule and are not tuned).

    Args:
        star_hidden_units: widths of the star FCN's hidden layers (the output layer to one logit is added).
        hidden_activations: activation of the hidden layers (never applied to the logit).
        net_dropout: dropout after each hidden activation.
        partitioned_norm: apply PN to the star FCN's input (``False``: no normalization, an ablation).
        batch_norm: also apply PN after each hidden layer's linear map, before the activation (STAR's form of
            the batch-norm switch: per-domain statistics).
        pn_momentum: momentum of PN's per-domain moving averages.
        aux_fields: fields whose embeddings feed the auxiliary network (must include what identifies the
            domain; default the domain field).
        aux_hidden_units: hidden widths of the auxiliary network (the paper: a 2-layer FC network, i.e. one
            hidden layer and the logit).
    """

    group = "MDL"

    def __init__(self, feature_map, model_id: str = "STAR", gpu: int = -1, learning_rate: float = 1e-3,
                 embedding_dim: int = 16, star_hidden_units: Sequence[int] = (256, 128, 64),
                 hidden_activations: str = "ReLU", net_dropout: float = 0.0, partitioned_norm: bool = True,
                 batch_norm: bool = False, pn_momentum: float = 0.1, aux_fields: Sequence[str] | None = None,
                 aux_hidden_units: Sequence[int] = (64,), **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu, learning_rate=learning_rate,
                         embedding_dim=embedding_dim, **kwargs)
        K = self.num_domains
        self.embedding = MultiEmbedding(feature_map, embedding_dim, 1)
        aux_fields = check_fields(feature_map, list(aux_fields) if aux_fields else [self.domain_field],
                                  "aux_fields", "STAR")
        self.aux_inputs = FieldSelection("aux_fields", aux_fields, self.embedding)
        input_dim = self.embedding.output_dim
        self.input_norm = PartitionedNorm(input_dim, K, momentum=pn_momentum) if partitioned_norm else None
        dims = [input_dim] + list(star_hidden_units)
        self.star_layers = nn.ModuleList([StarLinear(i, o, K) for i, o in zip(dims[:-1], dims[1:])])
        self.hidden_norms = nn.ModuleList([PartitionedNorm(o, K, momentum=pn_momentum)
                                           for o in star_hidden_units] if batch_norm else [])
        self.activations = nn.ModuleList([get_activation(hidden_activations) for _ in star_hidden_units])
        self.dropout = nn.Dropout(net_dropout) if net_dropout > 0 else None
        self.star_output = StarLinear(dims[-1], 1, K)
        self.aux_net = MLP_Block(len(aux_fields) * embedding_dim, list(aux_hidden_units),
                                 hidden_activations=hidden_activations, output_dim=1)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def star_hidden(self, emb: torch.Tensor, domain: torch.Tensor, groups: DomainGroups) -> torch.Tensor:
        """The star FCN's last hidden layer ``B x H`` (the input of its output layer) from the field embeddings
        ``B x F x D``, row ``b`` through domain ``domain[b]``'s weights and PN statistics."""
        h = emb.flatten(1)
        if self.input_norm is not None:
            h = self.input_norm(h, domain)
        for layer, star in enumerate(self.star_layers):
            h = star(h, groups)
            if self.hidden_norms:
                h = self.hidden_norms[layer](h, domain)
            h = self.activations[layer](h)
            if self.dropout is not None:
                h = self.dropout(h)
        return h

    def main_logit(self, emb: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """The star FCN's logit ``s_m`` from the field embeddings ``B x F x D``; shape ``B``."""
        groups = DomainGroups(domain, self.num_domains)
        return self.star_output(self.star_hidden(emb, domain, groups), groups).squeeze(-1)  # a logit: no activation

    def expert_outputs_for_analysis(self, X):
        """One expert per domain: domain ``s``'s effective star FCN (``W ⊙ W_s``, ``b + b_s``, PN with domain
        ``s``'s statistics) run on every row, its last hidden layer ``B x H`` (the input of its output layer, the
        representation its main logit is a linear function of); ``K x B x H``, expert ``s`` bound to domain ``s``.

        STAR has no mixture of experts; the per-domain networks are the only per-domain representations it has,
        and they have the structure of the Single Domain reference networks of eq. (1), so they are bound to their
        domains (eq. 3). The paper lists STAR among the models without domain-bound experts (eq. 2) without
        saying what its experts are. Meant for eval mode (the analysis calls it so): in train mode partitioned
        normalization would update domain ``s``'s running statistics with every row.
        """
        emb = single(self.embedding(X))  # B x F x D
        outputs = []
        for s in range(self.num_domains):
            domain = torch.full((emb.shape[0],), s, dtype=torch.long, device=emb.device)
            outputs.append(self.star_hidden(emb, domain, DomainGroups(domain, self.num_domains)))
        return torch.stack(outputs), list(range(self.num_domains))

    def logits(self, X, domain):
        emb = single(self.embedding(X))  # B x F x D
        aux_logit = self.aux_net(self.aux_inputs(emb).flatten(1)).squeeze(-1)
        return self.main_logit(emb, domain) + aux_logit, {}
