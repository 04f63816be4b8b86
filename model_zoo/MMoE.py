"""MMoE: Multi-gate Mixture-of-Experts (Ma et al., KDD 2018) with domains in place of tasks.

    fields --embedding (one shared table)--> x                          (B x F*D)
    x --expert MLP e, e = 1..E-------------> O^e                        (B x H)
    gate s: g^s = softmax(x W_s)            (one scalar per expert)     (B x E)
    t^s = sum_e g^s_e O^e --> tower s ----> logit of domain s; a row goes through its own domain's gate and tower

Choices where the paper is open: the number of experts ``num_experts`` defaults to one per domain (the size
rule of the configs, E = K); a gate is one linear map and a softmax as in the paper (``gate_hidden_units`` can
add hidden layers). Only each row's own domain's gate is evaluated (the others would be discarded).
"""
from __future__ import annotations

from typing import Sequence

from .base import MultiDomainModel
from .layers import BatchedMLP, DomainGroups, DomainTowers, MultiEmbedding, SoftmaxGate, mix_own, single


class MMoE(MultiDomainModel):
    """E shared experts, one softmax gate and one tower per domain.

    Tuned by the ``tune`` suite: the training recipe every method shares only; it has no own
    hyperparameter that is not a width (widths follow the benchmark's size rule and are not tuned).

    Args:
        num_experts: E (``None``: one per domain).
        expert_hidden_units: widths of every expert MLP; the last is ``H``.
        gate_hidden_units: hidden layers of each gate (none in the paper).
        tower_hidden_units: widths of each domain tower before the logit.
    """

    group = "MTL (SE)"

    def __init__(self, feature_map, model_id: str = "MMoE", gpu: int = -1, learning_rate: float = 1e-3,
                 embedding_dim: int = 16, num_experts: int | None = None,
                 expert_hidden_units: Sequence[int] = (256, 128), gate_hidden_units: Sequence[int] = (),
                 tower_hidden_units: Sequence[int] = (64,), hidden_activations: str = "ReLU",
                 net_dropout: float = 0.0, batch_norm: bool = False, **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu, learning_rate=learning_rate,
                         embedding_dim=embedding_dim, **kwargs)
        self.num_experts = E = int(num_experts or self.num_domains)
        self.embedding = MultiEmbedding(feature_map, embedding_dim, 1)
        I = self.embedding.output_dim
        self.experts = BatchedMLP(E, I, expert_hidden_units, activation=hidden_activations, dropout=net_dropout,
                                  batch_norm=batch_norm)
        self.gate = SoftmaxGate(I, self.num_domains, E, gate_hidden_units)
        self.towers = DomainTowers(self.num_domains, self.experts.output_dim, tower_hidden_units,
                                   activation=hidden_activations, dropout=net_dropout, batch_norm=batch_norm)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def expert_outputs_for_analysis(self, X):
        return self.experts(single(self.embedding.flat(X))), [None] * self.num_experts

    def logits(self, X, domain):
        x = single(self.embedding.flat(X))  # B x F*D
        groups = DomainGroups(domain, self.num_domains)
        weights = self.gate.own(x, groups)  # B x E, own domain's gate
        tower_in = mix_own(self.experts(x), weights)  # B x H
        return self.towers(tower_in, groups), {}  # tower s on the rows of domain s
