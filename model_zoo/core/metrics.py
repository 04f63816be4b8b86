"""Exact, vectorised ranking metrics, overall and per domain.

* ``AUC``: Mann-Whitney statistic with tied scores given their average rank (equals scikit-learn's
  ``roc_auc_score``).
* ``gAUC``: the DIN definition used by FuxiCTR: the mean of per-user AUCs weighted by each user's number of
  rows, skipping users whose rows are all one class. Users are whatever ``group`` says; the datasets here
  use a meta copy of the user id remapped over all splits, so users unseen in training keep their own
  groups instead of collapsing into one OOV group.
* ``logloss``: mean binary cross-entropy with predictions clipped to ``[eps, 1 - eps]``.

All groups are computed together from one sort (``O(N log N)``), with no Python loop over users and no
process pool. Metric names may carry a domain: ``"AUC@S6"`` is the AUC on the rows of domain ``S6``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Sequence

import numpy as np

from mdl_bench.kernel.errors import UserError, close_matches

BASE_METRICS = ("logloss", "AUC", "gAUC")
LOGLOSS_EPS = 1e-7


def group_auc(y_true: np.ndarray, y_score: np.ndarray, group: np.ndarray | None = None):
    """Per-group AUC for every group at once.

    Args:
        y_true: labels in {0, 1}, shape (N,).
        y_score: scores, shape (N,).
        group: integer group ids, shape (N,); ``None`` puts every row in one group.

    Returns:
        ``(auc, n_rows, valid)``, each of shape (G,) over the groups in ascending id order: the AUC of each
        group (NaN where the group has a single class), its row count, and whether it has both classes.
    """
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    n = y.shape[0]
    if n == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool)
    g = np.zeros(n, dtype=np.int64) if group is None else np.asarray(group).ravel()
    order = np.lexsort((s, g))  # by group, then by score
    g_s, s_s, y_s = g[order], s[order], y[order]
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    np.not_equal(g_s[1:], g_s[:-1], out=new_group[1:])
    gid = np.cumsum(new_group) - 1
    group_start = np.flatnonzero(new_group)
    new_run = new_group.copy()  # a run of tied scores never crosses a group boundary
    new_run[1:] |= s_s[1:] != s_s[:-1]
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_end = np.append(run_start[1:], n)
    mean_position = (run_start + run_end - 1) / 2.0  # average 0-based position of each tie run
    rank = mean_position[run_id] - group_start[gid] + 1.0  # 1-based rank inside the group
    n_groups = group_start.shape[0]
    n_rows = np.bincount(gid, minlength=n_groups).astype(np.float64)
    n_pos = np.bincount(gid, weights=y_s, minlength=n_groups)
    n_neg = n_rows - n_pos
    rank_sum_pos = np.bincount(gid, weights=rank * y_s, minlength=n_groups)
    valid = (n_pos > 0) & (n_neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    auc[~valid] = np.nan
    return auc, n_rows, valid


def auc_score(y_true, y_score) -> float:
    """ROC AUC (NaN if only one class is present)."""
    auc, _, _ = group_auc(y_true, y_score, None)
    return float(auc[0]) if auc.shape[0] else float("nan")


def gauc_score(y_true, y_score, group) -> float:
    """Row-weighted mean of per-group AUC over groups that have both classes (NaN if none has)."""
    auc, n_rows, valid = group_auc(y_true, y_score, group)
    weight = n_rows[valid].sum()
    return float((auc[valid] * n_rows[valid]).sum() / weight) if weight > 0 else float("nan")


def logloss_score(y_true, y_pred, eps: float = LOGLOSS_EPS) -> float:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.clip(np.asarray(y_pred, dtype=np.float64).ravel(), eps, 1.0 - eps)
    if y.shape[0] == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def parse_metric(name: str) -> tuple[str, str | None]:
    """``"AUC@S6"`` -> ``("AUC", "S6")``; ``"AUC"`` -> ``("AUC", None)``."""
    base, _, domain = str(name).partition("@")
    return base, (domain or None)


GAUC_NEEDS_GROUP = ("metric gAUC needs the dataset key `group_id: <column>` naming a meta column that copies the "
                    "user id (feature_cols: {name: group_id, type: meta, preprocess: copy_from(user_id)}, then "
                    "`group_id: group_id`); add both to the dataset config or drop gAUC from `metrics` and `monitor`")


def check_metric_names(names: Iterable[str], domain_names: Sequence[str], need_group: bool = True,
                       where: str = "metrics", has_group: bool = True) -> None:
    """Raise a one-line :class:`UserError` for a metric this package cannot compute (gAUC without a group id
    column included, when ``has_group`` is false)."""
    for name in names:
        base, domain = parse_metric(name)
        if base not in BASE_METRICS:
            raise UserError(f"unknown metric {name!r} in `{where}`{close_matches(base, BASE_METRICS)}; known metrics: "
                            f"{', '.join(BASE_METRICS)}, each optionally per domain as METRIC@DOMAIN")
        if base == "gAUC" and need_group and not has_group:
            raise UserError(GAUC_NEEDS_GROUP)
        if domain is not None and domain not in domain_names:
            raise UserError(f"metric {name!r} in `{where}` names domain {domain!r}{close_matches(domain, domain_names)}"
                            f", which the dataset does not have; its domains are: {', '.join(domain_names)}")


def compute_metrics(metrics: Sequence[str], y_true, y_pred, domain=None, group=None,
                    domain_names: Sequence[str] = (), expand_domains: bool = False) -> "OrderedDict[str, float]":
    """Evaluate metric names such as ``["logloss", "AUC", "gAUC@S1"]``.

    Args:
        metrics: metric names, each ``BASE`` or ``BASE@DOMAIN``.
        y_true, y_pred: labels and predicted probabilities, shape (N,).
        domain: tower index of each row in ``0..K-1`` (needed for per-domain names), shape (N,).
        group: user group ids (needed for gAUC), shape (N,).
        domain_names: display name of each tower index.
        expand_domains: also report every plain metric for every domain (``AUC@<name>`` for all domains).
    """
    names = list(metrics)
    if expand_domains:
        names += [f"{m}@{d}" for m in metrics if parse_metric(m)[1] is None for d in domain_names]
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    out: "OrderedDict[str, float]" = OrderedDict()
    masks: dict[str, np.ndarray] = {}
    for name in names:
        base, dom = parse_metric(name)
        if dom is None:
            sel = slice(None)
        else:
            if domain is None:
                raise ValueError(f"metric {name} needs the domain of every row")
            if dom not in masks:
                masks[dom] = np.asarray(domain).ravel() == list(domain_names).index(dom)
            sel = masks[dom]
        if base == "AUC":
            out[name] = auc_score(y_true[sel], y_pred[sel])
        elif base == "logloss":
            out[name] = logloss_score(y_true[sel], y_pred[sel])
        elif base == "gAUC":
            if group is None:
                raise UserError(GAUC_NEEDS_GROUP)
            out[name] = gauc_score(y_true[sel], y_pred[sel], np.asarray(group).ravel()[sel])
        else:
            check_metric_names([name], domain_names)
    return out
