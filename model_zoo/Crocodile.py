"""Crocodile: Cross Experts Covariance for Disentangled Learning (Lin et al., paper sections 3.1-3.4).

    fields --MultiEmbedding (M shared tables)--> e^(1..M)          eq. (4)
    e^(p)  --expert MLP p-------------------->  O^p  (B x d)       eq. (5)
    prior fields (own table) ---------------->  r    (B x l)       eq. (10)
    gate s: softmax over experts of r W^s --->  g^s  (B x M x d)   eq. (11)
    t^s = sum_p g^s_p * O^p  --> tower s ---->  logit of domain s  eq. (9), (6)
    loss = sum_s mean BCE_s + alpha * CovLoss(O^1..O^M)           eq. (8), (7)

Every switch of the ablation (table 5) is an option:

* ``embedding_mode``: ``ME`` (M tables, expert p reads table p) or ``SE`` (one table read by all M experts);
* ``gating``: ``mmoe`` (the table's "-": MMoE's softmax gate, one scalar per expert, reading the embeddings
  the experts read - all M tables concatenated in ME mode), ``pg`` (the same scalar gate reading the prior
  embedding ``r``) or ``peg`` (element-wise: a softmax over experts for each of the d dimensions);
* ``aux_loss``: ``cov`` (B+C) or ``none`` (B), weighted by ``aux_alpha`` (alias ``cov_alpha``); table 4's
  alternatives ``dot``, ``cos``, ``dcorr``, ``ole``, ``importance`` and ``trans5`` are options too
  (:mod:`model_zoo.layers.disentangle`).

``num_embeddings`` (M) defaults to the number of domains, as in the paper; figure 8 varies it from 2.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from mdl_bench.kernel.errors import UserError
from .base import MultiDomainModel
from .layers import (BatchedMLP, DomainGroups, DomainTowers, ElementwiseGate, FieldSelection, MultiEmbedding,
                     SoftmaxGate, check_fields, make_disentangle_loss, mix_own,
                     mixture_step_components, single)


class Crocodile(MultiDomainModel):
    """Crocodile and its table-5 ablations.

    Tuned by the ``tune`` suite: the training recipe every method shares, plus its own key hyperparameter
    ``cov_alpha`` (alpha, CovLoss's weight in eq. 8; refined by the ``alpha`` suite). Widths follow the benchmark's
    size rule and are not tuned.

    Args:
        num_embeddings: M, the number of embedding tables and experts (``None``: one per domain).
        embedding_mode: ``"ME"`` or ``"SE"``.
        gating: ``"peg"``, ``"pg"`` or ``"mmoe"``.
        prior_fields: fields of the prior embedding ``r`` (default user id, item id, domain id).
        prior_embedding_dim: width of one prior field (default ``embedding_dim``).
        expert_hidden_units: widths of each expert MLP; its last width is ``d``.
        tower_hidden_units: widths of each domain tower before the logit.
        gate_hidden_units: hidden layers of the ``mmoe``/``pg`` gate (none in MMoE).
        aux_loss: ``"none"`` or a name of ``DISENTANGLE_LOSSES`` (``"cov"``, the paper's; table 4's ``"dot"``,
            ``"cos"``, ``"dcorr"``, ``"ole"``, ``"importance"``, ``"trans5"``).
        aux_alpha: weight alpha of the auxiliary loss in eq. (8); ``None`` takes ``cov_alpha``.
        cov_alpha: the same weight under its older name (kept so that existing configs work).
        cov_pairs, cov_normalization: options of :class:`~model_zoo.layers.CovLoss`.
        cov_sample_rows: CovLoss on this many random rows of the batch (scaled by N/rows), ``0`` = all rows.
            Default 32, appendix A's setting: on all rows of a 4096-row batch the (M*d)^2 Gram and its backward
            are a large share of a step, on 32 rows a small one (``mdl-bench perf`` measures both). Sampling
            inflates the l1 norm of near-zero covariances a little, so the 32-row value is somewhat above the
            all-row value; the measured cost and accuracy of both settings are on the documentation's
            performance page.
        aux_options: options of the other losses (e.g. ``{sample_rows: 1024}``), see their docstrings.
    """

    group = "Crocodile"

    def __init__(self, feature_map, model_id: str = "Crocodile", gpu: int = -1, learning_rate: float = 1e-3,
                 embedding_dim: int = 16, num_embeddings: int | None = None, embedding_mode: str = "ME",
                 gating: str = "peg", prior_fields: Sequence[str] = ("user_id", "item_id", "domain"),
                 prior_embedding_dim: int | None = None, expert_hidden_units: Sequence[int] = (256, 128),
                 tower_hidden_units: Sequence[int] = (64,), gate_hidden_units: Sequence[int] = (),
                 hidden_activations: str = "ReLU", net_dropout: float = 0.0, batch_norm: bool = False,
                 aux_loss: str = "cov", aux_alpha: float | None = None, cov_alpha: float = 1e-4,
                 cov_pairs: str = "p>=q", cov_normalization: str = "none", cov_sample_rows: int = 32,
                 aux_options: dict | None = None, **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu, learning_rate=learning_rate,
                         embedding_dim=embedding_dim, **kwargs)
        self.num_experts = M = int(num_embeddings or self.num_domains)
        self.embedding_mode = str(embedding_mode).upper()
        self.gating = str(gating).lower()
        if self.embedding_mode not in ("ME", "SE"):
            raise UserError(f"Crocodile: embedding_mode must be ME or SE, got {embedding_mode!r}")
        if self.gating not in ("peg", "pg", "mmoe"):
            raise UserError(f"Crocodile: gating must be peg, pg or mmoe, got {gating!r}")
        tables = M if self.embedding_mode == "ME" else 1
        self.embedding = MultiEmbedding(feature_map, embedding_dim, tables)
        self.experts = BatchedMLP(M, self.embedding.output_dim, expert_hidden_units, activation=hidden_activations,
                                  dropout=net_dropout, batch_norm=batch_norm)
        expert_dim = self.experts.output_dim
        if self.gating in ("pg", "peg"):
            fields = check_fields(feature_map, prior_fields, "prior_fields", "Crocodile")
            self.prior_embedding = MultiEmbedding(feature_map, prior_embedding_dim or embedding_dim, 1, fields=fields)
            self.prior = FieldSelection("prior_fields", fields, self.prior_embedding)
            gate_input = self.prior_embedding.output_dim
        else:
            gate_input = tables * self.embedding.output_dim
            self.unused_options = ("prior_fields",)
        if self.gating == "peg":
            self.gate = ElementwiseGate(gate_input, self.num_domains, M, expert_dim)
        else:
            self.gate = SoftmaxGate(gate_input, self.num_domains, M, gate_hidden_units)
        self.towers = DomainTowers(self.num_domains, expert_dim, tower_hidden_units, activation=hidden_activations,
                                   dropout=net_dropout, batch_norm=batch_norm)
        self.aux_name = "none" if aux_loss in (None, "none") else str(aux_loss)
        self.aux_alpha = self.cov_alpha = float(cov_alpha if aux_alpha is None else aux_alpha)
        options = (dict(pairs=cov_pairs, normalization=cov_normalization, sample_rows=cov_sample_rows)
                   if self.aux_name == "cov" else dict(aux_options or {}))
        loss = (make_disentangle_loss(self.aux_name, num_experts=M, expert_dim=expert_dim, **options)
                if self.aux_name != "none" else None)
        self.aux_loss_fn = loss if self.aux_alpha > 0 else None
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def _experts(self, emb: torch.Tensor) -> torch.Tensor:
        """Expert outputs ``M x B x d`` from the flat embeddings ``tables x B x (F*D)``."""
        return self.experts(emb if self.embedding_mode == "ME" else single(emb))  # M x B x FD, or one B x FD for all

    def _gate_weights(self, X: dict[str, torch.Tensor], emb: torch.Tensor, domain: torch.Tensor,
                      groups: DomainGroups | None = None) -> torch.Tensor:
        """Each row's own-domain weights ``B x M [x d]``. The gate reads all tables side by side,
        ``B x (tables*F*D)`` (``mmoe``), or the prior embedding ``r``, ``B x l`` (``pg``, ``peg``)."""
        if self.gating == "mmoe":
            gate_in = emb.permute(1, 0, 2).reshape(emb.shape[1], -1)
        else:
            gate_in = self.prior(single(self.prior_embedding(X))).flatten(1)
        return self.gate.own(gate_in, groups or DomainGroups(domain, self.num_domains))

    def expert_outputs(self, X: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(O, e)``: expert outputs ``M x B x d`` and the flat embeddings ``tables x B x (F*D)``."""
        emb = self.embedding.flat(X)
        return self._experts(emb), emb

    def expert_outputs_for_analysis(self, X):
        return self.expert_outputs(X)[0], [None] * self.num_experts

    def step_components(self, X, domain) -> dict[str, Callable[[], torch.Tensor]]:
        """Embedding lookup, experts, gate and mixing (the prior embedding included under ``pg``/``peg``),
        towers, and the auxiliary loss (under its name, ``cov`` by default) when it is on."""
        with torch.no_grad():
            expert_out, emb = self.expert_outputs(X)
        aux = None
        if self.aux_loss_fn is not None:
            gates = None  # most losses read the expert outputs alone; one that reads the gates gets a leaf of them
            if self.aux_loss_fn.needs_gates:
                with torch.no_grad():
                    gates = self._gate_weights(X, emb, domain)
                gates.requires_grad_(True)
            aux = {self.aux_name: lambda O: self.aux_loss_fn(O, gates)}
        return mixture_step_components(lambda: self.embedding.flat(X), emb, self._experts, expert_out,
                                       lambda e: self._gate_weights(X, e, domain), self.towers, domain, aux)

    def logits(self, X, domain):
        groups = DomainGroups(domain, self.num_domains)
        expert_out, emb = self.expert_outputs(X)  # M x B x d
        weights = self._gate_weights(X, emb, domain, groups)  # B x M [x d], own domain
        tower_in = mix_own(expert_out, weights)  # B x d
        logit = self.towers(tower_in, groups)  # B: tower s on the rows of domain s
        aux = {}
        if self.aux_loss_fn is not None and self.training:
            aux[self.aux_name] = self.aux_alpha * self.aux_loss_fn(expert_out, weights)
        return logit, aux

    @property
    def cov_loss(self):
        """The auxiliary loss module (its older name), or ``None``."""
        return self.aux_loss_fn
