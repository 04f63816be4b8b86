"""SDEM: Shared and Domain-specific EMbeddings, STEM-Net (Su et al., AAAI 2024) with domains in place of tasks
(Crocodile paper sections 2 and 4.2, figure 4).

    fields --MultiEmbedding (K + 1 tables)--> e^1..e^K (domain-specific), e^sh (shared)   ((K+1) x B x F*D)
    experts: domain s's specific experts E_s read e^s; shared experts E_sh read e^sh
    gate of domain s ("all forward, task-specific backward"):
        g^s = softmax((e^s + e^sh) W_s)                       over ALL experts
        t^s = sum_{e in E_s, E_sh} g^s_e O^e + sum_{e in E_j, j != s} g^s_e stopgrad(O^e)
    t^s --> tower s --> logit of domain s; a row reads its own domain's tower

Domain s's rows use every domain's experts in the forward pass, but their gradient reaches only domain s's
experts and table and the shared ones: another domain's table learns only from that domain's rows. Built from
:class:`~model_zoo.layers.extraction.ExtractionNetwork` (``gate_scope="all"``).

Choices where the paper is open (each with its reason), from STEM's paper and released code:

* Gate input ``gate_input``: ``stream+shared`` (default) is the sum ``e^s + e^sh`` of the domain's table and
  the shared one, as STEM's released code computes it (``gate(x[i] + x[-1])``) and as "its own slice + the
  shared one" reads; ``stream`` gives the gate only e^s, as the overview figure of STEM's repository draws it.
* Levels: ``num_levels: 1``, STEM-Net as in its paper's figure and its released configs (``num_layers: 1``).
  More levels add, as in STEM's code, a shared gate over all experts (no stop-gradient) feeding the next
  level's shared stream; the expert MLP is then split over the levels as in :mod:`PLE`.
* Experts: one specific expert per domain and one shared expert (K + 1 experts and tables; STEM's overview
  figure has K1 per task and K2 shared, its configs 1 per task).
* Gates are one linear map and a softmax (STEM's configs add gate hidden layers [128, 64];
  ``gate_hidden_units`` sets them) to match the other MTL rows' gates.
* ``expert_outputs_for_analysis``: the (last level's) experts, domain-specific ones bound to their domain.
"""
from __future__ import annotations

from typing import Sequence

from .base import MultiDomainModel
from .layers import DomainGroups, DomainTowers, MultiEmbedding
from .layers.extraction import ExtractionNetwork, split_levels


class SDEM(MultiDomainModel):
    """STEM-Net for domains: shared + domain-specific tables, stop-gradient on other domains' experts.

    Tuned by the ``tune`` suite: the training recipe every method shares, plus its own key hyperparameter
    ``gate_input`` (``stream`` or ``stream+shared``: what each domain's gate reads). Widths follow the benchmark's
    size rule and are not tuned.

    Args:
        num_levels: STEM layers (1 in STEM-Net).
        num_specific_experts: experts per domain (all read the domain's table).
        num_shared_experts: shared experts (all read the shared table).
        expert_hidden_units: widths of every expert MLP (split over the levels when ``num_levels > 1``).
        gate_input: ``"stream+shared"`` or ``"stream"`` (see the module docstring).
        gate_hidden_units: hidden layers of every gate.
        tower_hidden_units: widths of each domain tower before the logit.
    """

    group = "MTL (ME)"

    def __init__(self, feature_map, model_id: str = "SDEM", gpu: int = -1, learning_rate: float = 1e-3,
                 embedding_dim: int = 16, num_levels: int = 1, num_specific_experts: int = 1,
                 num_shared_experts: int = 1, expert_hidden_units: Sequence[int] = (256, 128),
                 gate_input: str = "stream+shared", gate_hidden_units: Sequence[int] = (),
                 tower_hidden_units: Sequence[int] = (64,), hidden_activations: str = "ReLU",
                 net_dropout: float = 0.0, batch_norm: bool = False, **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu, learning_rate=learning_rate,
                         embedding_dim=embedding_dim, **kwargs)
        # tables 0..K-1: domain s's; table K: shared
        self.embedding = MultiEmbedding(feature_map, embedding_dim, self.num_domains + 1)
        self.extraction = ExtractionNetwork(
            self.num_domains, self.embedding.output_dim, split_levels(expert_hidden_units, num_levels, "SDEM"),
            num_specific=num_specific_experts, num_shared=num_shared_experts, gate_scope="all",
            gate_input=gate_input, gate_hidden_units=gate_hidden_units, activation=hidden_activations,
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
        mixture = self.extraction.own(self.embedding.flat(X), groups)  # B x H, the row's own domain's
        return self.towers(mixture, groups), {}  # tower s on the rows of domain s
