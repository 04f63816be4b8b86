"""Budget curves (Dodge et al., 2019, "Show Your Work"): how each method's best validation score grows with the
number of tuning trials, and the budget from which the methods' ranking stops changing.

For the ``N`` stored trials of a row with scores ``v_(1) <= ... <= v_(N)``, the expected best score after ``n``
trials drawn independently from the same search is the expected maximum of ``n`` draws from their empirical
distribution::

    E[max_n] = sum_i v_(i) * ((i / N)^n - ((i - 1) / N)^n)

with its standard deviation from ``E[max_n^2]`` the same way. A trial's score is its best validation monitor; a
trial the pruner stopped counts with the best monitor it reached before it was stopped (what the search saw of
it), so pruning lowers a curve's start but not its end. For a monitor where lower is better the maximum becomes a
minimum.

The closed form assumes trials drawn independently from one distribution (random search). Where the search is
sequential - a pruner that judges a trial against the earlier ones, or an adaptive sampler - the *running best*
of the trials in the order they ran is reported beside it: what this search actually had after n trials.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..suite.tuning import best_monitor


def expected_best(scores, n: int, mode: str = "max") -> tuple[float, float]:
    """``(mean, std)`` of the best of ``n`` i.i.d. draws from the empirical distribution of ``scores``."""
    v = np.sort(np.asarray([s for s in scores if s is not None and not math.isnan(s)], dtype=np.float64))
    if not len(v) or n < 1:
        return float("nan"), float("nan")
    if mode == "min":
        v = -v[::-1]
    big_n = len(v)
    i = np.arange(1, big_n + 1, dtype=np.float64)
    weight = (i / big_n) ** n - ((i - 1) / big_n) ** n  # P(the best of n draws is the i-th smallest)
    mean = float((weight * v).sum())
    var = max(0.0, float((weight * v * v).sum()) - mean * mean)
    return (-mean if mode == "min" else mean), math.sqrt(var)


@dataclass
class BudgetCurves:
    labels: list              # one per row
    budget: int               # the largest n (the most trials any row has)
    means: list               # per row: [E[best] for n = 1..budget] (NaN beyond the row's own trials)
    stds: list
    mode: str
    stable_from: int | None   # smallest n from which the ranking equals the ranking at ``common``
    running: list = None      # per row: the best score among its first n trials, in the order they ran

    @property
    def common(self) -> int:
        """The fewest trials any row ran: the largest n at which every row can be ranked."""
        return min((sum(not math.isnan(v) for v in m) for m in self.means), default=0)

    def ranking(self, n: int) -> list[str]:
        """Row labels best first by the expected best score after ``n`` trials."""
        sign = -1 if self.mode == "max" else 1
        values = [(m[n - 1], k) for k, m in enumerate(self.means) if not math.isnan(m[n - 1])]
        return [self.labels[k] for _, k in sorted(values, key=lambda x: (sign * x[0], x[1]))]


def trial_score(result: dict | None, mode: str) -> float | None:
    """A stored trial's score: the validation monitor of the model it returned (a pruned trial's best before it
    was stopped); :func:`~mdl_bench.benchmark.suite.tuning.best_monitor`."""
    return best_monitor(result, mode)


def budget_curves(rows: list) -> BudgetCurves:
    """The curves of a tuning report's rows (:class:`~.tuning.TunedRow`), n = 1 .. the most trials run by a row."""
    mode = rows[0].mode if rows else "max"
    scores = [[trial_score(t.result, r.mode) for t in r.trials if t.result is not None] for r in rows]
    scores = [[s for s in row if s is not None] for row in scores]
    budget = max((len(s) for s in scores), default=0)
    means, stds, running = [], [], []
    for row_scores in scores:
        best = np.maximum.accumulate(row_scores) if mode == "max" else np.minimum.accumulate(row_scores)
        running.append([float(b) for b in best] + [float("nan")] * (budget - len(row_scores)))
        pairs = [expected_best(row_scores, n, mode) if n <= len(row_scores) else (float("nan"), float("nan"))
                 for n in range(1, budget + 1)]
        means.append([p[0] for p in pairs])
        stds.append([p[1] for p in pairs])
    curves = BudgetCurves([r.label for r in rows], budget, means, stds, mode, None, running)
    if curves.common:  # rankings compare rows at the same n, so only up to the n every row reached
        final = curves.ranking(curves.common)
        stable = curves.common
        for n in range(curves.common, 0, -1):
            if curves.ranking(n) != final:
                break
            stable = n
        curves.stable_from = stable
    return curves


def render_budget_md(curves: BudgetCurves) -> list[str]:
    """The curves as a Markdown section: a table of E[best] +- std per n, and the budget where ranking settles."""
    if not curves.budget:
        return []
    shown = sorted({1, 2, 3, 5, 8, 12, 20, 30, 50, curves.budget} & set(range(1, curves.budget + 1)))
    lines = ["## Budget curves", "",
             "Expected best validation monitor after n trials (Dodge et al. 2019: the best of n draws from the "
             "row's stored trials; a pruned trial counts with the best it reached), ± its standard deviation; "
             "below it, the running best of the trials in the order they ran (the closed form assumes independent "
             "trials, which a pruner that compares a trial with the earlier ones makes only approximately true).",
             "", "| row | " + " | ".join(f"n={n}" for n in shown) + " |", "|---|" + "---|" * len(shown)]
    for label, mean, std, run in zip(curves.labels, curves.means, curves.stds, curves.running):
        cells = ["-" if math.isnan(mean[n - 1]) else f"{mean[n - 1]:.5f} ± {std[n - 1]:.5f}<br>"
                 f"{run[n - 1]:.5f}" for n in shown]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if curves.common:
        fewest = " (the fewest trials any row ran)" if curves.common < curves.budget else ""
        lines += ["", f"The ranking of the rows by expected best score after n trials is the same for every n from "
                      f"{curves.stable_from} to {curves.common}{fewest}: "
                      f"{' > '.join(curves.ranking(curves.common))}.", ""]
    return lines


def budget_csv_rows(curves: BudgetCurves) -> list[list]:
    """``[row, n, expected_best, std, running_best]`` lines."""
    return [[label, n, mean[n - 1], std[n - 1], run[n - 1]]
            for label, mean, std, run in zip(curves.labels, curves.means, curves.stds, curves.running)
            for n in range(1, curves.budget + 1) if not math.isnan(mean[n - 1])]


def plot_budget(curves: BudgetCurves, path: Path) -> Path | None:
    """The curves as a PNG (one line per row, its ± std band)."""
    if not curves.budget:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    n = np.arange(1, curves.budget + 1)
    for label, mean, std, run in zip(curves.labels, curves.means, curves.stds, curves.running):
        m, s = np.asarray(mean), np.asarray(std)
        line, = ax.plot(n, m, marker="o", markersize=3, label=label)
        ax.fill_between(n, m - s, m + s, alpha=0.12, color=line.get_color())
        ax.step(n, np.asarray(run), where="post", linestyle=":", linewidth=1, color=line.get_color())
    if curves.stable_from:
        ax.axvline(curves.stable_from, color="#888", linestyle=":", linewidth=1)
    ax.set_xlabel("trials (n)")
    ax.set_ylabel("expected best validation monitor")
    ax.set_title("Budget curves: expected best after n trials (dotted: running best in trial order)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
