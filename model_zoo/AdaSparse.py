"""AdaSparse: Learning Adaptively Sparse Structures for Multi-Domain CTR Prediction (Yang et al., CIKM 2022).

    fields --embedding--> h_0 = [e_d, e_a]              (domain-aware and domain-agnostic embeddings, B x F*D)
    per layer l = 0..L-1 (the input and every hidden layer of one shared DNN):
        pruner:  s_l = sigmoid(alpha * (W_l [e_d, h_l] + b_l))                      neuron-level factors
                 Binarization  pi_l = 1[s_l >= 1/2]         (straight-through gradient of s_l)
                 Scaling       pi_l = beta * s_l            (beta = 2: a neuron can be damped or amplified)
                 Fusion        pi_l = beta * s_l, set to exactly 0 where beta * s_l < epsilon
        h_l <- pi_l ⊙ h_l;   h_{l+1} = ReLU([BN](W h_l + b))       (BN with ``batch_norm: true``)
    logit = w^T h_L + b (no activation);  optional loss  lambda * sum_l |r_l - r*|  toward a sparsity ratio r*

Each domain gets its own sparse sub-network because the factors depend on the domain embedding ``e_d``.

Choices where the paper is open or public code differs (each with its reason):

* Pruning sets pi to exactly 0 below epsilon (``torch.where``); a public implementation multiplies by
  ``sign(pi - epsilon)``, which turns every small pi into -pi instead of pruning it.
* alpha is annealed with *training steps*: ``alpha_t = min(alpha_max, alpha_init + alpha_step * t)``; a larger
  alpha sharpens the sigmoid towards a step, so the factors move from soft to (nearly) hard as training goes
  on. ``t`` is a persistent buffer advanced in :meth:`AdaSparse.train_step` after each optimiser step - never in
  ``forward`` (a public implementation raises alpha on every forward call, evaluation included, so predicting
  changes the model) - and it is saved in checkpoints, so a reloaded model predicts the same. Defaults: alpha
  from 1 to 5 over 400 steps (about 4 epochs of kuairand_like: 400k rows at batch 4096).
* Binarization uses a straight-through estimator (forward the 0/1 step, backward the sigmoid's gradient), the
  usual way to train a hard mask; its threshold is s = 1/2, i.e. the pruner's linear output crossing 0.
* Sparsity regulariser (``sparsity_weight`` > 0, off by default): ``lambda * sum_l |r_l - r*|`` with the soft
  sparsity ``r_l = 1 - mean(s_l)`` over the batch and the layer's neurons (the hard ratio has no gradient);
  returned from ``logits`` as the auxiliary loss ``sparsity``.
* Domain-aware features ``domain_fields`` default to the domain field; their embeddings come from the shared
  table and are part of h_0. The backbone is one DNN [256, 128, 64] (the size rule's bottom [256, 128] plus tower
  width [64]): AdaSparse's per-domain part is the pruning, not separate towers. Default weighting: Fusion, with
  epsilon = 0.25 (a neuron is removed when its factor falls below a quarter of the neutral factor 1).
"""
from __future__ import annotations

from typing import Sequence

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from mdl_bench.model_zoo.core.fuxictr_api import get_activation

from mdl_bench.kernel.errors import UserError
from .base import MultiDomainModel
from .layers import FieldSelection, MultiEmbedding, check_fields, single

WEIGHTINGS = ("binarization", "scaling", "fusion")


@functools.lru_cache(maxsize=None)
def just_below(value: float, dtype: torch.dtype) -> float:
    """The largest number of ``dtype`` below ``value`` (as that dtype holds it)."""
    return float(torch.nextafter(torch.tensor(value, dtype=dtype), torch.tensor(-math.inf, dtype=dtype)))


class AdaSparse(MultiDomainModel):
    """One DNN whose input and hidden neurons are weighted (and pruned) per row by a domain-aware pruner.

    Tuned by the ``tune`` suite: the training recipe every method shares, plus its own key hyperparameter
    ``weighting`` (``fusion``, ``scaling`` or ``binarization``: the paper's three pruner forms). Widths follow the
    benchmark's size rule and are not tuned.

    Args:
        domain_fields: fields whose embeddings form ``e_d`` (default: the domain field).
        hidden_units: widths of the DNN's hidden layers.
        net_dropout: dropout after every (pruned) hidden layer.
        batch_norm: batch normalisation after every hidden linear map, before the activation and the pruner.
        weighting: ``"fusion"``, ``"scaling"`` or ``"binarization"``.
        beta: upper bound of the scaling/fusion factors.
        epsilon: fusion's pruning threshold on pi.
        alpha_init, alpha_max, alpha_step: the annealing schedule of alpha (per training step).
        prune_input: also weight the input layer (the embeddings), as the paper does.
        sparsity_target: r*, the wanted fraction of pruned neurons per layer.
        sparsity_weight: lambda of the sparsity regulariser (0: off).
    """

    group = "MDL"

    def __init__(self, feature_map, model_id: str = "AdaSparse", gpu: int = -1, learning_rate: float = 1e-3,
                 embedding_dim: int = 16, domain_fields: Sequence[str] | None = None,
                 hidden_units: Sequence[int] = (256, 128, 64), hidden_activations: str = "ReLU",
                 net_dropout: float = 0.0, batch_norm: bool = False, weighting: str = "fusion", beta: float = 2.0, epsilon: float = 0.25,
                 alpha_init: float = 1.0, alpha_max: float = 5.0, alpha_step: float = 1e-2,
                 prune_input: bool = True, sparsity_target: float = 0.5, sparsity_weight: float = 0.0, **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu, learning_rate=learning_rate,
                         embedding_dim=embedding_dim, **kwargs)
        self.weighting = str(weighting).lower()
        if self.weighting not in WEIGHTINGS:
            raise UserError(f"AdaSparse: weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
        if not 0.0 <= float(sparsity_target) < 1.0:
            raise UserError(f"AdaSparse: sparsity_target must lie in [0, 1), got {sparsity_target!r}")
        self.beta, self.epsilon = float(beta), float(epsilon)
        self.alpha_init, self.alpha_max, self.alpha_step = float(alpha_init), float(alpha_max), float(alpha_step)
        self.sparsity_target, self.sparsity_weight = float(sparsity_target), float(sparsity_weight)
        domain_fields = check_fields(feature_map, list(domain_fields or [self.domain_field]), "domain_fields",
                                     "AdaSparse")
        self.embedding = MultiEmbedding(feature_map, embedding_dim, 1)
        self.domain_inputs = FieldSelection("domain_fields", domain_fields, self.embedding)
        domain_dim = len(domain_fields) * embedding_dim
        dims = [self.embedding.output_dim] + list(hidden_units)
        self.layers = nn.ModuleList([nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:])])
        self.norms = nn.ModuleList([nn.BatchNorm1d(o) for o in hidden_units] if batch_norm else [])
        self.activations = nn.ModuleList([get_activation(hidden_activations) for _ in hidden_units])
        self.dropout = nn.Dropout(net_dropout) if net_dropout > 0 else None
        # Pruner l weights the input of layer l (l = 0 only with prune_input) and the output of hidden layer l-1.
        pruned = dims if prune_input else dims[1:]
        self.prune_input = bool(prune_input)
        self.pruners = nn.ModuleList([nn.Linear(domain_dim + d, d) for d in pruned])
        self.output = nn.Linear(dims[-1], 1)
        # Training steps taken: drives alpha; a buffer so that checkpoints carry it.
        self.register_buffer("anneal_steps", torch.zeros((), dtype=torch.long))
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    # ------------------------------------------------------------------ alpha annealing
    @property
    def alpha(self) -> float:
        return min(self.alpha_max, self.alpha_init + self.alpha_step * int(self.anneal_steps))

    def train_step(self, batch_data):
        loss = super().train_step(batch_data)
        self.anneal_steps += 1
        return loss

    # ------------------------------------------------------------------ pruner
    def weighting_factors(self, e_d: torch.Tensor, h: torch.Tensor, pruner: nn.Linear, alpha: float):
        """``(pi, s)`` for one layer: the factors applied to ``h`` and the soft keep-probability ``s``, both
        ``B x H``."""
        s = torch.sigmoid(alpha * pruner(torch.cat([e_d, h], dim=1)))
        if self.weighting == "binarization":
            hard = (s >= 0.5).to(s.dtype)
            return hard + (s - s.detach()), s  # straight-through: value 0/1, gradient of s
        pi = self.beta * s
        if self.weighting == "fusion":
            # exactly 0 where pi < epsilon, never -pi. threshold(x, t, 0) keeps x > t: with t the float just below
            # epsilon it keeps pi >= epsilon, the same values and gradient as a mask (lt + masked_fill, several
            # times slower on a CPU).
            pi = F.threshold(pi, just_below(self.epsilon, pi.dtype), 0.0)
        return pi, s

    def forward_layers(self, X) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """``(logit B, [pi_l], [s_l])`` for a batch."""
        emb = single(self.embedding(X))  # B x F x D
        e_d = self.domain_inputs(emb).flatten(1)
        h = emb.flatten(1)
        pis, soft = [], []
        pruners = iter(self.pruners)
        alpha = self.alpha  # read once: it only changes between training steps

        def prune(h):
            pi, s = self.weighting_factors(e_d, h, next(pruners), alpha)
            pis.append(pi), soft.append(s)
            return h * pi

        if self.prune_input:
            h = prune(h)
        for layer, (linear, act) in enumerate(zip(self.layers, self.activations)):
            h = linear(h)
            if self.norms:
                h = self.norms[layer](h)
            h = prune(act(h))
            if self.dropout is not None:
                h = self.dropout(h)
        return self.output(h).squeeze(-1), pis, soft

    def logits(self, X, domain):
        logit, _, soft = self.forward_layers(X)
        aux = {}
        if self.sparsity_weight > 0 and self.training:
            ratios = [1.0 - s.mean() for s in soft]
            aux["sparsity"] = self.sparsity_weight * sum((r - self.sparsity_target).abs() for r in ratios)
        return logit, aux
