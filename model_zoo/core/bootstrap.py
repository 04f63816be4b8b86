"""The test split's own sampling error: a cluster bootstrap over users, paired across every run of a dataset.

A leaderboard cell averages a metric over seeds, but every seed is scored on the same fixed test split, so the
spread over seeds carries training randomness only. How much the figure would move on another draw of users from
the same population is the second source of error; it is estimated here by resampling users (clusters: a user's
rows stay together, so the correlation between them is kept) and recomputing each metric on every replicate.

* **Paired across runs.** Replicate ``r`` draws the same users for every run of the same test split: the
  multiplicities come from a generator seeded by :data:`SEED` over the sorted distinct user ids, never from the
  run's seed or row order. The leaderboard subtracts two runs' replicates to get the test-sampling distribution of
  their difference.
* **Exact weighted metrics.** A replicate is the original rows weighted by their user's multiplicity, so AUC is the
  weighted Mann-Whitney statistic (ties count one half), gAUC the row-weighted mean of per-user AUCs over users
  with both classes, logloss the weighted mean; each equals the metric of the rows physically repeated (tested).
* **No user id.** Without a ``group`` column every row is its own cluster (an ordinary row bootstrap).

Notation: ``N`` rows, ``U`` clusters (users), ``R`` replicates.
"""
from __future__ import annotations

import base64
from collections import OrderedDict
from typing import Sequence

import numpy as np

from .metrics import LOGLOSS_EPS, group_auc

REPLICATES = 1000
MIN_REPLICATES = 200
ROW_REPLICATE_BUDGET = 300_000_000  # rows x replicates per run: about 10 s here for 300,000 test rows
SEED = 20241205
_CHUNK_CELLS = 6_000_000  # replicate x row products held at once (float64): bounds memory at about 48 MB a buffer


def replicate_count(n_rows: int) -> int:
    """Replicates for a test split of ``n_rows``: :data:`REPLICATES`, fewer for very large splits (at least
    :data:`MIN_REPLICATES`), so the bootstrap's cost stays about that of scoring the split a few hundred times."""
    return int(min(REPLICATES, max(MIN_REPLICATES, ROW_REPLICATE_BUDGET // max(1, n_rows))))


def cluster_index(group: np.ndarray | None, n_rows: int) -> tuple[np.ndarray, int]:
    """``(index, U)``: each row's cluster in ``0..U-1`` (users in ascending id order; rows when ``group`` is None)."""
    if group is None:
        return np.arange(n_rows, dtype=np.int64), n_rows
    values, index = np.unique(np.asarray(group).ravel(), return_inverse=True)
    return index.astype(np.int64), int(values.shape[0])


def multiplicities(n_clusters: int, start: int, stop: int, seed: int = SEED) -> np.ndarray:
    """How often each cluster is drawn in replicates ``start..stop-1``, shape ``(stop - start, U)``.

    Replicate ``r`` comes from its own generator ``(seed, r)``, so any range of replicates is the same whatever the
    chunking, and every run of a split with the same clusters gets the same draws."""
    out = np.empty((stop - start, n_clusters), dtype=np.float64)
    for i, r in enumerate(range(start, stop)):
        draw = np.random.default_rng([seed, r]).integers(0, n_clusters, n_clusters)
        out[i] = np.bincount(draw, minlength=n_clusters)
    return out


class _Cell:
    """The rows of one leaderboard cell (a domain or all rows), prepared once for every replicate.

    Only the cell's own clusters take part: a domain of few users (or, for the row bootstrap, few rows) costs in
    proportion to its size, not the split's."""

    def __init__(self, y: np.ndarray, s: np.ndarray, cluster: np.ndarray, group: np.ndarray | None):
        from scipy import sparse

        self.clusters, local = np.unique(cluster, return_inverse=True)  # the cell's clusters, ascending
        n_local = len(self.clusters)
        order = np.argsort(s, kind="mergesort")
        y_sorted, local_sorted, s_sorted = y[order], local[order], s[order]
        new_run = np.ones(len(s_sorted), dtype=bool)
        new_run[1:] = s_sorted[1:] != s_sorted[:-1]
        run = np.cumsum(new_run) - 1  # tied scores form one run
        shape = (int(run[-1]) + 1 if len(run) else 0, n_local)
        # (T, U_cell) counts of each cluster's positive / negative rows in each tie run: a replicate's run weights
        # are these times its cluster multiplicities, one sparse product for all replicates of a chunk
        self.pos_by_run = sparse.csr_matrix((y_sorted, (run, local_sorted)), shape=shape)
        self.neg_by_run = sparse.csr_matrix((1.0 - y_sorted, (run, local_sorted)), shape=shape)
        p = np.clip(s, LOGLOSS_EPS, 1 - LOGLOSS_EPS)
        loss = -(y * np.log(p) + (1 - y) * np.log1p(-p))
        self.loss_by_cluster = np.bincount(local, weights=loss, minlength=n_local)
        self.rows_by_cluster = np.bincount(local, minlength=n_local).astype(np.float64)
        self.user_auc = None
        if group is not None:  # per-user AUC is fixed: a replicate only reweights users
            auc, n_rows, valid = group_auc(y, s, group)  # groups ascending: the order of self.clusters
            self.user_auc = (auc * n_rows)[valid], n_rows[valid], valid

    def replicate_values(self, weights_by_cluster: np.ndarray) -> dict[str, np.ndarray]:
        """``{"AUC": (r,), "logloss": (r,), "gAUC": (r,)}`` for cluster multiplicities ``(r, U)``."""
        c_t = np.ascontiguousarray(weights_by_cluster[:, self.clusters].T)  # (U_cell, r)
        pos_run = (self.pos_by_run @ c_t).T  # (r, T): positive weight of each tie run
        neg_run = (self.neg_by_run @ c_t).T
        neg_below = np.cumsum(neg_run, axis=1) - neg_run
        w_pos, w_neg = pos_run.sum(axis=1), neg_run.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {"AUC": np.einsum("rt,rt->r", pos_run, neg_below + 0.5 * neg_run) / (w_pos * w_neg),
                   "logloss": (self.loss_by_cluster @ c_t) / (self.rows_by_cluster @ c_t)}
            if self.user_auc is not None:
                auc_rows, rows, valid = self.user_auc
                c_users = c_t[valid]
                out["gAUC"] = (auc_rows @ c_users) / (rows @ c_users)
        return out


def bootstrap_metrics(y_true, y_pred, domain, group, domain_names: Sequence[str],
                      metrics: Sequence[str] = ("AUC", "gAUC", "logloss"),
                      replicates: int | None = None, seed: int = SEED) -> "OrderedDict[str, np.ndarray]":
    """Every metric overall and per domain on ``replicates`` cluster-bootstrap replicates of the rows.

    Args:
        y_true, y_pred: labels and predicted probabilities, shape (N,).
        domain: each row's domain index in ``0..K-1``, shape (N,).
        group: each row's user id, shape (N,), or None (rows are the clusters; no gAUC).
        domain_names: the K domain names.
        replicates: R; by default :func:`replicate_count` of N.

    Returns:
        ``{"AUC": (R,), "AUC@S0": (R,), ..., "gAUC@S6": (R,)}`` float64 (NaN where a replicate has one class).
    """
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_pred, dtype=np.float64).ravel()
    dom = np.asarray(domain).ravel()
    grp = None if group is None else np.asarray(group).ravel()
    cluster, n_clusters = cluster_index(grp, len(y))
    replicates = replicate_count(len(y)) if replicates is None else int(replicates)
    cells = {"": np.ones(len(y), dtype=bool)}
    cells.update({f"@{name}": dom == k for k, name in enumerate(domain_names)})
    prepared = {key: _Cell(y[m], s[m], cluster[m], None if grp is None else grp[m])
                for key, m in cells.items() if m.any()}
    names = [m for m in metrics if m != "gAUC" or grp is not None]
    out: OrderedDict[str, np.ndarray] = OrderedDict(
        (f"{m}{key}", np.full(replicates, np.nan)) for key in cells for m in names)
    step = max(1, min(replicates, _CHUNK_CELLS // max(1, len(y))))
    for start in range(0, replicates, step):
        stop = min(replicates, start + step)
        weights = multiplicities(n_clusters, start, stop, seed)
        for key, cell in prepared.items():
            for m, values in cell.replicate_values(weights).items():
                if m in names:
                    out[f"{m}{key}"][start:stop] = values
    return out


def cell_counts(y_true, domain, group, domain_names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per domain and ``Overall``: rows, positives, negatives and users (with both classes: the users gAUC counts;
    ``None`` without a user id)."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    dom = np.asarray(domain).ravel()
    grp = None if group is None else np.asarray(group).ravel()
    out = {}
    for name, mask in [("Overall", np.ones(len(y), dtype=bool))] + [(n, dom == k) for k, n in enumerate(domain_names)]:
        pos = int(y[mask].sum())
        # the users gAUC averages over: group_auc's own test of "both classes"
        users = None if grp is None else int(group_auc(y[mask], np.zeros(int(mask.sum())), grp[mask])[2].sum())
        out[name] = {"rows": int(mask.sum()), "positives": pos, "negatives": int(mask.sum()) - pos, "users": users}
    return out


def encode(values: np.ndarray) -> str:
    """Replicates as base64 float32 (a run's result JSON keeps 1,000 of them per cell in about 5 kB)."""
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")


def decode(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float64)
