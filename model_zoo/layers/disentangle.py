"""Disentanglement losses between expert outputs: CovLoss and the alternatives of table 4.

Every loss is a module called as ``loss(O, gates)``:

* ``O``: the expert outputs, ``E x N x H`` (``E`` experts, ``N`` rows, ``H`` dims);
* ``gates``: the gate weights each row's tower used, ``N x E`` (one scalar per expert) or ``N x E x H``
  (element-wise, Crocodile's PEG), or ``None``. Only losses with ``needs_gates = True`` read them
  (Importance); the others ignore them.

It returns a scalar (unweighted; the model multiplies by its ``aux_alpha``). The losses are registered by name in
:data:`DISENTANGLE_LOSSES` so that a model option such as ``aux_loss: dcorr`` selects one, and
:func:`make_disentangle_loss` builds one from that name and its options.

Conventions shared by the pairwise losses (dot, cos, dcorr, trans5), so that their weights are comparable:
they sum over the unordered expert pairs ``p < q`` (as CovLoss sums over its pairs) and average over rows.
Each can be computed on ``sample_rows`` random rows of the batch (0 = all rows), as appendix A does for CovLoss.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from mdl_bench.kernel.errors import UserError, close_matches


def sample_rows(outputs: torch.Tensor, rows: int) -> tuple[torch.Tensor, float]:
    """Keep ``rows`` random rows of ``E x N x H`` (all when ``rows`` is 0 or >= N); also return ``N / rows``."""
    n = outputs.shape[1]
    if not rows or rows >= n:
        return outputs, 1.0
    index = torch.randperm(n, device=outputs.device)[:rows]
    return outputs.index_select(1, index), n / rows


def _pairs(num_experts: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(p, q)`` of the unordered expert pairs ``p < q``, each of length ``E(E-1)/2``."""
    index = torch.triu_indices(num_experts, num_experts, offset=1, device=device)
    return index[0], index[1]


class DisentangleLoss(nn.Module):
    """Common base: the ``sample_rows`` option and the ``(O, gates)`` call signature.

    Shapes:
        ``forward(O, gates=None)``: ``E x N x H`` (and ``N x E`` / ``N x E x H``) -> scalar.
    """

    needs_gates = False

    def __init__(self, sample_rows: int = 0):
        super().__init__()
        if int(sample_rows) < 0:
            raise UserError(f"sample_rows of the {type(self).__name__} must be >= 0, got {sample_rows}")
        self.sample_rows = int(sample_rows)


class BlockAbsGram(torch.autograd.Function):
    """``E x E`` sums of ``|G|`` over the ``d x d`` blocks of the Gram matrix ``G = Z^T Z``, with a one-matmul
    backward.

    Autograd differentiates ``Z^T @ Z`` as a product of two tensors: two ``N x (E*d) x (E*d)`` matmuls. Since
    ``G`` is symmetric, both terms fold into one: with ``S = sign(G)`` scaled blockwise by the incoming gradient
    ``W`` (``E x E``), ``dZ = Z (S + S^T) = Z (sign(G) * (W + W^T))``, so the loss costs two Gram-sized matmuls
    instead of three (measured by ``mdl-bench perf``). Same values and gradients as autograd up to float rounding
    (``tests/test_layers.py`` compares them); first-order only.

    Shapes:
        ``apply(Z, E, d)``: ``Z`` ``N x (E*d)`` -> ``E x E``.
    """

    @staticmethod
    def forward(ctx, flat: torch.Tensor, E: int, d: int) -> torch.Tensor:
        gram = flat.t() @ flat  # (E*d) x (E*d): every block (p, q) at once
        ctx.save_for_backward(flat, gram)
        ctx.blocks = (E, d)
        return gram.abs().view(E, d, E, d).sum(dim=(1, 3))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        flat, gram = ctx.saved_tensors
        E, d = ctx.blocks
        weight = (grad + grad.t()).view(E, 1, E, 1)
        signs = (gram.sign().view(E, d, E, d) * weight).view(E * d, E * d)
        return flat @ signs, None, None


class CovLoss(DisentangleLoss):
    """Crocodile's cross-expert covariance loss, eq. (7).

    ``L = 1/d^2 * sum_{p >= q} || (O^p - mean(O^p))^T (O^q - mean(O^q)) ||_1`` where ``O^p`` is the ``N x d``
    output of expert ``p`` and the mean is over rows.

    Options (defaults follow the paper as written):
        pairs: ``"p>=q"`` (default; eq. 7 includes ``p = q``, i.e. each expert's own covariance, diagonal
            variances included) or ``"p>q"`` (cross-expert blocks only).
        normalization: ``"none"`` (default; eq. 7 has no 1/N, and the paper's alpha sensitivity - fine above
            2e-5 - fits an unnormalised sum over a 4096-row batch), ``"mean"`` (divide by N, a covariance) or
            ``"corr"`` (each output dimension standardised over the rows first: the blocks are correlations, in
            [0, 1] per entry, so the loss does not change when the outputs are rescaled - eq. 7 is quadratic in
            their scale, and can be lowered by shrinking the outputs instead of decorrelating them).
        sample_rows: compute on this many random rows of the batch (appendix A: 32 rows of 1024 gave the same
            norms). With ``normalization="none"`` the sampled sum is scaled by ``N / rows`` so that alpha keeps
            its meaning. ``0`` (default) uses every row.

    Shapes:
        ``forward(O)``: ``E x N x d`` -> scalar.
    """

    PAIRS = ("p>=q", "p>q")
    NORMALIZATIONS = ("none", "mean", "corr")
    EPS = 1e-6  # added to a dimension's standard deviation under "corr" (a dead dimension stays 0)

    def __init__(self, pairs: str = "p>=q", normalization: str = "none", sample_rows: int = 0):
        if pairs not in self.PAIRS:
            raise UserError(f"cov_pairs must be one of {', '.join(self.PAIRS)}, got {pairs!r}")
        if normalization not in self.NORMALIZATIONS:
            raise UserError(f"cov_normalization must be one of {', '.join(self.NORMALIZATIONS)}, got {normalization!r}")
        if sample_rows < 0:
            raise UserError(f"cov_sample_rows must be >= 0, got {sample_rows}")
        super().__init__(sample_rows)
        self.pairs, self.normalization = pairs, normalization

    def block_norms(self, outputs: torch.Tensor) -> torch.Tensor:
        """``E x E`` matrix of ``||cov block (p, q)||_1 / d^2`` (unnormalised in N), on all given rows."""
        E, N, d = outputs.shape
        centred = outputs - outputs.mean(dim=1, keepdim=True)
        if self.normalization == "corr":
            centred = centred / (centred.pow(2).mean(dim=1, keepdim=True).sqrt() + self.EPS)
        flat = centred.permute(1, 0, 2).reshape(N, E * d)
        return BlockAbsGram.apply(flat, E, d) / (d * d)

    def forward(self, outputs: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
        outputs, scale = sample_rows(outputs, self.sample_rows)
        E, N, _ = outputs.shape
        norms = self.block_norms(outputs)
        offset = 0 if self.pairs == "p>=q" else -1
        loss = torch.tril(norms, diagonal=offset).sum()
        if self.normalization in ("mean", "corr"):
            return loss / N
        return loss * scale


class DotLoss(DisentangleLoss):
    """Dot: the inner product of two experts' outputs on the same row, driven to zero (table 4, [42, 46]).

    ``L = sum_{p < q} mean_k |<O^p_k, O^q_k>|``.

    Sources: Maria (Tian et al., SIGIR 2023, [42]) and VDD (Wu et al., ICCV 2021, [46]) push two representations
    of the same input (shared vs. scenario-specific; domain-invariant vs. domain-specific) apart with an
    orthogonality term on their product. Neither text was retrievable here, so the exact form is open; chosen:
    the per-row inner product, because that is what "Dot" names and what separates it from "Cos" (the same
    product after normalising each vector); the absolute value, so that anti-aligned outputs are not rewarded
    (with ReLU experts all products are >= 0 anyway); every unordered pair of experts, since Crocodile's
    experts have no shared/specific split.

    Shapes:
        ``forward(O)``: ``E x N x H`` -> scalar.
    """

    normalise = False

    def forward(self, outputs: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
        outputs, _ = sample_rows(outputs, self.sample_rows)
        if self.normalise:
            outputs = F.normalize(outputs, dim=-1, eps=1e-8)
        p, q = _pairs(outputs.shape[0], outputs.device)
        products = (outputs[p] * outputs[q]).sum(dim=-1)  # pairs x N
        return products.abs().mean(dim=1).sum()


class CosLoss(DotLoss):
    """Cos: the cosine similarity of two experts' outputs on the same row, driven to zero (table 4, [25]).

    ``L = sum_{p < q} mean_k |cos(O^p_k, O^q_k)|`` (a zero vector has cosine 0 with everything).

    Source: MAP-IVR (Liu et al., AAAI 2021, [25]) disentangles a video feature into appearance and motion parts
    with a cosine-similarity penalty between them. Chosen: the absolute cosine per row, averaged over rows, over
    every unordered expert pair (the text was not retrievable here; the absolute value makes orthogonality,
    not anti-alignment, the optimum).

    Shapes:
        ``forward(O)``: ``E x N x H`` -> scalar.
    """

    normalise = True


class DCorrLoss(DisentangleLoss):
    """dCorr: the distance correlation between experts, driven to zero (table 4, [24]).

    For experts ``p, q`` on ``n`` rows: ``a_kl = ||O^p_k - O^p_l||``, double-centred
    ``A = a - row mean - column mean + grand mean`` (likewise ``B`` for ``q``);
    ``dCov(p, q) = sqrt(mean(A * B))``, ``dCor(p, q) = dCov(p, q) / sqrt(dCov(p, p) * dCov(q, q))``.
    ``L = sum_{p < q} dCor(p, q)``.

    Source: DMRL (Liu et al., IEEE TMM 2022, [24]) penalises the distance correlation between the factor
    embeddings of a user/item (its released code: centred Euclidean distance matrices over the batch, dCov as the
    square root of their mean product, floored at 1e-5 before the root, summed over factor pairs). Chosen: the
    same estimator with experts as the factors; the floor ``eps`` (default 1e-5, DMRL's) keeps the root
    differentiable when two experts are constant. The ``n x n`` distance matrices cost ``O(n^2)`` memory per
    expert, so ``sample_rows`` defaults to 1024 rows (0 = the whole batch).

    Shapes:
        ``forward(O)``: ``E x N x H`` -> scalar.
    """

    def __init__(self, sample_rows: int = 1024, eps: float = 1e-5):
        super().__init__(sample_rows)
        self.eps = float(eps)

    @staticmethod
    def centred_distances(outputs: torch.Tensor) -> torch.Tensor:
        """``E x n x n`` double-centred Euclidean distance matrices of each expert's rows."""
        dist = torch.cdist(outputs, outputs)
        return (dist - dist.mean(dim=2, keepdim=True) - dist.mean(dim=1, keepdim=True)
                + dist.mean(dim=(1, 2), keepdim=True))

    def forward(self, outputs: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
        outputs, _ = sample_rows(outputs, self.sample_rows)
        A = self.centred_distances(outputs)  # E x n x n
        E, n, _ = A.shape
        flat = A.reshape(E, n * n)
        dcov = (flat @ flat.t() / (n * n)).clamp(min=self.eps).sqrt()  # E x E, dCov of every pair
        var = dcov.diagonal()
        p, q = _pairs(E, outputs.device)
        return (dcov[p, q] / (var[p] * var[q]).sqrt()).sum()


class OLELoss(DisentangleLoss):
    """OLE: orthogonal low-rank embedding across experts (table 4, [21]).

    ``L = ( sum_p max(delta, ||O^p||_*) - ||[O^1; ...; O^E]||_* ) / (E * N)``, ``||.||_*`` the nuclear norm.

    Source: OLE (Lezama et al., CVPR 2018, [21]): for a batch ``Y`` whose rows are features and a partition of
    the rows into classes ``c``, ``sum_c max(delta, ||Y_c||_*) - ||Y||_*`` is >= 0 and zero exactly when the
    classes span orthogonal subspaces; the released code uses ``delta = 1`` and divides by the number of rows.
    Chosen: the experts are the classes - each expert's ``N x H`` output is one block of rows of the stacked
    ``(E*N) x H`` matrix - so the loss drives the experts' output subspaces to be orthogonal (and each to be
    low-rank); ``delta = 1`` and the division by all rows as in the source.

    Shapes:
        ``forward(O)``: ``E x N x H`` -> scalar.
    """

    def __init__(self, sample_rows: int = 0, delta: float = 1.0):
        super().__init__(sample_rows)
        self.delta = float(delta)

    def forward(self, outputs: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
        outputs, _ = sample_rows(outputs, self.sample_rows)
        E, N, H = outputs.shape
        per_expert = torch.linalg.svdvals(outputs).sum(dim=-1)  # E nuclear norms
        whole = torch.linalg.svdvals(outputs.reshape(E * N, H)).sum()
        return (per_expert.clamp(min=self.delta).sum() - whole) / (E * N)


class ImportanceLoss(DisentangleLoss):
    """Importance: load balancing of the gates over the experts (table 4, [37]).

    ``Importance_p = sum_k g_{k,p}`` (the gate mass expert ``p`` receives over the batch) and
    ``L = CV(Importance)^2 = Var_p(Importance) / Mean_p(Importance)^2``.

    Source: the sparsely-gated MoE (Shazeer et al., 2017, [37]), eq. (6)-(7): the importance loss is the squared
    coefficient of variation of the batchwise sum of gate values (its released code takes the population
    variance and adds 1e-10 to the squared mean). Chosen: every row contributes the gate of its own domain's
    tower (the weights that row was mixed with), pooled over the batch, because the loss balances how much the
    experts are used overall; with element-wise gates (PEG, ``N x E x H``) each dimension has its own softmax over
    the experts, i.e. ``H`` gates, so the squared CV is computed per dimension and averaged. Unlike the other
    losses it reads the gates, not the expert outputs.

    Shapes:
        ``forward(O, gates)``: gates ``N x E`` or ``N x E x H`` -> scalar.
    """

    needs_gates = True

    def forward(self, outputs: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
        if gates is None:
            raise UserError("aux_loss importance needs the gate weights; this model does not pass them (use another "
                            "aux_loss, or a model with gates)")
        importance = gates.sum(dim=0)  # E or E x H
        mean = importance.mean(dim=0)
        var = importance.var(dim=0, unbiased=False)
        return (var / (mean * mean + 1e-10)).mean()


class Trans5Loss(DisentangleLoss):
    """Trans5: the equivalent-transformation loss of ETL between experts (table 4, [9]).

    For every unordered pair ``p < q`` a learnable ``H x H`` map ``W_pq`` translates expert ``p``'s output into
    expert ``q``'s, and is kept (near-)orthogonal - an "equivalent" transformation - by a reconstruction
    constraint:

    ``L = 1/H * sum_{p < q} mean_k ( ||O^p_k W_pq - O^q_k||_1 + ||O^p_k - O^p_k W_pq W_pq^T||_1 )``.

    Source: ETL (Chen et al., ACM TOIS 2023, [9]) maps a user's representation in one domain to the other with one
    matrix ``W`` (``z_x W`` decodes into domain y, ``z_y W^T`` into domain x) and constrains it with the row-wise
    L1 norm ``||z - z W W^T||_1`` (its released ``model_my.py``; ``W`` initialised Xavier-uniform with gain
    sqrt(2)). The Crocodile paper calls it "Trans5" without a definition, so the reading is ours. Chosen: the
    translation term is the L1 distance to the other expert's output (experts see every row, so there is no
    decoder to reconstruct through), both terms L1 as ETL's constraint, divided by ``H`` so that the weight does
    not scale with the width. The maps are parameters of the loss, trained with the model.

    Shapes:
        ``forward(O)``: ``E x N x H`` -> scalar. Parameters: ``maps``, ``E(E-1)/2 x H x H``.
    """

    def __init__(self, num_experts: int, expert_dim: int, sample_rows: int = 0):
        super().__init__(sample_rows)
        self.num_experts, self.expert_dim = int(num_experts), int(expert_dim)
        pairs = self.num_experts * (self.num_experts - 1) // 2
        self.maps = nn.Parameter(torch.empty(pairs, self.expert_dim, self.expert_dim))
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-uniform with gain sqrt(2) per map, as ETL; called again by FuxiCTR's ``reset_parameters``."""
        for weight in self.maps.data:
            nn.init.xavier_uniform_(weight, gain=math.sqrt(2.0))

    def forward(self, outputs: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
        outputs, _ = sample_rows(outputs, self.sample_rows)
        E, N, H = outputs.shape
        if E != self.num_experts or H != self.expert_dim:
            raise ValueError(f"Trans5Loss built for {self.num_experts} experts of width {self.expert_dim}, "
                             f"called with {E} x {H}")
        p, q = _pairs(E, outputs.device)
        source, target = outputs[p], outputs[q]  # pairs x N x H
        mapped = torch.bmm(source, self.maps)
        back = torch.bmm(mapped, self.maps.transpose(1, 2))
        translation = (mapped - target).abs().sum(dim=-1).mean(dim=-1)
        constraint = (source - back).abs().sum(dim=-1).mean(dim=-1)
        return (translation + constraint).sum() / H


DISENTANGLE_LOSSES = {"cov": CovLoss, "dot": DotLoss, "cos": CosLoss, "dcorr": DCorrLoss, "ole": OLELoss,
                      "importance": ImportanceLoss, "trans5": Trans5Loss}


def make_disentangle_loss(name: str, num_experts: int | None = None, expert_dim: int | None = None,
                          **options) -> DisentangleLoss:
    """The loss registered as ``name``, built with ``options`` (its keyword arguments).

    ``num_experts`` and ``expert_dim`` are passed to the losses that take them (Trans5's maps); an option a loss
    does not take is a one-line error naming the loss's options.
    """
    if name not in DISENTANGLE_LOSSES:
        raise UserError(f"unknown aux_loss {name!r}{close_matches(name, DISENTANGLE_LOSSES)}; known: "
                        f"none, {', '.join(DISENTANGLE_LOSSES)}")
    cls = DISENTANGLE_LOSSES[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    shape = {"num_experts": num_experts, "expert_dim": expert_dim}
    for key in options:
        if key not in accepted or key in shape:
            known = [p for p in accepted if p not in shape]
            raise UserError(f"aux_loss {name!r} has no option {key!r} (its options: {', '.join(known) or 'none'}); "
                            f"fix `aux_options`")
    kwargs = dict(options)
    for key, value in shape.items():
        if key in accepted:
            if value is None:
                raise ValueError(f"aux_loss {name!r} needs {key}")
            kwargs[key] = value
    return cls(**kwargs)
