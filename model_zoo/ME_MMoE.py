"""ME-MMoE: MMoE on a multi-embedding layer (STEM's ME trick; Crocodile paper sections 2 and 4.2).

    fields --MultiEmbedding (M tables)------> e^(1..M)                   (M x B x F*D)
    e^(p) --expert MLP p (reads table p only)-> O^p                       (B x H)
    gate s: g^s = softmax([e^(1), ..., e^(M)] W_s)   one scalar/expert    (B x M)
    t^s = sum_p g^s_p O^p --> tower s --> logit of domain s; a row reads its own domain's gate and tower

Every table and every expert is shared by all domains (unlike ME-PLE and SDEM); expert p is reached only by
table p, so the M tables can learn different views of each feature.

Choices where the paper is open (each with its reason):

* M (``num_embeddings``) defaults to the number of domains, one expert per table (E = M = K, the size rule).
* The gates read all M tables concatenated: the embeddings the experts read, as MMoE's gate reads the experts'
  input. This is the same structure as Crocodile's table-5 ablation "ME, -, B" (``gating: mmoe``), so the two
  rows can be compared; the gate path is the only one through which a table reaches another table's expert's
  weight (never its output).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .base import MultiDomainModel
from .layers import (BatchedMLP, DomainGroups, DomainTowers, MultiEmbedding, SoftmaxGate, mix_own,
                     mixture_step_components)


class ME_MMoE(MultiDomainModel):
    """MMoE whose M experts each read their own embedding table.

    Tuned by the ``tune`` suite: the training recipe every method shares only; it has no own
    hyperparameter that is not a width (widths follow the benchmark's size rule and are not tuned).

    Args:
        num_embeddings: M, tables and experts (``None``: one per domain).
        expert_hidden_units: widths of every expert MLP; the last is ``H``.
        gate_hidden_units: hidden layers of each gate (none in MMoE).
        tower_hidden_units: widths of each domain tower before the logit.
    """

    group = "MTL (ME)"
    display_name = "ME-MMoE"

    def __init__(self, feature_map, model_id: str = "ME_MMoE", gpu: int = -1, learning_rate: float = 1e-3,
                 embedding_dim: int = 16, num_embeddings: int | None = None,
                 expert_hidden_units: Sequence[int] = (256, 128), gate_hidden_units: Sequence[int] = (),
                 tower_hidden_units: Sequence[int] = (64,), hidden_activations: str = "ReLU",
                 net_dropout: float = 0.0, batch_norm: bool = False, **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu, learning_rate=learning_rate,
                         embedding_dim=embedding_dim, **kwargs)
        self.num_experts = M = int(num_embeddings or self.num_domains)
        self.embedding = MultiEmbedding(feature_map, embedding_dim, M)
        I = self.embedding.output_dim
        self.experts = BatchedMLP(M, I, expert_hidden_units, activation=hidden_activations, dropout=net_dropout,
                                  batch_norm=batch_norm)
        self.gate = SoftmaxGate(M * I, self.num_domains, M, gate_hidden_units)
        self.towers = DomainTowers(self.num_domains, self.experts.output_dim, tower_hidden_units,
                                   activation=hidden_activations, dropout=net_dropout, batch_norm=batch_norm)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def expert_outputs_for_analysis(self, X):
        return self.experts(self.embedding.flat(X)), [None] * self.num_experts

    def _gate_weights(self, emb: torch.Tensor, domain: torch.Tensor, groups: DomainGroups | None = None) -> torch.Tensor:
        """Each row's own-domain weights ``B x M`` from all ``M`` tables side by side (``B x (M*F*D)``)."""
        gate_in = emb.permute(1, 0, 2).reshape(emb.shape[1], -1)  # B x (M*F*D)
        return self.gate.own(gate_in, groups or DomainGroups(domain, self.num_domains))

    def step_components(self, X, domain) -> dict[str, Callable[[], torch.Tensor]]:
        """Embedding lookup, experts, gate and mixing, towers."""
        with torch.no_grad():
            emb = self.embedding.flat(X)
            expert_out = self.experts(emb)
        return mixture_step_components(lambda: self.embedding.flat(X), emb, self.experts, expert_out,
                                       lambda e: self._gate_weights(e, domain), self.towers, domain)

    def logits(self, X, domain):
        groups = DomainGroups(domain, self.num_domains)
        emb = self.embedding.flat(X)  # M x B x F*D
        expert_out = self.experts(emb)  # M x B x H: expert p on table p
        weights = self._gate_weights(emb, domain, groups)  # B x M
        return self.towers(mix_own(expert_out, weights), groups), {}  # tower s on the rows of domain s
