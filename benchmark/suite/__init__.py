"""Benchmark suites: a YAML file naming datasets, expids, seeds and overrides, run into the results store.

A suite file (``config/suites/<name>.yaml``; ``--suite`` takes a name or a path)::

    name: quick                      # defaults to the file name
    description: one line
    datasets: [kuairand_like]        # optional; each expid runs on each (default: the expid's own dataset)
    seeds: [2024]                    # the replicates of every row
    overrides: {epochs: 1}           # global overrides of the resolved configs
    tuner_space: {}                  # optional, FuxiCTR autotuner semantics (a list = grid values, a scalar = fixed)
    store: path/to/results.sqlite    # optional; relative to the suite file; default ${MDL_BENCH_HOME}/results.sqlite
    models_from: [my_models]         # optional; folders (relative to the suite file) or modules of external models
    expids:                          # rows; a name, or a mapping:
      - MMoE_default
      - expid: Crocodile_default
        label: Crocodile (M=2)       # row name (default: the model's display_name)
        group: Crocodile             # row group (default: the model class's `group`)
        info: {Embedding: ME}        # extra leading columns (table 5's components)
        overrides: {num_embeddings: 2}
        tuner_space: {cov_alpha: [1.e-5, 1.e-4]}
        seeds: [1, 2]
    leaderboard:
      metrics: [AUC, gAUC]           # column metrics (per domain and Overall)
      split: test                    # test | valid
      domains: all                   # all, or a list of domain names and/or Overall
      std: false                     # also show the standard deviation over seeds
      reference: SharedBottom_default  # the row every other is compared with (default: Shared Bottom; none: no
                                     # comparisons)
      digits: 4
      group_order: [...]             # default: the paper's (Single Domain, MTL (SE), MTL (ME), MDL, Crocodile)
      lift: [{base: <row label or expid>, metrics: [AUC, gAUC], domain: Overall, title: ...}]
      plots: [{name, x, metrics, series, lift_over, xscale, title}]   # PNG line plots (figure 8)

Every (expid, dataset, tuner point) is one leaderboard row, a *variant*, identified by the hash of its fully
resolved config (:func:`~mdl_bench.benchmark.resolved.config_hash`); each seed of a variant is one *run*
``(hash, seed, code)``, where ``code`` is the fingerprint of the model's code (:mod:`~mdl_bench.benchmark.codeid`).
Running a suite skips the runs already in the store; a changed config has a new hash and runs, and a run made by
other code (an *outdated* run: its model, the layers it uses or the run path changed since) runs again.

Everything is checked before the first run starts: unknown suite keys, expids, datasets, models, config keys
and metrics are one-line errors naming the offender and the known names. Then each dataset the pending runs need
is checked (built if it is not yet) once (:func:`prepare_datasets`): a data error is the dataset's, so it stops
the suite as one error instead of failing every run the same way.

Execution: runs go one after another in this process (``jobs=1``), or in ``jobs`` worker processes, each
storing its own runs (:class:`~mdl_bench.benchmark.store.Store` commits one transaction per run). One progress
bar spans the suite (epochs of all pending runs), showing the current run, its epoch and the ETA; each run's
FuxiCTR log goes to its log file ``<model_root>/<dataset_id>/<model_id>.log``. A run's ``model_id`` is
``<expid>__s<seed>__<hash8>__<code8>``, so seeds, configs and code revisions of one expid never share a
checkpoint or log.

Extension points kept small on purpose: external models (``models_from:``) are registered by :meth:`Suite.plan`
before it resolves the expids; another launcher (``--nproc``) only replaces
:func:`execute_run`'s call of :func:`run_captured` for one run.

The modules: :mod:`.plan` (the suite file and its plan), :mod:`.execute` (one run into the store),
:mod:`.progress` (the bar and the outcome), :mod:`.scheduler` (claims, the sequential and worker-pool drivers,
:func:`run_suite`) and :mod:`.rerun`. Their public names are imported here.
"""
from __future__ import annotations

from .execute import execute_run, run_captured
from .plan import (Entry, Plan, PlannedRun, Suite, Variant, find_suite, known_suites, load_suite, run_model_id,
                   tuner_points)
from .progress import SuiteOutcome
from .rerun import rerun
from .scheduler import prepare_datasets, run_suite

__all__ = ["Entry", "Plan", "PlannedRun", "Suite", "SuiteOutcome", "Variant", "execute_run", "find_suite",
           "known_suites", "load_suite", "prepare_datasets", "rerun", "run_captured", "run_model_id", "run_suite",
           "tuner_points"]
