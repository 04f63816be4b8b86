"""PLE: Progressive Layered Extraction (Tang et al., RecSys 2020) with domains in place of tasks.

    fields --embedding (one shared table)--> x                                     (B x F*D)
    level 1 (CGC + shared gate), on x for every stream:
        domain s's experts E_s, shared experts E_sh
        t_1^s = softmax(x W_s) . [E_s(x), E_sh(x)]          domain s's stream
        t_1^sh = softmax(x W_sh) . [E_1(x), ..., E_K(x), E_sh(x)]   shared stream (every expert)
    level 2 (final CGC): domain s's experts read t_1^s, shared experts t_1^sh
        t_2^s = softmax(t_1^s W'_s) . [E'_s(t_1^s), E'_sh(t_1^sh)]
    t_2^s --> tower s --> logit of domain s; a row reads its own domain's tower

A domain's gate never sees another domain's specific experts, so in the final level domain s's experts get
gradient only from domain s's rows; the shared gate of the non-final levels is where domains' experts meet.
Built from :class:`~model_zoo.layers.extraction.ExtractionNetwork` (``gate_scope="own"``).

Choices where the paper is open (each with its reason):

* Levels: ``num_levels: 2`` (PLE's point over CGC is the progressive, multi-level extraction; its experiments
  stack two or more levels). The size rule's expert MLP [256, 128] is split over the levels, one layer each
  ([256] then [128]), so PLE has the same expert depth and the same expert weights as a one-level expert
  [256, 128] and differs from CGC only by the gated mixing between the layers. ``num_levels: 1`` gives CGC,
  the setup of STEM's released PLE configs.
* Experts: one specific expert per domain and one shared expert (K + 1 experts, the size rule's "one expert per
  domain" plus the shared one PLE needs). The shared gate mixes *all* experts, as in the paper (a public
  implementation mixes only the shared ones there).
* Gates are one linear map and a softmax, as in the paper (``gate_hidden_units`` can add hidden layers).
* ``expert_outputs_for_analysis`` reports the final level's experts, whose mixtures feed the towers; domain
  s's specific experts are bound to s, the shared ones to no domain.
"""
from __future__ import annotations

from typing import Sequence

from .base import MultiDomainModel
from .layers import DomainGroups, DomainTowers, MultiEmbedding, single
from .layers.extraction import ExtractionNetwork, split_levels


class PLE(MultiDomainModel):
    """PLE with one embedding table, stacked extraction levels (CGC layers) and one tower per domain.

    Tuned by the ``tune`` suite: the training recipe every method shares, plus its own key hyperparameter
    ``num_levels`` (1 = one CGC layer, 2 = PLE's two extraction levels; same expert weights either way). Widths
    follow the benchmark's size rule and are not tuned.

    Args:
        num_levels: extraction levels (every level but the last has a shared gate).
        num_specific_experts: experts per domain in every level.
        num_shared_experts: shared experts in every level.
        expert_hidden_units: the expert MLP, split over the levels (its number of layers must be a multiple of
            ``num_levels``).
        gate_hidden_units: hidden layers of every gate (none in the paper).
        tower_hidden_units: widths of each domain tower before the logit.
    """

    group = "MTL (SE)"

    def __init__(self, feature_map, model_id: str = "PLE", gpu: int = -1, learning_rate: float = 1e-3,
                 embedding_dim: int = 16, num_levels: int = 2, num_specific_experts: int = 1,
                 num_shared_experts: int = 1, expert_hidden_units: Sequence[int] = (256, 128),
                 gate_hidden_units: Sequence[int] = (), tower_hidden_units: Sequence[int] = (64,),
                 hidden_activations: str = "ReLU", net_dropout: float = 0.0, batch_norm: bool = False, **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu, learning_rate=learning_rate,
                         embedding_dim=embedding_dim, **kwargs)
        self.embedding = MultiEmbedding(feature_map, embedding_dim, 1)
        self.extraction = ExtractionNetwork(
            self.num_domains, self.embedding.output_dim, split_levels(expert_hidden_units, num_levels, "PLE"),
            num_specific=num_specific_experts, num_shared=num_shared_experts, gate_scope="own",
            gate_input="stream", gate_hidden_units=gate_hidden_units, activation=hidden_activations,
            dropout=net_dropout, batch_norm=batch_norm)
        self.towers = DomainTowers(self.num_domains, self.extraction.output_dim, tower_hidden_units,
                                   activation=hidden_activations, dropout=net_dropout, batch_norm=batch_norm)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def expert_outputs_for_analysis(self, X):
        return self.extraction(single(self.embedding.flat(X)))[1], list(self.extraction.bound)

    def logits(self, X, domain):
        groups = DomainGroups(domain, self.num_domains)
        mixture = self.extraction.own(single(self.embedding.flat(X)), groups)  # B x H, the row's own domain's
        return self.towers(mixture, groups), {}  # tower s on the rows of domain s
