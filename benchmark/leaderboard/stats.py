"""The statistics behind the leaderboard's marks: intervals, comparisons with a reference row, ranks, tie groups.

A cell of the leaderboard is the mean over seeds of one metric on one domain. Two sources of error move it:

* **training randomness** - the spread of the per-seed values (every seed is scored on the same test split, so
  this spread carries nothing of the test split's own sampling error);
* **the test split's sampling error** - how the figure would move on another draw of users, estimated by the
  cluster bootstrap over users that every run stores (:mod:`mdl_bench.model_zoo.core.bootstrap`). Replicate ``r``
  resamples the same users for every run of a dataset, so a difference of two rows is bootstrapped in pairs.

For a row's mean, or the difference of two rows (``d_s`` their per-seed difference over the ``S`` seeds both
have), the variance is the sum of the two parts::

    var = var_s(d_s) / S            (seeds; sample variance, ddof 1)
        + var_r(mean_s d*_{s,r})    (test split; over the R bootstrap replicates, the replicates of every seed
                                     averaged first, since every seed is scored on the same users)

and the test statistic ``t = mean(d) / sqrt(var)`` has Welch-Satterthwaite degrees of freedom
``(S - 1) * (1 + test / seeds)^2`` (the seed part is estimated from S - 1 degrees of freedom, the bootstrap part
from R >> S). Without the bootstrap part this is exactly the paired t-test over seeds; with no spread over seeds
it is the normal test of the bootstrap's standard error (both tested against scipy).

From these: a 95 % interval per cell; every row against the suite's reference row with Holm's step-down over the
rows of a column; each row's rank with a 95 % interval (ranks of a joint draw: the same bootstrap replicate and
the same resampled seeds for every row, seed deviations scaled by ``sqrt(S / (S - 1))`` to match the variance
above); tie groups from every pair of rows (Holm over all pairs of the column): rows joined by a bar cannot be
separated, as in a critical-difference diagram. A cell computed on too few users or clicks is *thin*: shown,
never bold and never ranked.
"""
from __future__ import annotations

import math
import string
from dataclasses import dataclass, field

import numpy as np

ALPHA = 0.05  # the level every mark is drawn at
LOWER_IS_BETTER = ("logloss",)
# A cell rests on too little to rank below these (95 % half-width of an AUC of 0.7 on 100 clicks and 100 non-clicks is
# about 0.07): AUC and logloss need as many clicks and non-clicks, gAUC as many users with both classes.
MIN_CLASS_ROWS = 100
MIN_USERS = 100
RANK_DRAWS_SEED = 7


def mean_std(values: dict) -> tuple[float, float, int]:
    v = np.array([x for x in values.values() if x is not None and not math.isnan(x)], dtype=np.float64)
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"), len(v)


def better(metric: str) -> int:
    """+1 when higher is better, -1 when lower is."""
    return -1 if metric.split("@")[0] in LOWER_IS_BETTER else 1


@dataclass
class Evidence:
    """What one cell of one row rests on: the per-seed values, each seed's bootstrap replicates of the test split
    (``(R,)``; absent for runs stored without them) and the counts of the cell (rows, clicks, users)."""

    values: dict                                  # seed -> value
    replicates: dict = field(default_factory=dict)  # seed -> (R,) replicate values
    counts: dict | None = None                    # {"rows", "positives", "negatives", "users"}

    def seeds(self) -> list:
        return sorted(s for s, v in self.values.items() if v is not None and not math.isnan(v))


@dataclass
class Estimate:
    """A mean (or a difference of means) with its two variance parts."""

    mean: float
    seed_var: float        # var over seeds / S (NaN below two seeds)
    test_var: float        # bootstrap variance of the seed mean (NaN without replicates)
    seeds: int

    @property
    def var(self) -> float:
        parts = [v for v in (self.seed_var, self.test_var) if not math.isnan(v)]
        return float(sum(parts)) if parts else float("nan")

    @property
    def df(self) -> float:
        """Welch-Satterthwaite degrees of freedom (inf when the seed part is zero or unknown)."""
        if self.seeds < 2 or math.isnan(self.seed_var) or self.seed_var == 0:
            return math.inf
        test = 0.0 if math.isnan(self.test_var) else self.test_var
        return (self.seeds - 1) * (1.0 + test / self.seed_var) ** 2

    def half_width(self, level: float = 1 - ALPHA) -> float:
        from scipy import stats

        if math.isnan(self.var):
            return float("nan")
        return float(stats.t.ppf(0.5 + level / 2, self.df) * math.sqrt(self.var))

    def p_value(self) -> float:
        """Two-sided p of ``mean == 0``. NaN when the seed part is unknown (fewer than two seeds: training
        randomness unmeasured) or there is no spread at all."""
        from scipy import stats

        if self.seeds < 2 or math.isnan(self.seed_var) or math.isnan(self.mean):
            return float("nan")
        if self.var == 0:
            return 0.0 if self.mean != 0 else float("nan")
        return float(2 * stats.t.sf(abs(self.mean) / math.sqrt(self.var), self.df))


def _test_var(series: list[np.ndarray]) -> float:
    """Bootstrap variance of the mean over seeds of replicate series (one ``(R,)`` per seed)."""
    if not series:
        return float("nan")
    joint = np.mean(np.vstack(series), axis=0)
    joint = joint[~np.isnan(joint)]
    return float(joint.var(ddof=1)) if len(joint) > 1 else float("nan")


def estimate(a: Evidence, b: Evidence | None = None) -> Estimate:
    """The mean of ``a`` over its seeds, or the paired difference ``a - b`` over the seeds both have."""
    seeds = a.seeds() if b is None else sorted(set(a.seeds()) & set(b.seeds()))
    if not seeds:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    d = np.array([a.values[s] - (0.0 if b is None else b.values[s]) for s in seeds], dtype=np.float64)
    seed_var = float(d.var(ddof=1)) / len(d) if len(d) > 1 else float("nan")
    test_var = float("nan")
    if all(s in a.replicates and (b is None or s in b.replicates) for s in seeds):
        test_var = _test_var([a.replicates[s] - (0.0 if b is None else b.replicates[s]) for s in seeds])
    return Estimate(float(d.mean()), seed_var, test_var, len(seeds))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count as a hypothesis)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    if not len(idx):
        return out.tolist()
    m = len(idx)
    order = idx[np.argsort(p[idx], kind="mergesort")]
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out.tolist()


def is_thin(metric: str, counts: dict | None) -> bool:
    """Whether a cell rests on too few clicks/non-clicks (AUC, logloss) or users with both (gAUC) to be ranked."""
    if not counts:
        return False
    if counts.get("rows", 0) == 0:
        return True
    if metric.split("@")[0] == "gAUC":
        users = counts.get("users")
        return users is not None and users < MIN_USERS
    return min(counts.get("positives", 0), counts.get("negatives", 0)) < MIN_CLASS_ROWS


@dataclass
class ColumnStats:
    """Everything the marks of one column need, indexed like the table's rows."""

    metric: str
    estimates: list                      # Estimate of each row's mean
    thin: list                           # bool per row
    reference: int | None = None         # the reference row's index
    p_reference: list = field(default_factory=list)   # Holm-adjusted p of each row vs the reference (NaN: none)
    rank_low: list = field(default_factory=list)      # 95 % rank interval per row (1 = best); None when unranked
    rank_high: list = field(default_factory=list)
    groups: list = field(default_factory=list)        # tie-group letters per row ("" when unranked)
    best_group: list = field(default_factory=list)    # rows the data cannot separate from the best one
    p_pairs: dict = field(default_factory=dict)       # (i, j) -> Holm-adjusted p over all pairs

    def bold(self, i: int) -> bool:
        """Whether row ``i`` cannot be separated from the best row while some ranked row can (when no ranked row
        can be told apart from the rest, none is bold)."""
        ranked = sum(low is not None for low in self.rank_low)
        return i in self.best_group and len(self.best_group) < ranked

    def direction(self, i: int) -> int:
        """+1 when row ``i`` is significantly better than the reference, -1 worse, 0 otherwise."""
        if self.reference is None or i == self.reference or self.thin[i]:
            return 0
        p = self.p_reference[i]
        if math.isnan(p) or p >= ALPHA:
            return 0
        diff = self.estimates[i].mean - self.estimates[self.reference].mean
        return int(np.sign(diff) * better(self.metric))


def column_stats(evidence: list[Evidence], metric: str, reference: int | None = None) -> ColumnStats:
    """Intervals, Holm-corrected comparisons with ``reference``, rank intervals and tie groups of one column."""
    sign = better(metric)
    estimates = [estimate(e) for e in evidence]
    thin = [is_thin(metric, e.counts) for e in evidence]
    out = ColumnStats(metric=metric, estimates=estimates, thin=thin, reference=reference)
    n = len(evidence)
    ranked = [i for i in range(n) if not thin[i] and not math.isnan(estimates[i].mean)]
    pairs = [(i, j) for a, i in enumerate(ranked) for j in ranked[a + 1:]]
    raw_pairs = {pair: estimate(evidence[pair[0]], evidence[pair[1]]).p_value() for pair in pairs}  # symmetric
    raw = [float("nan")] * n
    if reference is not None and reference in ranked:
        for i in ranked:
            if i != reference:
                raw[i] = raw_pairs[(min(i, reference), max(i, reference))]
    out.p_reference = holm(raw)  # one family: the rows against the reference
    out.rank_low, out.rank_high = rank_intervals(evidence, estimates, ranked, sign)
    out.p_pairs = dict(zip(pairs, holm(list(raw_pairs.values()))))  # another: every pair of the column
    out.groups, out.best_group = tie_groups(ranked, estimates, out.p_pairs, sign, n)
    return out


def rank_intervals(evidence: list[Evidence], estimates: list[Estimate], ranked: list[int], sign: int,
                   level: float = 1 - ALPHA) -> tuple[list, list]:
    """95 % interval of each ranked row's rank (1 = best) over joint draws of both error sources."""
    n = len(evidence)
    low, high = [None] * n, [None] * n
    if not ranked:
        return low, high
    draws = _joint_draws([evidence[i] for i in ranked], [estimates[i] for i in ranked])
    order = np.argsort(-sign * draws, axis=0, kind="mergesort")  # (rows, Q): best first per draw
    ranks = np.empty_like(order)
    ranks[order, np.arange(draws.shape[1])] = np.arange(1, len(ranked) + 1)[:, None]
    lo_q, hi_q = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    for k, i in enumerate(ranked):
        low[i] = int(np.floor(np.percentile(ranks[k], lo_q)))
        high[i] = int(np.ceil(np.percentile(ranks[k], hi_q)))
    return low, high


def _joint_draws(evidence: list[Evidence], estimates: list[Estimate]) -> np.ndarray:
    """``(rows, Q)`` draws of every row's mean: the same bootstrap replicate and the same resampled seeds for every
    row in draw ``q`` (paired like the tests)."""
    lengths = [len(r) for e in evidence for r in e.replicates.values()]
    q = min(lengths) if lengths else 1000
    rng = np.random.default_rng(RANK_DRAWS_SEED)
    uniform = rng.random((q, max((len(e.seeds()) for e in evidence), default=1)))
    out = np.empty((len(evidence), q))
    for k, (e, est) in enumerate(zip(evidence, estimates)):
        seeds = e.seeds()
        values = np.array([e.values[s] for s in seeds], dtype=np.float64)
        s_count = len(seeds)
        draw = np.full(q, est.mean)
        if s_count > 1:  # seed part: resampled seeds, the same positions for every row
            picks = np.floor(uniform[:, :s_count] * s_count).astype(int)
            draw += math.sqrt(s_count / (s_count - 1)) * (values[picks].mean(axis=1) - values.mean())
        if seeds and all(s in e.replicates for s in seeds):  # test part: replicate q of every seed, averaged
            joint = np.mean(np.vstack([e.replicates[s][:q] for s in seeds]), axis=0)
            draw += np.nan_to_num(joint - np.nanmean(joint))
        out[k] = draw
    return out


def tie_groups(ranked: list[int], estimates: list[Estimate], p_pairs: dict, sign: int,
               n: int) -> tuple[list, list]:
    """Letters per row: rows sorted by mean, a bar from each row to the furthest row it is not significantly
    different from; each bar not inside another gets a letter, and a row carries the letters of the bars over it.
    Also the rows of the best row's bar (not separable from the best)."""
    order = sorted(ranked, key=lambda i: -sign * estimates[i].mean)

    def differ(i: int, j: int) -> bool:
        p = p_pairs.get((i, j), p_pairs.get((j, i), float("nan")))
        return not math.isnan(p) and p < ALPHA

    bars = []
    for a in range(len(order)):
        b = a
        for c in range(a + 1, len(order)):
            if not differ(order[a], order[c]):
                b = c
        if not bars or b > bars[-1][1]:
            bars.append((a, b))
    letters = [""] * n
    names = list(string.ascii_lowercase) + [f"{x}{y}" for x in string.ascii_lowercase for y in string.ascii_lowercase]
    for k, (a, b) in enumerate(bars):
        for pos in range(a, b + 1):
            letters[order[pos]] += names[k] if len(names[k]) == 1 else f"({names[k]})"
    best = [order[pos] for pos in range(bars[0][0], bars[0][1] + 1)] if bars else []
    return letters, best
