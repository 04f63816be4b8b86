"""The statistics of the leaderboard: means over seeds, the paired t-test, best / second-best marks."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

P_VALUE = 0.05
LOWER_IS_BETTER = ("logloss",)


def mean_std(values: dict) -> tuple[float, float, int]:
    v = np.array([x for x in values.values() if x is not None and not math.isnan(x)], dtype=np.float64)
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"), len(v)


def paired_p(a: dict, b: dict) -> tuple[float, int]:
    """Two-sided p of ``scipy.stats.ttest_rel`` on the seeds both ``{seed: value}`` have; NaN below 2 pairs."""
    from scipy import stats

    common = sorted(s for s in set(a) & set(b) if not (math.isnan(a[s]) or math.isnan(b[s])))
    if len(common) < 2:
        return float("nan"), len(common)
    x = np.array([a[s] for s in common], dtype=np.float64)
    y = np.array([b[s] for s in common], dtype=np.float64)
    with warnings.catch_warnings():  # scipy warns on nearly identical samples; its answer stands
        warnings.simplefilter("ignore", RuntimeWarning)
        # as scipy: constant non-zero differences give p = 0, identical samples p = NaN (never significant)
        return float(stats.ttest_rel(x, y).pvalue), len(common)


def better(metric: str) -> int:
    """+1 when higher is better, -1 when lower is."""
    return -1 if metric.split("@")[0] in LOWER_IS_BETTER else 1


@dataclass
class ColumnMarks:
    """Rows with the best and the second-best mean of a column (several on exact ties) and the paired test of the
    best against the second (``p_value`` is the largest p over the second-best rows)."""

    best: list = field(default_factory=list)
    second: list = field(default_factory=list)
    p_value: float = float("nan")
    pairs: int = 0

    @property
    def significant(self) -> bool:
        # a tie for the best is not "significantly better than the second"
        return len(self.best) == 1 and bool(self.second) and self.p_value < P_VALUE


def column_marks(values: list[dict], metric: str) -> ColumnMarks:
    """Best and second best of one column (a ``{seed: value}`` per row) and the paired test between them."""
    sign = better(metric)
    means = [mean_std(v)[0] for v in values]
    levels = sorted({means[i] for i in range(len(means)) if not math.isnan(means[i])}, key=lambda m: -sign * m)
    marks = ColumnMarks()
    if levels:
        marks.best = [i for i, m in enumerate(means) if m == levels[0]]
    if len(levels) > 1:
        marks.second = [i for i, m in enumerate(means) if m == levels[1]]
        if len(marks.best) == 1:
            tests = [paired_p(values[marks.best[0]], values[j]) for j in marks.second]
            marks.p_value = max(p for p, _ in tests)  # NaN when any test is undefined
            marks.pairs = min(n for _, n in tests)
    return marks


