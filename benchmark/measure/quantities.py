"""The quantities of the paper's sections 2 and 4.4, as plain functions of arrays (numpy, float64).

* :func:`information_abundance`: IA = ``||sigma||_1 / ||sigma||_inf`` (Guo et al., the paper's [16]).
* :func:`singular_values`: the singular values of an ``n x D`` matrix (an embedding table or a stack of expert
  outputs) from its ``D x D`` Gram matrix, accumulated over row chunks, so that a table is never copied whole.
* :func:`norm_thresholds`, :func:`diversity_index`: the Diversity Index of eq. (1)-(3), under the two threshold
  rules of :data:`THRESHOLD_RULES` (see :func:`diversity_index`).
* :class:`OutputMoments` and its ``cov_block_norms`` / ``dim_covariance``: figure 7's heatmaps, from running sums
  over batches (no ``N x E x H`` tensor is ever kept); :func:`covloss_total`, :func:`cross_expert_mask` and
  :func:`dim_covariance_summary`: figure 7 as numbers (eq. 7 per expert pair and in total, the dimension level).

Notation: ``N`` rows, ``E`` experts, ``H`` width of an expert's output, ``K`` domains, ``D`` embedding width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

GRAM_CHUNK_ROWS = 16384


def information_abundance(sigma: np.ndarray) -> float:
    """``sum(sigma) / max(sigma)``; ``nan`` for an all-zero spectrum. Ranges from 1 (rank one) to ``len(sigma)``."""
    sigma = np.asarray(sigma, dtype=np.float64)
    top = float(sigma.max()) if sigma.size else 0.0
    return float(sigma.sum() / top) if top > 0 else float("nan")


def gram(matrix: np.ndarray, rows: np.ndarray | None = None, chunk: int = GRAM_CHUNK_ROWS) -> np.ndarray:
    """``A^T A`` in float64 for ``A = matrix`` (or ``matrix[rows]``), summed over chunks of ``chunk`` rows.

    ``matrix`` may be a strided view (a column slice of a wider weight): only one chunk of it is ever copied,
    ``chunk x D`` float64, so the extra memory is ``O(chunk * D + D^2)`` whatever the number of rows.
    """
    n_rows = matrix.shape[0] if rows is None else len(rows)
    width = matrix.shape[1]
    total = np.zeros((width, width), dtype=np.float64)
    for start in range(0, n_rows, chunk):
        if rows is None:
            block = np.asarray(matrix[start:start + chunk], dtype=np.float64)
        else:
            block = np.asarray(matrix[rows[start:start + chunk]], dtype=np.float64)
        total += block.T @ block
        del block
    return total


def singular_values_from_gram(G: np.ndarray) -> np.ndarray:
    """Singular values (descending) of any ``A`` with ``A^T A = G``: ``sqrt`` of the eigenvalues of ``G``.

    Exact up to rounding: in float64, a singular value is resolved down to about ``1e-8`` of the largest one,
    which is far below what a log-spectrum plot or the IA can show.
    """
    eig = np.linalg.eigvalsh(np.asarray(G, dtype=np.float64))
    return np.sqrt(np.clip(eig, 0.0, None))[::-1].copy()


def singular_values(matrix: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Singular values (descending, ``D`` of them) of ``matrix`` (``n x D``) or of its rows ``rows``."""
    return singular_values_from_gram(gram(matrix, rows))


# The two rules for tau_t / tau_b the analysis reports side by side (``diversity_index(scope=...)``):
#   quantile: each expert's own quantiles (``per_expert``) - the shipped default, kept for comparison; every expert
#             is then "strong" on the same share of rows, so eq. (2) measures whether the experts' norm *ranks* move
#             together, whatever their sizes.
#   fixed:    one tau_t and one tau_b per model, the quantiles of the pooled norms of all its experts (``pooled``) -
#             the paper's "specified norm thresholds", scale-free across models (see :func:`diversity_index`).
THRESHOLD_RULES = {"quantile": "per_expert", "fixed": "pooled"}


def norm_thresholds(norms: np.ndarray, top: float, bottom: float, scope: str = "per_expert",
                    absolute: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(tau_t, tau_b)``, one pair per row of ``norms`` (``E x N``, an output norm per expert and sample).

    With ``absolute`` the numbers are the thresholds themselves. Otherwise they are quantiles of the norm
    distribution: of each expert's own norms (``scope="per_expert"``, the default) or of all experts' norms
    pooled (``scope="pooled"``).
    """
    norms = np.asarray(norms, dtype=np.float64)
    E = norms.shape[0]
    if absolute:
        return np.full(E, float(top)), np.full(E, float(bottom))
    if scope == "pooled":
        return (np.full(E, np.quantile(norms, top)), np.full(E, np.quantile(norms, bottom)))
    if scope == "per_expert":
        return np.quantile(norms, top, axis=1), np.quantile(norms, bottom, axis=1)
    raise ValueError(f"threshold scope must be per_expert or pooled, got {scope!r}")


def domain_norms(norms: np.ndarray, bound: Sequence[int | None], num_domains: int) -> np.ndarray:
    """``K x N``: for each domain, the norm of the concatenation of the experts bound to it
    (``sqrt(sum ||O^e||^2)``; the expert's own norm when one expert is bound); ``nan`` where none is."""
    out = np.full((num_domains, norms.shape[1]), np.nan)
    for s in range(num_domains):
        members = [e for e, b in enumerate(bound) if b == s]
        if members:
            out[s] = np.sqrt((np.asarray(norms[members], dtype=np.float64) ** 2).sum(axis=0))
    return out


@dataclass
class DiversityIndex:
    """The Diversity Index of one model: ``per_pair[i, j]`` = DI_(i,j) (``nan`` on the diagonal, where
    ``D(i,j)`` is empty, or where a domain has no bound expert), ``sizes[i, j] = |D(i,j)|``, and ``mean`` = the
    average over the defined pairs. ``equation`` is 2 (no domain-bound experts) or 3."""

    per_pair: np.ndarray
    sizes: np.ndarray
    equation: int
    rule: str = ""
    tau: dict | None = None

    @property
    def mean(self) -> float:
        values = self.per_pair[np.isfinite(self.per_pair)]
        return float(values.mean()) if values.size else float("nan")

    def sorted_values(self) -> list[float]:
        """Defined DI_(i,j) in descending order (figure 6)."""
        values = self.per_pair[np.isfinite(self.per_pair)]
        return sorted((float(v) for v in values), reverse=True)

    def to_dict(self, domain_names: Sequence[str]) -> dict:
        K = len(domain_names)
        pairs = {f"{domain_names[i]}>{domain_names[j]}": (None if not np.isfinite(self.per_pair[i, j])
                                                          else float(self.per_pair[i, j]))
                 for i in range(K) for j in range(K) if i != j}
        sizes = {f"{domain_names[i]}>{domain_names[j]}": int(self.sizes[i, j])
                 for i in range(K) for j in range(K) if i != j}
        return {"equation": self.equation, "rule": self.rule, "thresholds": self.tau,
                "mean": None if np.isnan(self.mean) else self.mean,
                "per_pair": pairs, "pair_sizes": sizes, "sorted": self.sorted_values()}


def diversity_index(sd_norms: np.ndarray, expert_norms: np.ndarray, bound: Sequence[int | None],
                    top: float = 0.75, bottom: float = 0.25, scope: str = "per_expert",
                    absolute: bool = False) -> DiversityIndex:
    """Eq. (1)-(3).

    Args:
        sd_norms: ``K x N``, the Single Domain networks' output norms ``||O||^i_SD(x_k)`` on the same ``N`` rows.
        expert_norms: ``E x N``, the analysed model's expert output norms ``||O^p(x_k)||_2``.
        bound: per expert, the domain it is bound to or ``None`` (shared).
        top, bottom: ``tau_t`` and ``tau_b`` - quantiles (default 0.75 and 0.25) or, with ``absolute``, norms.
        scope: quantiles of each expert's norms (``per_expert``, the "quantile" rule) or of all norms pooled
            (``pooled``, the "fixed" rule).

    Thresholds. The paper defines eq. (1)-(3) with "two specified norm thresholds": one ``tau_t`` and one ``tau_b``
    for every expert. The *fixed* rule (``scope="pooled"``) keeps that: per model, ``tau_t`` / ``tau_b`` are the
    ``top`` / ``bottom`` quantiles of the pooled output norms of all its experts on the analysis rows (of all its
    domains' expert groups for eq. 3; of all K Single Domain networks for eq. 1's ``D(i,j)``), so one number is
    shared by all experts and an expert whose outputs are larger than another's is "strong" more often - which is
    what "one expert learns a strong interest whilst another one learns a weak interest" compares. Quantiles of
    the pooled norms, not absolute norms, because output scales differ between models by orders of magnitude
    (batch norm or not, expert widths, CovLoss shrinking the outputs): one absolute number for all models would
    call every expert of one model strong and every expert of another weak; the pooled quantile is the same rule
    for every model and invariant to a global rescaling of its outputs. The *quantile* rule (``per_expert``, the
    default before) gives every expert its own thresholds, so each is strong on a ``1 - top`` share of the rows
    whatever its scale, and eq. (2) then measures whether the experts' norm ranks move together; it is kept and
    reported beside the fixed rule. With ``absolute`` both rules use the given norms.

    ``D(i,j)`` (eq. 1) = rows where the Single Domain network of domain ``i`` is strong and that of ``j`` weak.
    Models with domain-bound experts use eq. (3): the fraction of ``D(i,j)`` where domain ``i``'s experts are
    strong and ``j``'s weak; others eq. (2): the fraction where some expert is strong and another one weak.
    """
    sd_norms = np.asarray(sd_norms, dtype=np.float64)
    expert_norms = np.asarray(expert_norms, dtype=np.float64)
    K, N = sd_norms.shape
    if expert_norms.shape[1] != N:
        raise ValueError(f"Single Domain norms cover {N} rows but the expert norms {expert_norms.shape[1]}")
    if len(bound) != expert_norms.shape[0]:
        raise ValueError(f"{len(bound)} bindings for {expert_norms.shape[0]} experts")
    sd_tau = norm_thresholds(sd_norms, top, bottom, scope, absolute)
    sd_strong, sd_weak = sd_norms >= sd_tau[0][:, None], sd_norms <= sd_tau[1][:, None]
    equation = 3 if any(b is not None for b in bound) else 2
    if equation == 3:
        strong, weak, has, tau_t, tau_b = _domain_group_strength(expert_norms, bound, K, top, bottom, scope,
                                                                 absolute)

        def hit(i, j):
            return strong[i] & weak[j] if has[i] and has[j] else None
    else:
        any_pair, tau_t, tau_b = _any_expert_pair(expert_norms, top, bottom, scope, absolute)

        def hit(i, j):
            return any_pair
    per_pair, sizes = _pair_fractions(sd_strong, sd_weak, hit)
    rule = "absolute" if absolute else {"per_expert": "quantile", "pooled": "fixed"}[scope]
    tau = {"levels": None if absolute else [float(top), float(bottom)],
           "over": "domain expert groups" if equation == 3 else "experts",
           "tau_t": _listed(tau_t), "tau_b": _listed(tau_b),
           "single_domain_tau_t": _listed(sd_tau[0]), "single_domain_tau_b": _listed(sd_tau[1])}
    return DiversityIndex(per_pair, sizes, equation, rule, tau)


def _domain_group_strength(expert_norms: np.ndarray, bound: Sequence[int | None], K: int, top: float,
                           bottom: float, scope: str, absolute: bool):
    """Eq. (3)'s strong / weak masks (``K x N``) of each domain's expert group, which domains have experts
    (``K``), and the groups' thresholds (NaN for a domain without experts)."""
    grouped = domain_norms(expert_norms, bound, K)
    has = np.isfinite(grouped).all(axis=1)
    strong = np.zeros_like(grouped, dtype=bool)
    weak = np.zeros_like(grouped, dtype=bool)
    tau_t = np.full(K, np.nan)
    tau_b = tau_t.copy()
    if has.any():
        tau_t[has], tau_b[has] = norm_thresholds(grouped[has], top, bottom, scope, absolute)
        strong[has] = grouped[has] >= tau_t[has][:, None]
        weak[has] = grouped[has] <= tau_b[has][:, None]
    return strong, weak, has, tau_t, tau_b


def _any_expert_pair(expert_norms: np.ndarray, top: float, bottom: float, scope: str, absolute: bool):
    """Eq. (2)'s mask (``N``): rows where some expert is strong and another one weak; the experts' thresholds."""
    tau_t, tau_b = norm_thresholds(expert_norms, top, bottom, scope, absolute)
    strong, weak = expert_norms >= tau_t[:, None], expert_norms <= tau_b[:, None]
    # some expert p strong and another expert q != p weak (one expert cannot be both unless tau_t <= tau_b)
    n_weak = weak.sum(axis=0)
    any_pair = (strong & (n_weak[None, :] - weak > 0)).any(axis=0)
    return any_pair, tau_t, tau_b


def _pair_fractions(sd_strong: np.ndarray, sd_weak: np.ndarray, hit) -> tuple[np.ndarray, np.ndarray]:
    """``DI_(i,j)`` (NaN where undefined) and ``|D(i,j)|`` for every ordered pair of domains; ``hit(i, j)`` is
    the mask of rows counted for the pair, or ``None`` where the pair has no value."""
    K = sd_strong.shape[0]
    per_pair = np.full((K, K), np.nan)
    sizes = np.zeros((K, K), dtype=np.int64)
    for i in range(K):
        for j in range(K):
            if i == j:
                continue
            members = sd_strong[i] & sd_weak[j]
            sizes[i, j] = int(members.sum())
            mask = hit(i, j) if sizes[i, j] else None
            if mask is not None:
                per_pair[i, j] = float(mask[members].mean())
    return per_pair, sizes


def _listed(values) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(values, dtype=np.float64)]


class OutputMoments:
    """Running first and second moments of the concatenated expert outputs ``[O^1 ... O^E]`` (``E*H`` columns),
    in float64, fed batch by batch with ``E x B x H`` tensors/arrays.

    Gives the singular values of each expert's (uncentred) ``N x H`` output, its IA, the ``E x E`` CovLoss heatmap
    (eq. 7's block norms) and the ``E*H x E*H`` dimension-wise covariance (figure 7).
    """

    def __init__(self, num_experts: int, width: int):
        self.E, self.H = int(num_experts), int(width)
        self.n = 0
        self.sum = np.zeros(self.E * self.H)
        self.gram = np.zeros((self.E * self.H, self.E * self.H))

    def update(self, outputs) -> None:
        outputs = np.asarray(outputs, dtype=np.float64)
        E, B, H = outputs.shape
        flat = outputs.transpose(1, 0, 2).reshape(B, E * H)
        self.n += B
        self.sum += flat.sum(axis=0)
        self.gram += flat.T @ flat

    def expert_singular_values(self) -> list[np.ndarray]:
        """Per expert, the singular values of its ``N x H`` output matrix (uncentred)."""
        H = self.H
        return [singular_values_from_gram(self.gram[e * H:(e + 1) * H, e * H:(e + 1) * H]) for e in range(self.E)]

    def covariance(self) -> np.ndarray:
        """``E*H x E*H`` covariance (divided by ``N``) of all dimensions of all experts."""
        mean = self.sum / max(self.n, 1)
        return self.gram / max(self.n, 1) - np.outer(mean, mean)

    def dim_covariance(self) -> np.ndarray:
        """Figure 7 (right): ``|cov|`` of every pair of dimensions of all experts, ``E*H x E*H``."""
        return np.abs(self.covariance())

    def cov_block_norms(self) -> np.ndarray:
        """Figure 7 (left): ``E x E``, ``||cov block (p, q)||_1 / H^2`` - eq. (7)'s term for the pair ``(p, q)``,
        with the covariance divided by ``N`` so that the number does not grow with the rows analysed."""
        E, H = self.E, self.H
        return self.dim_covariance().reshape(E, H, E, H).sum(axis=(1, 3)) / (H * H)


def covloss_total(blocks: np.ndarray, pairs: str = "p>=q") -> float:
    """Eq. (7) from its per-pair terms ``blocks`` (``E x E``, :meth:`OutputMoments.cov_block_norms`): the sum over
    ``p >= q`` (as written, each expert's own covariance included) or ``p > q`` (cross-expert pairs only)."""
    if pairs not in ("p>=q", "p>q"):
        raise ValueError(f"pairs must be p>=q or p>q, got {pairs!r}")
    return float(np.tril(np.asarray(blocks, dtype=np.float64), k=0 if pairs == "p>=q" else -1).sum())


def cross_expert_mask(num_experts: int, width: int) -> np.ndarray:
    """``E*H x E*H`` booleans: True where the two dimensions belong to different experts."""
    expert = np.repeat(np.arange(num_experts), width)
    return expert[:, None] != expert[None, :]


def dim_covariance_summary(cov: np.ndarray, num_experts: int, high: float | None = None) -> dict:
    """Figure 7 (right) as numbers, from the ``E*H x E*H`` covariance of all dimensions of all experts.

    Over the ordered cross-expert entries (dimension pairs of two different experts): mean, 99th percentile and
    maximum of ``|cov|``, the mean ``|correlation|`` (scale-free: CovLoss is quadratic in the outputs' scale, so a
    lower covariance may be smaller outputs rather than less correlated ones; dimensions with zero variance on the
    rows are left out and counted as ``dead_dims``), and with ``high`` the number of entries with
    ``|cov| >= high`` (the "high-value points" of the heatmap). Also the mean ``|cov|`` of the off-diagonal
    entries within an expert and the mean variance.
    """
    cov = np.asarray(cov, dtype=np.float64)
    n = cov.shape[0]
    width = n // max(int(num_experts), 1)
    cross = cross_expert_mask(int(num_experts), width)
    within = ~cross & ~np.eye(n, dtype=bool)
    absolute = np.abs(cov)
    var = np.diag(cov).copy()
    alive = var > 1e-12 * max(float(var.max(initial=0.0)), 1e-300)
    std = np.sqrt(np.where(alive, var, 1.0))
    corr = np.abs(cov / np.outer(std, std))
    both = cross & alive[:, None] & alive[None, :]

    def stat(values: np.ndarray, how) -> float | None:
        return float(how(values)) if values.size else None

    return {"dims": int(n), "dead_dims": int((~alive).sum()),
            "cross_mean_abs_cov": stat(absolute[cross], np.mean),
            "cross_p99_abs_cov": stat(absolute[cross], lambda v: np.quantile(v, 0.99)),
            "cross_max_abs_cov": stat(absolute[cross], np.max),
            "cross_mean_abs_corr": stat(corr[both], np.mean),
            "within_mean_abs_cov": stat(absolute[within], np.mean),
            "mean_variance": float(var.mean()) if n else None,
            "high_threshold": None if high is None else float(high),
            "high_cross_points": None if high is None else int((absolute[cross] >= high).sum())}
