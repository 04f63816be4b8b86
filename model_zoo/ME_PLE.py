"""ME-PLE: PLE on a multi-embedding layer with domain-specific and shared tables (STEM's ME-PLE; Crocodile
paper sections 2 and 4.2, figure 4).

    fields --MultiEmbedding (K + 1 tables)--> e^1..e^K (domain-specific), e^sh (shared)   ((K+1) x B x F*D)
    level 1 (CGC + shared gate):
        domain s's experts and gate read e^s;  shared experts and the shared gate read e^sh
        t_1^s  = softmax(e^s W_s)   . [E_s(e^s), E_sh(e^sh)]
        t_1^sh = softmax(e^sh W_sh) . [E_1(e^1), ..., E_K(e^K), E_sh(e^sh)]
    level 2 (final CGC): domain s's experts read t_1^s, shared experts t_1^sh
        t_2^s  = softmax(t_1^s W'_s) . [E'_s(t_1^s), E'_sh(t_1^sh)]
    t_2^s --> tower s --> logit of domain s; a row reads its own domain's tower

Table s is read only by domain s's experts and gate, so (with one level) it learns only from domain s's rows:
the small domains' tables see little data (the paper's finding 2). Built from
:class:`~model_zoo.layers.extraction.ExtractionNetwork` (``gate_scope="own"``, ``gate_input="stream"``).

Choices where the paper is open (each with its reason):

* Levels and experts as :mod:`PLE` (the single-embedding row it is compared with): ``num_levels: 2`` with the
  expert MLP [256, 128] split into [256] then [128]; one specific expert per domain and one shared expert, so
  K + 1 tables (one per expert group). With two levels, level 1's shared gate lets the shared stream mix every
  domain's level-1 experts, as in PLE; ``num_levels: 1`` gives the CGC form of STEM's configs, where table s
  is reached by domain s's rows only.
* Domain s's gate reads its own table e^s, as PLE's task gate reads its task's input.
* ``expert_outputs_for_analysis``: the final level's experts, domain-specific ones bound to their domain.
"""
from __future__ import annotations

from typing import Sequence

from .base import MultiDomainModel
from .layers import DomainGroups, DomainTowers, MultiEmbedding
from .layers.extraction import ExtractionNetwork, split_levels


class ME_PLE(MultiDomainModel):
    """PLE whose domain-specific experts read domain-specific tables and shared experts a shared table.

    Tuned by the ``tune`` suite: the training recipe every method shares, plus its own key hyperparameter
    ``num_levels`` (1 or 2 extraction levels, as PLE). Widths follow the benchmark's size rule and are not tuned.

    Args:
        num_levels: extraction levels (every level but the last has a shared gate).
        num_specific_experts: experts per domain in every level (all read the domain's table in level 1).
        num_shared_experts: shared experts in every level (all read the shared table in level 1).
        expert_hidden_units: the expert MLP, split over the levels.
        gate_hidden_units: hidden layers of every gate (none in PLE).
        tower_hidden_units: widths of each domain tower before the logit.
    """

    group = "MTL (ME)"
    display_name = "ME-PLE"

    def __init__(self, feature_map, model_id: str = "ME_PLE", gpu: int = -1, learning_rate: float = 1e-3,
                 embedding_dim: int = 16, num_levels: int = 2, num_specific_experts: int = 1,
                 num_shared_experts: int = 1, expert_hidden_units: Sequence[int] = (256, 128),
                 gate_hidden_units: Sequence[int] = (), tower_hidden_units: Sequence[int] = (64,),
                 hidden_activations: str = "ReLU", net_dropout: float = 0.0, batch_norm: bool = False, **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu, learning_rate=learning_rate,
                         embedding_dim=embedding_dim, **kwargs)
        # tables 0..K-1: domain s's; table K: shared
        self.embedding = MultiEmbedding(feature_map, embedding_dim, self.num_domains + 1)
        self.extraction = ExtractionNetwork(
            self.num_domains, self.embedding.output_dim, split_levels(expert_hidden_units, num_levels, "ME_PLE"),
            num_specific=num_specific_experts, num_shared=num_shared_experts, gate_scope="own",
            gate_input="stream", gate_hidden_units=gate_hidden_units, activation=hidden_activations,
            dropout=net_dropout, batch_norm=batch_norm)
        self.towers = DomainTowers(self.num_domains, self.extraction.output_dim, tower_hidden_units,
                                   activation=hidden_activations, dropout=net_dropout, batch_norm=batch_norm)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    @property
    def embedding_table_domains(self) -> list:
        """Tables ``0..K-1`` of the main embedding belong to domains ``0..K-1``; table ``K`` is shared."""
        return list(range(self.num_domains)) + [None]

    def expert_outputs_for_analysis(self, X):
        return self.extraction(self.embedding.flat(X))[1], list(self.extraction.bound)

    def logits(self, X, domain):
        groups = DomainGroups(domain, self.num_domains)
        mixture = self.extraction.own(self.embedding.flat(X), groups)  # streams = tables; B x H, own domain's
        return self.towers(mixture, groups), {}  # tower s on the rows of domain s
