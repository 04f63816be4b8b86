"""Metrics against scikit-learn references computed another way (per group, in a Python loop)."""
import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from mdl_bench.model_zoo.core import metrics as M
from mdl_bench.kernel.errors import UserError


def reference_gauc(y, p, g):
    num = den = 0.0
    for user in np.unique(g):
        m = g == user
        if 0 < y[m].sum() < m.sum():
            num += roc_auc_score(y[m], p[m]) * m.sum()
            den += m.sum()
    return num / den


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5000)
    p = np.round(rng.random(5000), 2)  # many ties
    assert M.auc_score(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_gauc_matches_per_user_reference():
    rng = np.random.default_rng(1)
    n = 20000
    g = rng.integers(0, 700, n)
    y = (rng.random(n) < 0.3).astype(float)
    y[g == 5] = 1.0  # a single-class user: skipped
    y[g == 6] = 0.0
    p = np.round(rng.random(n) * 0.5 + 0.3 * y, 3)  # ties inside users
    assert M.gauc_score(y, p, g) == pytest.approx(reference_gauc(y, p, g), abs=1e-12)


def test_gauc_keeps_unseen_users_as_their_own_groups():
    # Two users whose rankings differ: merging them into one group (as an OOV id would) changes the value.
    y = np.array([1, 0, 1, 0, 1, 0], float)
    p = np.array([0.9, 0.1, 0.2, 0.8, 0.6, 0.5])
    g = np.array([1, 1, 2, 2, 3, 3])
    assert M.gauc_score(y, p, g) == pytest.approx((1 * 2 + 0 * 2 + 1 * 2) / 6)
    assert M.gauc_score(y, p, np.array([1, 1, 0, 0, 0, 0])) != pytest.approx(M.gauc_score(y, p, g))


def test_logloss_matches_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 1000)
    p = rng.random(1000) * 0.98 + 0.01
    assert M.logloss_score(y, p) == pytest.approx(log_loss(y, p), rel=1e-12)


def test_per_domain_names_and_expansion():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 3000).astype(float)
    p = rng.random(3000)
    d = rng.integers(0, 3, 3000)
    g = rng.integers(0, 50, 3000)
    out = M.compute_metrics(["AUC", "gAUC"], y, p, d, g, ["A", "B", "C"], expand_domains=True)
    assert list(out) == ["AUC", "gAUC", "AUC@A", "AUC@B", "AUC@C", "gAUC@A", "gAUC@B", "gAUC@C"]
    assert out["AUC@B"] == pytest.approx(roc_auc_score(y[d == 1], p[d == 1]))
    assert out["gAUC@C"] == pytest.approx(reference_gauc(y[d == 2], p[d == 2], g[d == 2]))


def test_unknown_metric_and_domain_are_one_line_errors():
    with pytest.raises(UserError, match="unknown metric 'AUCC'.*did you mean AUC"):
        M.check_metric_names(["AUCC"], ["S0"])
    with pytest.raises(UserError, match="names domain 'S9'.*S0, S1"):
        M.check_metric_names(["AUC@S9"], ["S0", "S1"])
