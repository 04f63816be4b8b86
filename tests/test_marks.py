"""The leaderboard's marks: the test split's bootstrap, the combined intervals and tests, Holm, ranks, tie groups and
thin cells, each checked against a reference computed another way (an explicit resample, scipy, a worked example).
"""
import csv
import io
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from mdl_bench.benchmark.leaderboard import build_board, render
from mdl_bench.benchmark.leaderboard.stats import (ALPHA, Estimate, Evidence, MIN_USERS, column_stats, estimate, holm,
                                                   is_thin, tie_groups)
from mdl_bench.benchmark.suite import Suite
from mdl_bench.model_zoo.core import bootstrap, metrics

from test_suite import fake_record, write_suite
from mdl_bench.benchmark.store import Store


def scored_rows(n=3000, users=150, seed=0):
    rng = np.random.default_rng(seed)
    group = rng.integers(0, users, n) * 3 + 11  # ids need not be 0..U-1
    y = (rng.random(n) < 0.35).astype(np.float64)
    score = np.clip(rng.random(n) * 0.6 + 0.25 * y, 0, 1)
    score[:200] = np.round(score[:200], 1)  # some tied scores
    domain = rng.choice(3, n, p=[0.6, 0.3, 0.1])
    return y, score, domain, group


# ------------------------------------------------------------------------------------------ the test-split bootstrap
@pytest.mark.parametrize("with_group", [True, False])
def test_every_replicate_equals_the_metrics_of_the_rows_physically_resampled(with_group):
    y, s, d, g = scored_rows()
    group = g if with_group else None
    names = ["A", "B", "C"]
    out = bootstrap.bootstrap_metrics(y, s, d, group, names, replicates=12)
    assert ("gAUC@B" in out) == with_group and len(out["AUC"]) == 12
    cluster, n_clusters = bootstrap.cluster_index(group, len(y))
    for r in (0, 5, 11):
        counts = bootstrap.multiplicities(n_clusters, r, r + 1)[0].astype(int)
        # the slow reference: repeat every row as often as its user (or row) was drawn, then score the copy
        rows = np.repeat(np.arange(len(y)), counts[cluster])
        for key, sel in (("", np.ones(len(rows), bool)), ("@B", d[rows] == 1), ("@C", d[rows] == 2)):
            picked = rows[sel]
            assert out[f"AUC{key}"][r] == pytest.approx(roc_auc_score(y[picked], s[picked]), abs=1e-12)
            assert out[f"logloss{key}"][r] == pytest.approx(metrics.logloss_score(y[picked], s[picked]), abs=1e-12)
            if with_group:  # a repeated user counts its rows as often as it was drawn (one group, same AUC)
                assert out[f"gAUC{key}"][r] == pytest.approx(metrics.gauc_score(y[picked], s[picked], g[picked]),
                                                             abs=1e-12)


def test_replicates_pair_runs_whatever_their_row_order_and_chunking():
    y, s, d, g = scored_rows()
    a = bootstrap.bootstrap_metrics(y, s, d, g, ["A", "B", "C"], replicates=30)
    perm = np.random.default_rng(3).permutation(len(y))
    b = bootstrap.bootstrap_metrics(y[perm], s[perm], d[perm], g[perm], ["A", "B", "C"], replicates=30)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-12)
    first = bootstrap.multiplicities(50, 0, 10)
    np.testing.assert_array_equal(first[4:7], bootstrap.multiplicities(50, 4, 7))
    assert bootstrap.replicate_count(300_000) == 1000 and bootstrap.replicate_count(50_000_000) == 200
    np.testing.assert_array_equal(bootstrap.decode(bootstrap.encode(np.array([0.5, 0.25]))), [0.5, 0.25])


def test_cell_counts_count_the_users_gauc_rests_on():
    y = np.array([1, 0, 1, 1, 0, 0], dtype=float)
    d = np.array([0, 0, 0, 1, 1, 1])
    g = np.array([7, 7, 8, 7, 9, 9])
    counts = bootstrap.cell_counts(y, d, g, ["A", "B"])
    assert counts["A"] == {"rows": 3, "positives": 2, "negatives": 1, "users": 1}  # user 8 has one class
    assert counts["B"] == {"rows": 3, "positives": 1, "negatives": 2, "users": 0}
    assert counts["Overall"]["users"] == 1 and bootstrap.cell_counts(y, d, None, ["A", "B"])["A"]["users"] is None


# ------------------------------------------------------------------------------------------ intervals and tests
def test_without_the_bootstrap_the_test_is_the_paired_t_test_over_seeds():
    a = {1: 0.71, 2: 0.725, 3: 0.718, 4: 0.722, 5: 0.716}
    b = {1: 0.70, 2: 0.712, 3: 0.713, 4: 0.709, 5: 0.717}
    est = estimate(Evidence(a), Evidence(b))
    ref = stats.ttest_rel(list(a.values()), list(b.values()))
    assert est.p_value() == pytest.approx(ref.pvalue, rel=1e-10) and est.df == 4
    one = estimate(Evidence(a))
    sd = np.std(list(a.values()), ddof=1)
    assert one.half_width() == pytest.approx(stats.t.ppf(0.975, 4) * sd / math.sqrt(5), rel=1e-12)


def test_with_no_spread_over_seeds_the_test_is_the_normal_test_of_the_bootstrap_error():
    rng = np.random.default_rng(1)
    shared = rng.normal(0, 0.004, 2000)  # the users both rows are scored on
    a_reps = {s: 0.72 + shared + rng.normal(0, 0.001, 2000) for s in (1, 2, 3)}
    b_reps = {s: 0.715 + shared for s in (1, 2, 3)}
    a = Evidence({s: 0.72 for s in (1, 2, 3)}, a_reps)
    b = Evidence({s: 0.715 for s in (1, 2, 3)}, b_reps)
    est = estimate(a, b)
    diff = np.mean([a_reps[s] - b_reps[s] for s in (1, 2, 3)], axis=0)
    assert est.seed_var == 0 and est.df == math.inf
    assert est.test_var == pytest.approx(diff.var(ddof=1), rel=1e-12)
    assert est.p_value() == pytest.approx(2 * stats.norm.sf(0.005 / diff.std(ddof=1)), rel=1e-9)
    # pairing: the shared user noise cancels in the difference, so it is far tighter than either row alone
    assert est.test_var < estimate(a).test_var / 5


def test_both_parts_add_and_the_degrees_of_freedom_follow_welch_satterthwaite():
    rng = np.random.default_rng(2)
    values = {1: 0.70, 2: 0.71, 3: 0.705}
    reps = {s: values[s] + rng.normal(0, 0.01, 4000) for s in values}
    est = estimate(Evidence(values, reps))
    seed_part = np.var(list(values.values()), ddof=1) / 3
    test_part = np.mean([reps[s] for s in values], axis=0).var(ddof=1)
    assert est.var == pytest.approx(seed_part + test_part, rel=1e-12)
    assert est.df == pytest.approx(2 * (1 + test_part / seed_part) ** 2, rel=1e-12)
    assert Estimate(0.01, 0.0, float("nan"), 3).p_value() == 0.0  # constant non-zero differences
    assert math.isnan(estimate(Evidence({1: 0.7}), Evidence({1: 0.6})).p_value())  # one seed: nothing to test


def test_holm_step_down_on_a_worked_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> kept monotone: 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.2, float("nan"), 0.01])
    assert out[0] == pytest.approx(0.2) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1, then kept monotone


def test_tie_groups_are_the_bars_of_a_critical_difference_diagram():
    means = [Estimate(m, 0, 0, 2) for m in (0.80, 0.79, 0.78, 0.70)]
    # 0~1, 1~2, 0 differs from 2, everything differs from 3
    p = {(0, 1): 0.5, (0, 2): 0.01, (0, 3): 0.001, (1, 2): 0.4, (1, 3): 0.001, (2, 3): 0.001}
    letters, best = tie_groups([0, 1, 2, 3], means, p, +1, 4)
    assert letters == ["a", "ab", "b", "c"] and best == [0, 1]
    letters, best = tie_groups([0, 1, 2, 3], means, {k: 0.9 for k in p}, +1, 4)
    assert letters == ["a"] * 4 and best == [0, 1, 2, 3]


def separated(n_rows=4, seeds=(1, 2, 3, 4, 5), gap=0.01, noise=0.0005, test_sd=0.002, reps=1000, seed=0):
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, test_sd, reps)
    out = []
    for i in range(n_rows):
        values = {s: 0.75 - gap * i + rng.normal(0, noise) for s in seeds}
        out.append(Evidence(values, {s: values[s] + shared + rng.normal(0, test_sd / 4, reps) for s in seeds},
                            {"rows": 5000, "positives": 1500, "negatives": 3500, "users": 800}))
    return out


def test_rank_intervals_are_exact_for_separated_rows_and_wide_for_equal_ones():
    col = column_stats(separated(), "AUC", reference=3)
    assert col.rank_low == [1, 2, 3, 4] and col.rank_high == [1, 2, 3, 4]
    assert col.groups == ["a", "b", "c", "d"] and col.best_group == [0]
    assert [col.direction(i) for i in range(4)] == [1, 1, 1, 0]  # all above the reference (the last row)
    same = column_stats(separated(gap=0.0), "AUC", reference=0)
    assert min(h - l for l, h in zip(same.rank_low, same.rank_high)) >= 1
    assert set(same.groups) == {"a"} and len(same.best_group) == 4
    assert all(same.direction(i) == 0 for i in range(4))
    loss = column_stats(separated(), "logloss", reference=0)  # lower is better: the order turns round
    assert loss.rank_low == [4, 3, 2, 1] and [loss.direction(i) for i in range(4)] == [0, 1, 1, 1]


def test_the_reference_comparison_is_holm_corrected_over_the_rows():
    ev = separated(n_rows=3, gap=0.0003, noise=0.0004, test_sd=0.0005)
    col = column_stats(ev, "AUC", reference=0)
    raw = [float("nan")] + [estimate(ev[i], ev[0]).p_value() for i in (1, 2)]
    assert col.p_reference == pytest.approx(holm(raw), nan_ok=True)
    assert col.p_reference[1] >= raw[1] and col.p_reference[2] >= raw[2]


def test_thin_cells_are_neither_ranked_nor_compared():
    ev = separated(n_rows=3)
    ev[0].counts = {"rows": 44, "positives": 10, "negatives": 34, "users": 12}
    col = column_stats(ev, "gAUC", reference=1)
    assert col.thin == [True, False, False] and col.rank_low[0] is None and col.groups[0] == ""
    assert col.direction(0) == 0 and 0 not in col.best_group
    tied = separated(n_rows=3, gap=0.0)
    tied[2].counts = {"rows": 44, "positives": 10, "negatives": 34, "users": 12}
    both = column_stats(tied, "AUC", reference=0)  # the two ranked rows cannot be told apart: neither is bold
    assert set(both.best_group) == {0, 1} and not any(both.bold(i) for i in range(3))
    assert column_stats(separated(n_rows=3), "AUC").bold(0) and not column_stats(separated(n_rows=3), "AUC").bold(1)
    assert is_thin("gAUC@S6", {"rows": 900, "positives": 400, "negatives": 500, "users": MIN_USERS - 1})
    assert not is_thin("AUC@S6", {"rows": 900, "positives": 400, "negatives": 500, "users": MIN_USERS - 1})
    assert is_thin("AUC", {"rows": 0, "positives": 0, "negatives": 0, "users": 0})


# ------------------------------------------------------------------------------------------ the rendered board
ROWS = {
    "name": "marks", "seeds": [1, 2, 3],
    "expids": [{"expid": "Crocodile_test", "label": f"R{i}", "group": "MDL", "overrides": {"learning_rate": lr}}
               for i, lr in enumerate((0.01, 0.02, 0.03))],
    "leaderboard": {"metrics": ["AUC", "gAUC"], "reference": "R2"},
}


def test_the_board_prints_intervals_ranks_groups_and_thin_cells_in_every_format(tmp_path):
    suite = Suite(ROWS, write_suite(tmp_path, ROWS))
    plan = suite.plan()
    index = {v.config_hash: i for i, v in enumerate(plan.variants)}
    domains = ["S0", "S1", "S2", "S4", "S6"]
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 0.002, 1000)
    with Store(tmp_path / "s.sqlite") as db:
        for run in plan.runs:
            i = index[run.variant.config_hash]
            base = 0.70 + 0.02 * (2 - i) + 0.0005 * run.seed  # R0 best by far, R2 (the reference) last
            values = {f"{m}{d}": base for m in ("AUC", "gAUC") for d in [""] + [f"@{x}" for x in domains]}
            cells = {name: bootstrap.encode(v + shared) for name, v in values.items()}
            counts = {d: {"rows": 5000, "positives": 1500, "negatives": 3500, "users": 900} for d in domains}
            counts["Overall"] = {"rows": 25000, "positives": 7500, "negatives": 17500, "users": 2000}
            counts["S6"] = {"rows": 44, "positives": 9, "negatives": 35, "users": 7}  # a new user's tiny domain
            record = fake_record(run, values)
            record["result"] = {"test_counts": counts, "test_bootstrap": {"replicates": 1000, "cells": cells}}
            db.insert_run(record)
    board = build_board(suite, store=str(tmp_path / "s.sqlite"))
    table = board.tables[0]
    assert table.reference.label == "R2"
    auc = table.marks["AUC"]
    assert auc.rank_low == [1, 2, 3] and auc.groups == ["a", "b", "c"]
    assert [auc.direction(i) for i in range(3)] == [1, 1, 0]
    md = render(board, "md")
    r0 = next(line for line in md.splitlines() if line.startswith("| MDL") or "| R0 " in line)
    assert "**0.7410** ±" in r0 and "▲" in r0
    s6 = table.marks["gAUC@S6"]
    cells = r0.split("|")  # group, method, AUC S0..S6, Overall, gAUC S0..S6, Overall, ...
    assert s6.thin == [True, True, True] and "°" in cells[7] and "°" in cells[13]
    assert "**" not in cells[7] and "**" not in cells[13] and "**" in cells[8]
    assert "Rank intervals and tie groups" in md and "fewer than 100 clicks" in md
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(render(board, "csv")))}
    assert rows["R0"]["AUC rank_low"] == "1" and rows["R0"]["AUC group"] == "a" and rows["R0"]["AUC bold"] == "1"
    assert rows["R0"]["AUC vs_reference"] == "1" and rows["R2"]["AUC vs_reference"] == "0"
    assert rows["R0"]["gAUC@S6 thin"] == "1" and rows["R0"]["gAUC@S6 bold"] == "0"
    assert float(rows["R0"]["AUC ci_low"]) < float(rows["R0"]["AUC"]) < float(rows["R0"]["AUC ci_high"])
    assert rows["R0"]["AUC@S6 users"] == "7"
    page = render(board, "html")
    assert "<b class='best'>0.7410</b>" in page and "°" in page and "rank" in page


def test_the_joint_draws_behind_the_ranks_have_the_variance_of_the_estimates():
    """The rank intervals come from joint draws; their spread (of a row, and of a difference of two rows) must be
    the variance the tests use, seeds part and test-split part together."""
    from mdl_bench.benchmark.leaderboard.stats import _joint_draws

    rng = np.random.default_rng(5)
    shared = rng.normal(0, 0.003, 1000)
    rows = []
    for base, noise in ((0.75, 0.002), (0.748, 0.001)):
        values = {s: base + rng.normal(0, noise) for s in (1, 2, 3, 4, 5)}
        rows.append(Evidence(values, {s: values[s] + shared + rng.normal(0, 0.001, 1000) for s in values}))
    draws = _joint_draws(rows, [estimate(e) for e in rows])
    for k in (0, 1):
        assert draws[k].var(ddof=1) == pytest.approx(estimate(rows[k]).var, rel=0.2)
    assert (draws[0] - draws[1]).var(ddof=1) == pytest.approx(estimate(rows[0], rows[1]).var, rel=0.2)
    assert (draws[0] - draws[1]).var(ddof=1) < 0.5 * draws[0].var(ddof=1)  # paired: the shared users cancel
