"""HiNet: Hierarchical Information Extraction Network (Zhou et al., SIGIR 2023), scenarios = domains.

    fields --embedding--> x                                                    (B x F*D)
    Scenario extraction layer
      SEI (sub-expert integration) = n sub-expert MLPs mixed by a softmax gate on x
      G   = shared SEI(x)                         scenario-shared information
      S_k = SEI_k(x), one SEI per scenario k      scenario-specific information (all K, on every row)
      SAN: w = softmax over scenarios of (W e_s), e_s the row's scenario embedding, with the row's own
           scenario masked out (weight exactly 0);  A = sum_{k != s} w_k S_k       transferred information
      C = [A, S_s, G]                                                          (B x 3H)
    Task extraction layer (scenario s's own): CGC with its task-specific and task-shared experts on C,
      mixed by the task's softmax gate  -->  tower of scenario s  -->  logit

Choices where the paper is open (each with its reason):

* HiNet is multi-scenario *and* multi-task; the benchmark has one task (click). Each scenario keeps its own task
  extraction layer, which with one task is a CGC whose single task gate mixes that scenario's
  ``task_specific_experts`` and ``task_shared_experts`` (with more tasks the shared ones would be shared among
  them); then the scenario's tower. The task layer of scenario s only runs on the rows of s (rows grouped by
  domain; every scenario's weights stay in the graph). The CGC layer of the MTL models (tasks = domains, shared
  experts shared across domains) is a different structure, so it is not reused here.
* Sub-experts: the shared SEI has ``shared_sub_experts`` (default one per domain, the size rule's "one expert
  per domain in a mixture"), each scenario SEI ``specific_sub_experts`` (default 2, the smallest mixture:
  every scenario's SEI runs on every row because SAN needs all S_k, so K x 2 more MLPs). Sub-experts are
  [256, 128] (the size rule's expert MLP); task experts are one layer of 128 on top of them (a second
  [256, 128] stack would make HiNet twice as deep as every other method); towers [64].
* The scenario embedding of SAN is the domain field's embedding from the shared table.
* ``expert_outputs_for_analysis`` reports the SEI outputs: G (shared, bound to no domain) and S_1..S_K (S_k
  bound to domain k), ``(K+1) x B x H``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import MultiDomainModel
from .layers import BatchedMLP, DomainGroups, DomainTowers, MultiEmbedding, SoftmaxGate, gather_domain, mix, single


class HiNet(MultiDomainModel):
    """HiNet with one click task per scenario.

    Tuned by the ``tune`` suite: the training recipe every method shares only; it has no own
    hyperparameter that is not a width (widths follow the benchmark's size rule and are not tuned).

    Args:
        sub_expert_hidden_units: widths of every sub-expert MLP; the last is ``H``.
        shared_sub_experts: sub-experts of the shared SEI (``None``: one per domain).
        specific_sub_experts: sub-experts of each scenario's SEI.
        task_specific_experts, task_shared_experts: experts of each scenario's CGC task layer.
        task_expert_hidden_units: widths of each task-layer expert.
        tower_hidden_units: widths of each scenario tower before the logit.
    """

    group = "MDL"

    def __init__(self, feature_map, model_id: str = "HiNet", gpu: int = -1, learning_rate: float = 1e-3,
                 embedding_dim: int = 16, sub_expert_hidden_units: Sequence[int] = (256, 128),
                 shared_sub_experts: int | None = None, specific_sub_experts: int = 2,
                 task_specific_experts: int = 1, task_shared_experts: int = 1,
                 task_expert_hidden_units: Sequence[int] = (128,), tower_hidden_units: Sequence[int] = (64,),
                 hidden_activations: str = "ReLU", net_dropout: float = 0.0, batch_norm: bool = False, **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu, learning_rate=learning_rate,
                         embedding_dim=embedding_dim, **kwargs)
        K = self.num_domains
        self.n_shared = int(shared_sub_experts or K)
        self.n_specific = int(specific_sub_experts)
        self.embedding = MultiEmbedding(feature_map, embedding_dim, 1)
        self.scenario_index = self.embedding.fields.index(self.domain_field)
        I = self.embedding.output_dim
        # Scenario extraction layer: all sub-experts (shared SEI first, then SEI_1..SEI_K) in one batched MLP.
        self.sub_experts = BatchedMLP(self.n_shared + K * self.n_specific, I, sub_expert_hidden_units,
                                      activation=hidden_activations, dropout=net_dropout, batch_norm=batch_norm)
        H = self.sub_experts.output_dim
        self.shared_gate = SoftmaxGate(I, 1, self.n_shared)
        self.specific_gates = SoftmaxGate(I, K, self.n_specific)  # "domain" k of this gate = SEI_k's gate
        self.san = nn.Linear(embedding_dim, K)
        # Task extraction layer, one CGC (one task) per scenario.
        self.n_task_experts = int(task_specific_experts) + int(task_shared_experts)
        self.task_experts = nn.ModuleList([
            BatchedMLP(self.n_task_experts, 3 * H, task_expert_hidden_units, activation=hidden_activations,
                       dropout=net_dropout, batch_norm=batch_norm) for _ in range(K)])
        self.task_gates = nn.ModuleList([SoftmaxGate(3 * H, 1, self.n_task_experts) for _ in range(K)])
        self.towers = DomainTowers(K, self.task_experts[0].output_dim, tower_hidden_units,
                                   activation=hidden_activations, dropout=net_dropout, batch_norm=batch_norm)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def scenario_layer(self, X) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(G, S, e_s)``: shared SEI output ``B x H``, scenario SEI outputs ``K x B x H`` and the scenario
        embeddings ``B x D``."""
        emb = single(self.embedding(X))  # B x F x D
        x = emb.flatten(1)
        out = self.sub_experts(x)  # (n_shared + K*n_specific) x B x H
        shared = single(mix(out[:self.n_shared], self.shared_gate(x)))  # B x H
        specific_out = out[self.n_shared:].view(self.num_domains, self.n_specific, *out.shape[1:])  # K x n x B x H
        specific = torch.einsum("bkn,knbh->kbh", self.specific_gates(x), specific_out)
        return shared, specific, emb[:, self.scenario_index]

    def attention(self, scenario_emb: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """SAN's weights ``B x K`` over the scenarios: softmax of ``W e_s`` with the row's own scenario masked
        out, so its weight is exactly 0 and the others sum to 1."""
        scores = self.san(scenario_emb)
        own = torch.nn.functional.one_hot(domain, self.num_domains).bool()
        if self.num_domains == 1:  # nothing to transfer from
            return torch.zeros_like(scores)
        return torch.softmax(scores.masked_fill(own, float("-inf")), dim=1)

    def expert_outputs_for_analysis(self, X):
        shared, specific, _ = self.scenario_layer(X)
        return torch.cat([shared.unsqueeze(0), specific], dim=0), [None] + list(range(self.num_domains))

    def logits(self, X, domain):
        shared, specific, scenario_emb = self.scenario_layer(X)
        transfer = torch.einsum("bk,kbh->bh", self.attention(scenario_emb, domain), specific)
        c = torch.cat([transfer, gather_domain(specific, domain), shared], dim=1)  # B x 3H
        groups = DomainGroups(domain, self.num_domains)
        parts = []
        for s, rows in enumerate(groups.split(c)):  # scenario s's task layer on its own rows
            experts = self.task_experts[s](rows)  # n x n_s x H2
            weights = self.task_gates[s](rows)  # n_s x 1 x n
            parts.append(single(mix(experts, weights)))
        task_out = groups.merge(parts)  # B x H2
        return self.towers(task_out, groups), {}  # tower s on the rows of scenario s
