"""One experiment, FuxiCTR style: resolve the config, build the data, train, evaluate, report.

This is the one run script of the package (``mdl-bench run-expid``); suites call :func:`run_expid` too.
"""
from __future__ import annotations

import io
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import distributed
from mdl_bench.model_zoo.core import bootstrap, collectives, metrics as metric_lib
from .data.build import ensure_dataset, file_lock, load_feature_map
from mdl_bench.kernel.errors import UserError
from mdl_bench.kernel.paths import check_writable_dir
from .report import domain_table
from .resolved import ResolvedRun, resolve, resolve_run  # noqa: F401 (resolve: the runner's API)

RESULT_SUFFIX = ".result.json"


@dataclass
class RunResult:
    """What a finished run reports; JSON-serialisable via :meth:`to_dict`."""

    expid: str
    model: str
    dataset_id: str
    seed: int
    domain_names: list
    valid: dict
    test: dict
    oracle: dict
    test_rows: dict
    test_positives: dict
    best_epoch: int | None
    epochs_run: int
    train_seconds: float
    train_samples_per_second: float
    wall_seconds: float
    num_parameters: int
    checkpoint: str
    params: dict = field(default_factory=dict)
    world_size: int = 1
    valid_history: list = field(default_factory=list)  # every validation during training (the model's)
    stopped_by: str | None = None  # a validation callback's reason for ending training early (a pruned trial)
    # per domain and Overall: rows, positives, negatives, users with both classes (what a cell's figure rests on)
    test_counts: dict = field(default_factory=dict)
    # the test split's sampling error: cluster-bootstrap replicates of every test metric, paired across the runs
    # of a dataset ({"replicates": R, "seed": s, "cluster": "user" | "row", "cells": {"AUC@S0": base64 f32}})
    test_bootstrap: dict = field(default_factory=dict)
    # embedding_parameters, dense_parameters, train_flops_per_row (MultiDomainModel.capacity, on one batch)
    capacity: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        if not self.test:  # `evaluate_test: false` (a tuning trial): the validation split only
            values = " - ".join(f"{k}: {v:.4f}" for k, v in self.valid.items() if "@" not in k)
            stopped = f"; stopped: {self.stopped_by}" if self.stopped_by else ""
            return (f"Validation results (test not evaluated): {self.expid} ({self.model}) on {self.dataset_id}, "
                    f"seed {self.seed}; best epoch {self.best_epoch} of {self.epochs_run}{stopped}\n{values}")
        title = (f"Test results: {self.expid} ({self.model}) on {self.dataset_id}, seed {self.seed}; "
                 f"best epoch {self.best_epoch}, {self.train_samples_per_second:,.0f} train samples/s")
        cells = (self.test_bootstrap or {}).get("cells") or {}
        errors = {name: float(np.nanstd(bootstrap.decode(text), ddof=1)) for name, text in cells.items()
                  if name.startswith("AUC")}
        source = (f"bootstrap over {'users' if self.test_bootstrap.get('cluster') == 'user' else 'rows'} "
                  f"({self.test_bootstrap.get('replicates')} replicates)") if errors else ""
        return domain_table(self.test, self.oracle, self.test_rows, self.test_positives, self.domain_names, title,
                            errors or None, source)


def check_paths(params: dict) -> None:
    """Every folder a run writes in, checked before it starts: checkpoints and logs, the built dataset and (for
    synthetic data not generated yet) the raw files."""
    check_writable_dir(Path(params["model_root"]) / params["dataset_id"], "model_root",
                       "pass --model-root DIR (or set MDL_BENCH_HOME) to a writable folder")
    if params.get("data_root") and params.get("data_format", "csv") == "csv":
        check_writable_dir(params["data_root"], "data_root",
                           "pass --data-root DIR (or set MDL_BENCH_HOME) to a writable folder")
    if params.get("synth") is not None and params.get("train_data") and not os.path.exists(params["train_data"]):
        # the generator writes a sibling temporary folder, then renames it into place
        raw_dir = Path(params["train_data"]).parent
        fix = "set MDL_BENCH_HOME to a writable folder or point train_data/valid_data/test_data elsewhere"
        check_writable_dir(raw_dir, "the raw data folder", fix)
        if raw_dir.exists():
            check_writable_dir(raw_dir.parent, "the folder holding the raw data", fix)


def check_inputs(feature_map, params: dict) -> None:
    """A model must see at least one feature besides the domain (its router): with none, every domain's AUC is
    0.5 by construction and the run would report it as a result."""
    inputs = [name for name, spec in feature_map.features.items()
              if spec.get("type") != "meta" and name != params.get("domain_field")]
    if not inputs:
        raise UserError(f"dataset {params['dataset_id']!r} gives the model no input feature besides the domain field "
                        f"{params.get('domain_field')!r}; add categorical or numeric columns to feature_cols (or "
                        f"check use_features / active: false)")


def make_loaders(feature_map, paths: dict, params: dict, rank: int = 0, world_size: int = 1):
    """Train, valid and test loaders: in memory for a split built as one file, streamed for one built in parts."""
    from .data.loader import InMemoryLoader, StreamingLoader

    batch_size = int(params.get("batch_size", 4096))
    seed = int(params.get("seed") or 0)
    common = dict(batch_size=batch_size, seed=seed, rank=rank, world_size=world_size)
    streamed = dict(num_workers=int(params.get("num_workers") or 0),
                    shuffle_buffer=params.get("shuffle_buffer", 1_000_000))

    def loader(split: str, shuffle: bool):
        if os.path.isdir(paths[split]):
            return StreamingLoader(feature_map, paths[split], split=split, shuffle=shuffle, **common, **streamed)
        return InMemoryLoader(feature_map, paths[split], split=split, shuffle=shuffle, **common)

    return loader("train", params.get("shuffle", True)), loader("valid", False), loader("test", False)


def oracle_metrics(model, loader, params: dict) -> dict:
    """Metrics of the stored true probability (``oracle_field``) on a split, overall and per domain."""
    field_name = params.get("oracle_field")
    if not field_name or field_name not in model.feature_map.features:
        return {}
    group_id = model.feature_map.group_id
    label_name = model.feature_map.labels[0]
    columns = loader.read_columns([field_name, model.domain_field, label_name] + ([group_id] if group_id else []))
    domain = model.domain_lookup.cpu()[columns[model.domain_field].long()].numpy()
    group = columns.get(group_id) if group_id else None
    return dict(metric_lib.compute_metrics(
        ["logloss", "AUC", "gAUC"] if group is not None else ["logloss", "AUC"], columns[label_name].numpy(),
        columns[field_name].double().numpy(), domain, None if group is None else group.numpy(),
        model.domain_names, expand_domains=True))


def _test_error(arrays: dict, names: list) -> tuple[dict, dict]:
    """What each test cell rests on (rows, clicks, users) and its cluster-bootstrap replicates over users."""
    group = arrays.get("group")
    counts = bootstrap.cell_counts(arrays["y_true"], arrays["domain"], group, names)
    replicates = bootstrap.bootstrap_metrics(arrays["y_true"], arrays["y_pred"], arrays["domain"], group, names)
    first = next(iter(replicates.values()), np.zeros(0))
    return counts, {"replicates": int(first.shape[0]), "seed": bootstrap.SEED,
                    "cluster": "row" if group is None else "user",
                    "cells": {name: bootstrap.encode(values) for name, values in replicates.items()}}


def run_expid(expid: str, config_dir=None, overrides: dict | None = None,
              step_callback: Callable[[dict], None] | None = None, quiet: bool = False,
              origin: str | dict | None = None,
              validation_callback: Callable[[dict], str | None] | None = None) -> RunResult:
    """Resolve ``expid`` (:func:`~mdl_bench.benchmark.resolved.resolve_run`) and run it (:func:`run_resolved`)."""
    return run_resolved(resolve_run(expid, config_dir, overrides, origin), step_callback=step_callback, quiet=quiet,
                        validation_callback=validation_callback)


def run_resolved(run: ResolvedRun, step_callback: Callable[[dict], None] | None = None, quiet: bool = False,
                 validation_callback: Callable[[dict], str | None] | None = None) -> RunResult:
    """Train and evaluate one resolved run; return its results (also written next to the checkpoint).

    ``validation_callback`` gets every validation during training (``MultiDomainModel.valid_history``'s entries)
    and may stop training by returning a reason (a tuner pruning a trial). With ``evaluate_test: false`` in the
    config the test split is never read (tuning trials select on validation; the test is touched once, by the
    final runs). With ``nproc: N`` (N > 1) the N data-parallel ranks are started here and each is handed ``run``.

    The run holds a lock on its log file ``<model_root>/<dataset_id>/<model_id>.log`` while it runs: a second
    process with the same ``model_id`` (the same files) is refused instead of overwriting, or reading back, this
    run's checkpoint."""
    started = time.time()
    params = run.params
    nproc = params.get("nproc") or 1
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise UserError(f"nproc must be a positive number of data-parallel processes, got {nproc!r}")
    launched = distributed.env_info()
    if launched.active and params.get("nproc") and nproc != launched.world_size:
        raise UserError(f"the config says nproc: {nproc} but torchrun started {launched.world_size} processes; "
                        f"drop `nproc` or make the two agree")
    if nproc > 1 and not launched.active:  # start the ranks here; each runs this function under DDP
        if validation_callback is not None:
            raise UserError("a tuning trial cannot be pruned across data-parallel processes; drop nproc from its "
                            "config")
        return distributed.launch(run_resolved, (run,), {"quiet": quiet}, nproc=nproc, step_callback=step_callback)
    rank = distributed.init(params)  # torchrun launch: join the group; otherwise rank 0 of 1
    if not rank.is_main:
        return _run(run, rank, started, step_callback, quiet, validation_callback)
    run_dir = Path(params["model_root"]) / params["dataset_id"]
    check_paths(params)
    # the run's own log file is the lock (FuxiCTR appends to it; an advisory lock leaves it as it is)
    with file_lock(run_dir / f"{run.model_id}.log", busy=(
            f"run {run.model_id} is already running in another process (it writes "
            f"{run_dir / run.model_id}.model); wait for it to finish, or change the config or --seed")):
        return _run(run, rank, started, step_callback, quiet, validation_callback)


def _remove_run_leftovers(run_dir: Path, model_id: str) -> None:
    """Temporary files a killed run of ``model_id`` left (a checkpoint or result being written). The caller holds
    the run's lock, so no live process of this run can own them."""
    patterns = (f"{model_id}.model.tmp-*", f".{model_id}.result.json.*.tmp", f"{model_id}.*.json.tmp-*")
    stale = [p for pattern in patterns for p in run_dir.glob(pattern) if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        logging.info(f"Removed leftovers of a killed run of {model_id}: {', '.join(sorted(p.name for p in stale))}")


def _start_log(params: dict, rank, quiet: bool) -> None:
    """Rank 0 logs to the run's log file (FuxiCTR's ``set_logger``) and, unless ``quiet``, to the console; the
    other ranks report warnings only. Quiet: ``set_logger`` logs its first line before a handler can be lowered,
    so its console handler is made on a throw-away stream, then pointed at the console, warnings only."""
    from mdl_bench.model_zoo.core.fuxictr_api import print_to_json, set_logger

    if rank.is_main:
        real = sys.stderr
        if quiet:
            sys.stderr = io.StringIO()
        try:
            set_logger(params)
        finally:
            sys.stderr = real
        for handler in logging.getLogger().handlers:
            if quiet and not isinstance(handler, logging.FileHandler):
                if type(handler) is logging.StreamHandler:
                    handler.setStream(real)
                handler.setLevel(logging.WARNING)
        _remove_run_leftovers(Path(params["model_root"]) / params["dataset_id"], params["model_id"])
    else:  # one log file, written by rank 0
        logging.basicConfig(level=logging.WARNING, force=True,
                            format=f"%(asctime)s rank {rank.rank} %(levelname)s %(message)s")
    logging.info("Params: " + print_to_json(params))


def _build_and_fit(run: ResolvedRun, rank, step_callback, validation_callback):
    """Data, model and training (every rank); returns ``(model, valid loader, test loader or None)``."""
    from mdl_bench.model_zoo.core.fuxictr_api import seed_everything
    from .measure.epochs import attach_ia_recorder

    params = run.params
    seed_everything(seed=run.seed)
    paths = ensure_dataset(params)
    feature_map = load_feature_map(params)
    check_inputs(feature_map, params)
    model = run.model_class(feature_map, **params)
    distributed.wrap(model)
    if step_callback is not None and rank.is_main:
        model.step_callbacks.append(step_callback)
    if validation_callback is not None:
        model.validation_callbacks.append(validation_callback)
    with_test = params.get("evaluate_test", True) is not False
    logging.info(f"Total number of parameters: {model.num_parameters():,}.")
    train_gen, valid_gen, test_gen = make_loaders(feature_map, paths, params, rank.rank, rank.world_size)
    for split, gen in (("valid", valid_gen), ("test", test_gen))[:2 if with_test else 1]:
        if gen.num_samples == 0:  # metrics of no rows are NaN: refuse rather than report them
            raise UserError(f"the {split} split of dataset {params['dataset_id']!r} has no rows ({split}_data "
                            f"{params.get(f'{split}_data')}); give it rows, or point {split}_data at a file with rows")
    attach_ia_recorder(model, params, train_gen, valid_gen)  # `record_ia: true`: IA at every epoch end (figure 2)
    model.fit(train_gen, validation_data=valid_gen, **params)
    if not model.checkpoint_written:  # fit reloads the checkpoint file: it must be this run's, never an older one
        raise UserError(f"run {run.model_id} trained but wrote no checkpoint, so its weights cannot be told "
                        f"from an older file at {model.checkpoint}; train at least one epoch")
    return model, valid_gen, test_gen if with_test else None


def _evaluate_test(model, test_gen, params: dict, rank) -> dict:
    """The test split, touched once: metrics, oracle metrics, rows and clicks per domain, and (rank 0) what each
    cell rests on and its bootstrap replicates; the :class:`RunResult` fields they fill."""
    names = model.domain_names
    logging.info("******** Test evaluation ********")
    test_arrays = model.predict_arrays(test_gen)
    test_logs = model.evaluate_arrays(test_arrays)
    logging.info("[Metrics] " + " - ".join(f"{k}: {v:.6f}" for k, v in test_logs.items()))
    counts = np.bincount(test_arrays["domain"], minlength=len(names))
    positives = np.bincount(test_arrays["domain"], weights=test_arrays["y_true"], minlength=len(names))
    out = dict(test=dict(test_logs), oracle=oracle_metrics(model, test_gen, params),
               test_rows={**{n: int(c) for n, c in zip(names, counts)}, "Overall": int(counts.sum())},
               test_positives={**{n: int(p) for n, p in zip(names, positives)}, "Overall": int(positives.sum())},
               test_counts={}, test_bootstrap={})
    if rank.is_main:
        out["test_counts"], out["test_bootstrap"] = _test_error(test_arrays, names)
    return out


def _run(run: ResolvedRun, rank, started: float, step_callback, quiet: bool, validation_callback=None) -> RunResult:
    """The run itself (every rank): log, data, model, fit, evaluate, and the result file (rank 0)."""
    params = run.params
    _start_log(params, rank, quiet)
    model, valid_gen, test_gen = _build_and_fit(run, rank, step_callback, validation_callback)
    logging.info("****** Validation evaluation ******")
    valid_logs = model.evaluate(valid_gen)
    if test_gen is not None:
        test = _evaluate_test(model, test_gen, params, rank)
    else:
        logging.info("Test split not evaluated (evaluate_test: false)")
        test = dict(test={}, oracle={}, test_rows={}, test_positives={}, test_counts={}, test_bootstrap={})
    # after training and evaluation, so that counting it cannot move a figure (the model is restored anyway)
    capacity = model.capacity(next(iter(valid_gen))) if rank.is_main else {}
    result = RunResult(
        expid=run.expid, model=run.model, dataset_id=run.dataset_id, seed=run.seed, domain_names=model.domain_names,
        valid=dict(valid_logs), valid_history=list(model.valid_history), stopped_by=model.stopped_by,
        best_epoch=model.best_epoch, epochs_run=model.state.epochs_run,
        train_seconds=round(model.train_seconds, 3),
        train_samples_per_second=model.train_samples_per_second * rank.world_size,
        wall_seconds=round(time.time() - started, 2), num_parameters=model.num_parameters(),
        checkpoint=model.checkpoint, params=params, world_size=rank.world_size, capacity=capacity, **test)
    if rank.is_main:
        result_path = Path(model.checkpoint).with_suffix(RESULT_SUFFIX)
        tmp = result_path.with_name(f".{result_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result.to_dict(), indent=2, default=str))
        os.replace(tmp, result_path)  # a reader sees the old result or the new one, never half of one
        logging.info(f"Results written to {result_path}")
    collectives.barrier()
    return result
