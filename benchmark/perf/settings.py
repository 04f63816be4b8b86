"""What one ``mdl-bench perf`` run measures and how much: :class:`PerfConfig` and the ``--quick`` settings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass
class PerfConfig:
    """What one ``perf`` run measures and how much.

    Args:
        models: registered model names (``None``: all).
        expid_suffix: the expid of model ``X`` is ``X + expid_suffix`` (``_default``: the paper-like sizes).
        dataset_id: run every expid on this dataset instead of its own (``None``: the expid's, kuairand_like).
        batches, repeats: training batches per measured epoch (at least; see ``min_epoch_seconds``), and epochs
            (= bare passes) measured per model.
        min_epoch_seconds: a fast model gets more batches per measured epoch, up to about this many seconds, so
            that per-epoch costs (a new permutation, the loop's set-up) are amortised as in a real epoch (~100
            batches of the default data) rather than over a handful of batches.
        eval_batches: test batches of the evaluation measurement.
        cov_repeats: repeats of the direct CovLoss forward+backward timing.
        matched_batches: batches per epoch of the matched DNN/MMoE runs (``None``: full epochs, as the stock side).
        matched_epochs: epochs of the matched runs, on both sides.
        stock: run FuxiCTR's stock pipeline (a child process with Ray; minutes).
        stock_bare_batches: batches of the stock models' bare loop.
        gauc_rows, gauc_users: size of the gAUC comparison.
        build_rows: raw rows (train 80%, valid 10%, test 10%) of the build comparison.
        build_fuxictr: also run FuxiCTR's build_dataset (minutes; Ray) on them.
        scaling_tables, scaling_domains: the M and K values of the scaling curves.
        scaling_fixed_tables: M of the K curve.
        scaling_steps: measured steps per scaling point.
        scaling_rows: training rows of each K-domain synthetic dataset.
        library_path: a checkout of Scenario-Wise Rec to measure beside this package (:mod:`.library`);
            ``None``: that comparison is skipped.
        quick: recorded in the output (set by :func:`quick_config`).
    """

    models: list[str] | None = None
    expid_suffix: str = "_default"
    dataset_id: str | None = None
    batches: int = 10
    repeats: int = 3
    min_epoch_seconds: float = 2.0
    eval_batches: int = 10
    cov_repeats: int = 10
    matched_batches: int | None = None
    matched_epochs: int = 3
    stock: bool = True
    stock_bare_batches: int = 10
    gauc_rows: int = 1_000_000
    gauc_users: int = 10_000
    build_rows: int = 1_000_000
    build_fuxictr: bool = True
    scaling_tables: Sequence[int] = (1, 2, 4, 8)
    scaling_domains: Sequence[int] = (2, 4, 8, 16, 32, 64)
    scaling_fixed_tables: int = 4
    scaling_steps: int = 8
    scaling_rows: int = 40_000
    library_path: str | None = None
    quick: bool = False


QUICK_MODELS = ["Crocodile", "ME_MMoE", "MMoE", "SharedBottom"]


def quick_config(**overrides) -> PerfConfig:
    """The ``--quick`` settings: about 90 s on 2 cores; no stock FuxiCTR training and no FuxiCTR build."""
    values = dict(models=list(QUICK_MODELS), batches=4, repeats=2, min_epoch_seconds=0.8, eval_batches=4,
                  cov_repeats=5,
                  matched_batches=4, matched_epochs=2, stock=False, gauc_rows=300_000, gauc_users=3_000,
                  build_rows=100_000, build_fuxictr=False, scaling_tables=(1, 4, 8), scaling_domains=(2, 8, 64),
                  scaling_steps=3, scaling_rows=20_000, quick=True)
    values.update(overrides)
    return PerfConfig(**values)
