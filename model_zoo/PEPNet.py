"""PEPNet: Parameter and Embedding Personalized Network (Chang et al., KDD 2023).

    fields --embedding (shared table)--> E                                       (B x F x D)
    Gate NU: delta = 2 * sigmoid(W2 ReLU(W1 x))                                  eq. (1)-(2)
    EPNet:  delta_domain = GateNU([E(F_d), stopgrad(E)]);  O_ep = delta_domain ⊙ E      eq. (3)-(4)
    PPNet:  O_prior = [E(F_u), E(F_i), E(F_a)]
            per hidden layer l:  H_l = act([BN](H_{l-1} W_l + b_l)) ⊙ GateNU_l([O_prior, stopgrad(O_ep)])   eq. (5)-(7)
            H_0 = O_ep;  shared layers [256, 128], then each domain's tower [64] (gated per tower) -> logit

The stop-gradient keeps the gates from pulling the embeddings: the embeddings learn only through the main path
(``O_ep`` feeds the DNN un-detached). A public PPNet feeds the detached tensor into the tower itself, so the
embeddings never learn; here only the gate inputs are detached.

Choices where the paper is open (each with its reason):

* EPNet gate granularity ``epnet_gate``: ``field`` (default) gives one factor per field, broadcast over its D
  dimensions - the paper describes EPNet as a personalised *selection* of features "with different importance";
  ``element`` gives one factor per embedding dimension.
* Prior inputs get their own embedding table (``prior_fields`` of EPNet and PPNet, one table of width D), as the
  paper treats personalised priors as separate inputs of the Gate NUs; it also keeps the main embeddings'
  gradient exactly the main-path gradient. EPNet's domain-side input ``epnet_fields`` defaults to the domain
  field; PPNet's priors ``ppnet_prior_fields`` default to user id, item id and author id (the paper's
  user/item/author-side priors).
* PEPNet personalises multi-*task* towers; the benchmark has one task (click), so PPNet gates one DNN: shared
  hidden layers [256, 128] and, on top, the per-domain towers [64] that every model here has (the size rule).
  A tower hidden layer's gate emits one factor vector per domain tower (the paper splits the gate output per
  task tower the same way); each domain's tower (and its block of gate factors) runs on its own
  domain's rows only. Gates act on the hidden units (the abstract:
  "scales the bottom-level Embedding and top-level DNN hidden units"), not on the DNN input, which EPNet
  already scales.
* ``expert_outputs_for_analysis`` (Diversity Index, covariance heatmaps): one expert per domain, its gated tower
  hidden output on every row; bound to domain s (eq. 3).
* Gate NU hidden width ``gate_hidden_dim``: the paper does not give it; default = the width of what the gate
  scales (F*D for EPNet, the layer width for PPNet). ``stop_gradient: False`` removes both stop-gradients (an
  ablation, and the reference the tests compare against).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from mdl_bench.model_zoo.core.fuxictr_api import get_activation

from mdl_bench.kernel.errors import UserError
from .base import MultiDomainModel
from .layers import BatchedMLP, DomainGroups, FieldSelection, MultiEmbedding, check_fields, single
from .layers.gate_nu import GateNU


class PEPNet(MultiDomainModel):
    """EPNet + PPNet on a shared DNN with per-domain towers.

    Tuned by the ``tune`` suite: the training recipe every method shares, plus its own key hyperparameter
    ``epnet_gate`` (``field`` or ``element``: EPNet's scaling granularity). Widths follow the benchmark's size rule
    and are not tuned.

    Args:
        epnet_fields: domain-side prior fields of EPNet's gate (default: the domain field).
        ppnet_prior_fields: user/item/author-side prior fields of PPNet's gates.
        epnet_gate: ``"field"`` (one factor per field) or ``"element"`` (one per embedding dimension).
        dnn_hidden_units: widths of the shared hidden layers, each gated by PPNet.
        tower_hidden_units: widths of each domain tower's hidden layers, each gated per tower.
        net_dropout: dropout after every gated hidden layer.
        batch_norm: batch normalisation after every hidden linear map (shared layers and towers), before the
            activation and the gate.
        gate_gamma: upper bound of the Gate NU factors (2 in the paper).
        gate_hidden_dim: hidden width of every Gate NU (default: the width of what it scales).
        stop_gradient: detach the embedding / EPNet output in the gate inputs (the paper's ∅; default True).
    """

    group = "MDL"

    def __init__(self, feature_map, model_id: str = "PEPNet", gpu: int = -1, learning_rate: float = 1e-3,
                 embedding_dim: int = 16, epnet_fields: Sequence[str] | None = None,
                 ppnet_prior_fields: Sequence[str] = ("user_id", "item_id", "item_author"),
                 epnet_gate: str = "field", dnn_hidden_units: Sequence[int] = (256, 128),
                 tower_hidden_units: Sequence[int] = (64,), hidden_activations: str = "ReLU",
                 net_dropout: float = 0.0, batch_norm: bool = False, gate_gamma: float = 2.0, gate_hidden_dim: int | None = None,
                 stop_gradient: bool = True, **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu, learning_rate=learning_rate,
                         embedding_dim=embedding_dim, **kwargs)
        K, D = self.num_domains, embedding_dim
        if epnet_gate not in ("field", "element"):
            raise UserError(f"PEPNet: epnet_gate must be field or element, got {epnet_gate!r}")
        self.epnet_gate, self.stop_gradient = epnet_gate, bool(stop_gradient)
        epnet_fields = check_fields(feature_map, list(epnet_fields or [self.domain_field]), "epnet_fields", "PEPNet")
        ppnet_fields = check_fields(feature_map, list(ppnet_prior_fields), "ppnet_prior_fields", "PEPNet")
        if not ppnet_fields:
            raise UserError("PEPNet: ppnet_prior_fields is empty; list the user/item-side fields of PPNet's gates")
        self.embedding = MultiEmbedding(feature_map, D, 1)
        self.prior_embedding = MultiEmbedding(feature_map, D, 1, fields=epnet_fields + ppnet_fields)
        # by name: the prior table returns its fields in feature-map order, not in the options' order
        self.epnet_prior = FieldSelection("epnet_fields", epnet_fields, self.prior_embedding)
        self.ppnet_prior = FieldSelection("ppnet_prior_fields", ppnet_fields, self.prior_embedding)
        F, FD = self.embedding.num_fields, self.embedding.output_dim
        self.ep_gate = GateNU(len(epnet_fields) * D + FD, F if epnet_gate == "field" else FD,
                              gate_hidden_dim or FD, gate_gamma)
        pp_in = len(ppnet_fields) * D + FD
        dims = [FD] + list(dnn_hidden_units)
        self.dnn_layers = nn.ModuleList([nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:])])
        self.dnn_gates = nn.ModuleList([GateNU(pp_in, o, gate_hidden_dim or o, gate_gamma)
                                        for o in dnn_hidden_units])
        tower_dims = [dims[-1]] + list(tower_hidden_units)
        # One single-hidden-layer BatchedMLP per tower layer, so that the gate can act between layers.
        self.tower_layers = nn.ModuleList([BatchedMLP(K, i, [o], activation=hidden_activations, batch_norm=batch_norm)
                                           for i, o in zip(tower_dims[:-1], tower_dims[1:])])
        self.tower_gates = nn.ModuleList([GateNU(pp_in, K * o, gate_hidden_dim or K * o, gate_gamma)
                                          for o in tower_hidden_units])
        self.tower_output = BatchedMLP(K, tower_dims[-1], [], output_dim=1)
        self.norms = nn.ModuleList([nn.BatchNorm1d(o) for o in dnn_hidden_units] if batch_norm else [])
        self.activations = nn.ModuleList([get_activation(hidden_activations) for _ in dnn_hidden_units])
        self.dropout = nn.Dropout(net_dropout) if net_dropout > 0 else None
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def _gate_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach() if self.stop_gradient else x

    def epnet(self, X) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(O_ep, delta_domain, prior)``: personalised embedding ``B x F*D``, EPNet's factors (``B x F`` or
        ``B x F*D``) and the prior embeddings ``B x P x D``."""
        emb = single(self.embedding(X))  # B x F x D
        prior = single(self.prior_embedding(X))  # B x P x D
        gate_in = torch.cat([self.epnet_prior(prior).flatten(1), self._gate_input(emb.flatten(1))], dim=1)
        delta = self.ep_gate(gate_in)
        if self.epnet_gate == "field":
            o_ep = (emb * delta.unsqueeze(-1)).flatten(1)
        else:
            o_ep = emb.flatten(1) * delta
        return o_ep, delta, prior

    def gates(self, X) -> list[torch.Tensor]:
        """Every Gate NU output of a batch (EPNet's, then PPNet's per layer), for inspection and tests."""
        o_ep, delta, prior = self.epnet(X)
        pp_in = torch.cat([self.ppnet_prior(prior).flatten(1), self._gate_input(o_ep)], dim=1)
        return [delta] + [gate(pp_in) for gate in list(self.dnn_gates) + list(self.tower_gates)]

    def tower_hidden(self, X, groups: DomainGroups | None = None) -> torch.Tensor:
        """The input of the towers' logit layer.

        With ``groups``: ``B x H`` in ``groups``' sorted order, each row through its own domain's gated tower
        only (tower ``s`` and its batch norm see the rows of domain ``s``). Without: ``K x B x H``, every domain's
        gated tower on every row (for the analyses), or the shared ``B x H`` when ``tower_hidden_units`` is
        empty."""
        o_ep, _, prior = self.epnet(X)
        pp_in = torch.cat([self.ppnet_prior(prior).flatten(1), self._gate_input(o_ep)], dim=1)
        h = o_ep  # the tower consumes the un-detached personalised embedding
        for layer, (linear, act, gate) in enumerate(zip(self.dnn_layers, self.activations, self.dnn_gates)):
            h = linear(h)
            if self.norms:
                h = self.norms[layer](h)
            h = act(h) * gate(pp_in)
            if self.dropout is not None:
                h = self.dropout(h)
        if groups is not None:
            h, pp_in = groups.sort(h), groups.sort(pp_in)
            own = groups.sorted_domain.view(-1, 1, 1)
        for layer, gate in zip(self.tower_layers, self.tower_gates):
            if groups is not None:  # tower s on the rows of s; the gate's own-domain block of factors
                t = layer.routed(h, groups, sorted_rows=True)  # B x H
                factors = gate(pp_in).view(t.shape[0], self.num_domains, t.shape[1])
                h = t * factors.gather(1, own.expand(-1, 1, t.shape[1])).squeeze(1)
            else:
                t = layer(h)  # K x B x H, every tower on every row
                h = t * gate(pp_in).view(t.shape[1], self.num_domains, t.shape[2]).transpose(0, 1)  # K x B x H
            if self.dropout is not None:
                h = self.dropout(h)
        return h

    def expert_outputs_for_analysis(self, X):
        """One expert per domain: domain ``s``'s tower hidden output (PPNet-gated, the input of its logit layer)
        on every row, ``K x B x H``, bound to domain ``s`` (eq. 3); ``None`` without tower hidden layers.

        PEPNet has no mixture of experts; its per-domain towers (each gated by PPNet per row) are its only
        per-domain representations. The paper plots PEPNet in figure 1a without saying what its experts are.
        """
        if not len(self.tower_layers):
            return None
        return self.tower_hidden(X), list(range(self.num_domains))

    def logits(self, X, domain):
        groups = DomainGroups(domain, self.num_domains)
        hidden = self.tower_hidden(X, groups)  # B x H, sorted by domain
        return groups.unsort(self.tower_output.routed(hidden, groups, sorted_rows=True).squeeze(-1)), {}
