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
      std: false                     # show +- standard deviation over seeds
      digits: 4
      group_order: [...]             # default: the paper's (Single Domain, MTL (SE), MTL (ME), MDL, Crocodile)
      lift: [{base: <row label or expid>, metrics: [AUC, gAUC], domain: Overall, title: ...}]
      plots: [{name, x, metrics, series, lift_over, xscale, title}]   # PNG line plots (figure 8)

Every (expid, dataset, tuner point) is one leaderboard row, a *variant*, identified by the hash of its fully
resolved config (:func:`~mdl_bench.benchmark.store.config_hash`); each seed of a variant is one *run*
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
:func:`execute_run`'s call of :func:`run_resolved` for one run.
"""
from __future__ import annotations

import contextlib
import copy
import io
import itertools
import logging
import math
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from mdl_bench.model_zoo.core.errors import UserError, close_matches
from .paths import expand_path, packaged_config_dir
from .procs import die_with_parent
from .codeid import code_fingerprint
from .store import (Store, check_store_writable, config_hash, git_state, library_versions, portable_config,
                    store_path)

SUITE_KEYS = ("name", "description", "datasets", "expids", "seeds", "overrides", "tuner_space", "store",
              "leaderboard", "models_from")
ENTRY_KEYS = ("expid", "label", "group", "info", "overrides", "tuner_space", "seeds")
LEADERBOARD_KEYS = ("metrics", "split", "domains", "std", "digits", "group_order", "lift", "plots", "title")
LIFT_KEYS = ("base", "metrics", "domain", "title")
PLOT_KEYS = ("name", "x", "metrics", "series", "lift_over", "xscale", "title", "domain", "xlabel")
SPLITS = ("test", "valid")
# Dataset keys that change the built data: a suite overriding one builds that variant in its own folder.
BUILD_KEYS = ("feature_cols", "label_col", "min_categr_count", "domain_field", "domains", "group_id", "oracle_field",
              "data_block_size")
# Dataset keys a suite may not override (they name the raw data): make a dataset block instead.
RAW_KEYS = ("synth", "train_data", "valid_data", "test_data", "data_format")


# ================================================================================================ the suite
@dataclass
class Entry:
    """One item of a suite's ``expids`` list."""

    expid: str
    label: str | None = None
    group: str | None = None
    info: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)
    tuner_space: dict = field(default_factory=dict)
    seeds: list | None = None


@dataclass
class Variant:
    """One leaderboard row: an entry on one dataset at one tuner point; its runs are its seeds."""

    index: int
    entry: Entry
    expid: str
    dataset_id: str
    tuned: dict
    params: dict
    config_hash: str
    seeds: list
    model: str
    group: str
    display_name: str
    series: str
    label: str = ""
    code: str = ""  # fingerprint of the model's code now (codeid); "" when the model cannot be imported

    @property
    def short_hash(self) -> str:
        return self.config_hash[:8]


@dataclass
class PlannedRun:
    """One run: a variant and a seed, with its final resolved params (seed and model_id set)."""

    variant: Variant
    seed: int
    params: dict

    @property
    def key(self) -> tuple[str, int, str]:
        """The run's identity in the store: config hash, seed and code fingerprint."""
        return (self.variant.config_hash, self.seed, self.variant.code)

    @property
    def expid(self) -> str:
        return self.variant.expid

    @property
    def model_id(self) -> str:
        return self.params["model_id"]

    @property
    def epochs(self) -> int:
        return max(1, int(self.params.get("epochs") or 1))

    @property
    def log_file(self) -> str:
        return os.path.join(self.params["model_root"], self.params["dataset_id"], self.model_id + ".log")

    def describe(self) -> str:
        return f"{self.variant.label} ({self.expid}, seed {self.seed})"


@dataclass
class Plan:
    suite: "Suite"
    variants: list
    runs: list

    def unique_runs(self) -> list:
        seen, out = set(), []
        for run in self.runs:
            if run.key not in seen:
                seen.add(run.key)
                out.append(run)
        return out


def _as_list(value, what: str, where: str) -> list:
    if value is None:
        return []
    if isinstance(value, (str, int, float)):
        return [value]
    if not isinstance(value, list):
        raise UserError(f"{where}: `{what}` must be a list; fix the suite file")
    return value


def _seeds(value, where: str) -> list | None:
    if value is None:
        return None
    seeds = _as_list(value, "seeds", where)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise UserError(f"{where}: `seeds` must be a non-empty list of integers, got {value!r}; fix the suite file")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{where}: `seeds` lists a seed twice; list each once")
    return seeds


def _mapping(value, what: str, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: `{what}` must be a mapping of key: value; fix the suite file")
    return dict(value)


def _check_keys(data: dict, allowed, where: str, what: str) -> None:
    for key in data:
        if key not in allowed:
            raise UserError(f"{where}: unknown {what} key {key!r}{close_matches(str(key), allowed)}; known keys: "
                            f"{', '.join(allowed)}")


def tuner_points(space: dict) -> list[dict]:
    """FuxiCTR autotuner semantics: a list value is a grid axis, a scalar is fixed; the grid in key order."""
    if not space:
        return [{}]
    keys = list(space)
    axes = [v if isinstance(v, list) else [v] for v in space.values()]
    for key, axis in zip(keys, axes):
        if not axis:
            raise UserError(f"tuner_space key {key!r} has an empty list; give at least one value")
    return [dict(zip(keys, values)) for values in itertools.product(*axes)]


class Suite:
    """A parsed and structurally checked suite file (expids, datasets and metrics are checked by :meth:`plan`)."""

    def __init__(self, data: dict, path: Path | None = None):
        self.path = path
        where = f"suite {path}" if path else "suite"
        if not isinstance(data, dict):
            raise UserError(f"{where} must be a YAML mapping (name, expids, seeds, ...); fix the file")
        _check_keys(data, SUITE_KEYS, where, "suite")
        self.name = str(data.get("name") or (path.stem if path else "suite"))
        self.where = f"suite {self.name!r}" + (f" ({path})" if path else "")
        self.description = str(data.get("description") or "")
        self.datasets = [str(d) for d in _as_list(data.get("datasets"), "datasets", self.where)]
        self.seeds = _seeds(data.get("seeds"), self.where)
        self.overrides = _mapping(data.get("overrides"), "overrides", self.where)
        self.tuner_space = _mapping(data.get("tuner_space"), "tuner_space", self.where)
        self.store = data.get("store")
        if self.store is not None and path is not None:
            expanded = Path(expand_path(str(self.store)))
            self.store = str(expanded if expanded.is_absolute() else (path.parent / expanded))
        from mdl_bench.model_zoo import normalise_location

        self.models_base = path.parent if path else None  # relative models_from folders start here
        self.models_from = [normalise_location(loc, self.models_base)
                            for loc in _as_list(data.get("models_from"), "models_from", self.where)]
        expids = data.get("expids")
        if not isinstance(expids, list) or not expids:
            raise UserError(f"{self.where}: `expids` must be a non-empty list of expids (or mappings with `expid:`); "
                            f"fix the suite file")
        self.entries = [self._entry(item) for item in expids]
        self.leaderboard = self._leaderboard(_mapping(data.get("leaderboard"), "leaderboard", self.where))

    def _entry(self, item) -> Entry:
        if isinstance(item, str):
            return Entry(expid=item)
        if not isinstance(item, dict) or not isinstance(item.get("expid"), str):
            raise UserError(f"{self.where}: each item of `expids` is an expid or a mapping with `expid:`, got "
                            f"{item!r}; fix the suite file")
        where = f"{self.where}, expid {item['expid']}"
        _check_keys(item, ENTRY_KEYS, where, "expid entry")
        return Entry(expid=item["expid"], label=None if item.get("label") is None else str(item["label"]),
                     group=None if item.get("group") is None else str(item["group"]),
                     info=_mapping(item.get("info"), "info", where),
                     overrides=_mapping(item.get("overrides"), "overrides", where),
                     tuner_space=_mapping(item.get("tuner_space"), "tuner_space", where),
                     seeds=_seeds(item.get("seeds"), where))

    def _leaderboard(self, data: dict) -> dict:
        where = f"{self.where}, leaderboard"
        _check_keys(data, LEADERBOARD_KEYS, where, "leaderboard")
        out = {"metrics": [str(m) for m in _as_list(data.get("metrics", ["AUC", "gAUC"]), "metrics", where)],
               "split": str(data.get("split", "test")), "std": bool(data.get("std", False)),
               "digits": int(data.get("digits", 4)), "title": data.get("title"),
               "group_order": [str(g) for g in _as_list(data.get("group_order"), "group_order", where)],
               "domains": data.get("domains", "all")}
        if out["split"] not in SPLITS:
            raise UserError(f"{where}: split {out['split']!r} is not one of {', '.join(SPLITS)}; fix the suite file")
        if out["domains"] != "all":
            out["domains"] = [str(d) for d in _as_list(out["domains"], "domains", where)]
        out["lift"] = []
        for spec in _as_list(data.get("lift"), "lift", where):
            spec = _mapping(spec, "lift", where)
            _check_keys(spec, LIFT_KEYS, where + ", lift", "lift")
            if not spec.get("base"):
                raise UserError(f"{where}: each `lift` entry needs `base:` (the label or expid of the base row)")
            out["lift"].append({"base": str(spec["base"]), "domain": str(spec.get("domain", "Overall")),
                                "metrics": [str(m) for m in _as_list(spec.get("metrics", out["metrics"]),
                                                                     "metrics", where)],
                                "title": spec.get("title")})
        out["plots"] = []
        for spec in _as_list(data.get("plots"), "plots", where):
            spec = _mapping(spec, "plots", where)
            _check_keys(spec, PLOT_KEYS, where + ", plots", "plot")
            for key in ("name", "x"):
                if not spec.get(key):
                    raise UserError(f"{where}: each `plots` entry needs `{key}:`; fix the suite file")
            out["plots"].append({"name": str(spec["name"]), "x": str(spec["x"]),
                                 "metrics": [str(m) for m in _as_list(spec.get("metrics", ["gAUC"]), "metrics",
                                                                      where)],
                                 "series": [str(s) for s in _as_list(spec.get("series"), "series", where)],
                                 "lift_over": spec.get("lift_over"), "xscale": str(spec.get("xscale", "linear")),
                                 "title": spec.get("title"), "domain": str(spec.get("domain", "Overall")),
                                 "xlabel": spec.get("xlabel")})
        return out

    # -------------------------------------------------------------------------------------- the plan
    def plan(self, config_dir=None, extra_overrides: dict | None = None, strict: bool = True) -> Plan:
        """Resolve every variant and run. ``strict`` (for running) checks models and keys through
        :func:`~mdl_bench.benchmark.runner.resolve`; the leaderboard uses ``strict=False`` so that rows of models
        that are not importable now still find their stored runs."""
        from mdl_bench.model_zoo.core import metrics as metric_lib
        from .config import ConfigSet
        from .data.build import domain_names
        from .runner import resolve
        from mdl_bench.model_zoo import add_models_from

        add_models_from(self.models_from, self.models_base)
        config = ConfigSet(config_dir)
        for dataset in self.datasets:
            if dataset not in config.datasets:
                raise UserError(f"{self.where}: unknown dataset {dataset!r}{close_matches(dataset, config.datasets)}; "
                                f"known datasets: {', '.join(sorted(config.datasets))}")
        for entry in self.entries:
            if entry.expid not in config.models:
                hint = "" if config_dir else " (blocks of your own: pass --config DIR, their folder)"
                raise UserError(f"{self.where}: unknown expid {entry.expid!r}{close_matches(entry.expid, config.models)}"
                                f"{hint}; known expids: {', '.join(config.expids)}")
        lb = self.leaderboard
        wanted = set(lb["metrics"]) | {m for s in lb["lift"] for m in s["metrics"]} | {
            m for p in lb["plots"] for m in p["metrics"]}
        for metric in sorted(wanted):
            if metric not in metric_lib.BASE_METRICS:
                raise UserError(f"{self.where}: unknown metric {metric!r} in `leaderboard`"
                                f"{close_matches(metric, metric_lib.BASE_METRICS)}; known metrics: "
                                f"{', '.join(metric_lib.BASE_METRICS)}")
        variants: list[Variant] = []
        runs: list[PlannedRun] = []
        for entry in self.entries:
            space = dict(self.tuner_space)
            space.update(entry.tuner_space)
            # FuxiCTR tuners list seeds under `seed`: here they are the row's replicates, not separate rows
            space_seeds = _seeds(space.pop("seed", None), f"{self.where}, expid {entry.expid}, tuner_space")
            for dataset in self.datasets or [None]:
                for point in tuner_points(space):
                    point = dict(point)
                    overrides = {"dataset_id": dataset} if dataset else {}
                    # (the message starts with the suite file and the expid already)
                    origin = {"dataset_id": "the suite's `datasets`"} if dataset else {}
                    for layer, text in ((self.overrides, "the suite's `overrides`"),
                                        (entry.overrides, "the row's `overrides`"),
                                        (point, "`tuner_space`"), (extra_overrides or {}, "--set")):
                        overrides.update(copy.deepcopy(layer))
                        origin.update(dict.fromkeys(layer, text))
                    for key in RAW_KEYS:
                        if key in overrides:
                            raise UserError(f"{self.where}, expid {entry.expid}: a suite cannot override {key!r} (it "
                                            f"names the raw data); add a dataset block to dataset_config.yaml and "
                                            f"list it in `datasets`")
                    where = f"{self.where}, expid {entry.expid}"
                    try:
                        if strict:
                            params, model_class, _ = resolve(entry.expid, config_dir, overrides, origin)
                        else:
                            params, model_class = config.load(entry.expid, overrides), None
                            from mdl_bench.model_zoo import registry
                            from .schema import validate
                            model_class = registry().get(str(params.get("model")))
                            # typed as a strict plan is ("1e-3" -> 0.001), so the hashes agree with it; a model
                            # that is not importable now has its keys taken as they are
                            params = validate(params, model_class, config.sources(entry.expid, overrides, origin))
                        names = domain_names(params)
                    except UserError as exc:
                        raise UserError(f"{where}: {exc}") from None
                    if strict:
                        configured = {metric_lib.parse_metric(m)[0] for m in params.get("metrics") or []}
                        for metric in sorted(wanted - configured):
                            raise UserError(f"{where}: the leaderboard asks for {metric!r}, which the expid does not "
                                            f"compute (its metrics: {', '.join(params.get('metrics') or [])}); add it "
                                            f"to `metrics` or drop it from the leaderboard")
                        for spec in lb["lift"]:
                            if spec["domain"] != "Overall" and spec["domain"] not in names:
                                raise UserError(f"{self.where}: lift domain {spec['domain']!r} is not a domain of "
                                                f"{params['dataset_id']!r} ({', '.join(names)}, Overall)")
                        if lb["domains"] != "all":
                            for name in lb["domains"]:
                                if name != "Overall" and name not in names:
                                    raise UserError(f"{self.where}: leaderboard domain {name!r}"
                                                    f"{close_matches(name, names)} is not a domain of "
                                                    f"{params['dataset_id']!r}; its domains: {', '.join(names)}, "
                                                    f"Overall")
                    params["verbose"] = 0  # console output only (not hashed): logs go to the run's log file
                    self._separate_data_variant(params, config)
                    digest = config_hash(params)
                    seeds = space_seeds or entry.seeds or self.seeds or [int(params.get("seed") or 0)]
                    model = str(params.get("model"))
                    tuned = {k: v for k, v in point.items() if isinstance(space.get(k), list) and len(space[k]) > 1}
                    code = code_fingerprint(model, params.get("models_from")).digest if model_class else ""
                    variant = Variant(
                        index=len(variants), entry=entry, expid=entry.expid, dataset_id=params["dataset_id"],
                        tuned=tuned, params=params, config_hash=digest, seeds=list(seeds), model=model,
                        group=entry.group or (getattr(model_class, "group", None) if model_class else None) or "Other",
                        display_name=(getattr(model_class, "display_name", None) or model_class.__name__)
                        if model_class else model,
                        series=entry.label or entry.expid, code=code)
                    variants.append(variant)
                    for seed in variant.seeds:
                        run_params = dict(params, seed=int(seed))
                        run_params["model_id"] = run_model_id(entry.expid, run_params, digest, code)
                        runs.append(PlannedRun(variant=variant, seed=int(seed), params=run_params))
        _label_variants(variants)
        return Plan(suite=self, variants=variants, runs=runs)

    def _separate_data_variant(self, params: dict, config) -> None:
        """A config that changes how the data is built gets its own build folder (``data_root`` is not hashed)."""
        block = config.dataset_params(params["dataset_id"])
        changed = {k: params.get(k) for k in BUILD_KEYS if params.get(k) != block.get(k)}
        if changed:
            import hashlib
            import json
            tag = hashlib.sha256(json.dumps(changed, sort_keys=True, default=str).encode()).hexdigest()[:8]
            params["data_root"] = os.path.join(params["data_root"], "variants", tag)


def run_model_id(expid: str, params: dict, digest: str | None = None, code: str = "") -> str:
    """A run's file name, ``<expid>__s<seed>__<hash8>[__<code8>]``: one per resolved config and seed (``digest``:
    its :func:`config_hash`, when known) and, in a suite, per code revision (so an outdated run's checkpoint and
    log stay beside the rerun's)."""
    digest = digest or config_hash(params)
    return f"{expid}__s{int(params.get('seed') or 0)}__{digest[:8]}" + (f"__{code[:8]}" if code else "")


def _label_variants(variants: list) -> None:
    """Row names: the entry's label, else the model's display name, else (on a clash) the expid; tuned values
    appended as ``[key=value]``."""
    base = {}
    for v in variants:
        base[v.index] = v.entry.label or v.display_name
    clashes: dict[tuple, set] = {}
    for v in variants:
        clashes.setdefault((v.dataset_id, base[v.index]), set()).add(v.expid)
    for v in variants:
        name = base[v.index]
        if not v.entry.label and len(clashes[(v.dataset_id, name)]) > 1:
            name = v.expid
        if v.tuned:
            name += " [" + ", ".join(f"{k}={_fmt_value(x)}" for k, x in v.tuned.items()) + "]"
        v.label = name


def _fmt_value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def find_suite(name_or_path: str, config_dir=None) -> Path:
    """A suite file from a name (``config/suites/<name>.yaml`` of ``--config``, then the packaged one) or a path."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if os.sep in text or text.endswith((".yaml", ".yml")):
        raise UserError(f"suite file {path} not found; pass an existing file or a suite name "
                        f"({', '.join(known_suites(config_dir))})")
    folders = ([Path(config_dir).expanduser() / "suites"] if config_dir else []) + [packaged_config_dir() / "suites"]
    for folder in folders:
        for ext in (".yaml", ".yml"):
            if (folder / f"{text}{ext}").is_file():
                return folder / f"{text}{ext}"
    known = known_suites(config_dir)
    raise UserError(f"unknown suite {text!r}{close_matches(text, known)}; known suites: {', '.join(known)} (or pass "
                    f"a path to a suite file)")


def known_suites(config_dir=None) -> list[str]:
    folders = ([Path(config_dir).expanduser() / "suites"] if config_dir else []) + [packaged_config_dir() / "suites"]
    names = set()
    for folder in folders:
        if folder.is_dir():
            names.update(p.stem for p in folder.iterdir() if p.suffix in (".yaml", ".yml"))
    return sorted(names)


def load_suite(name_or_path: str, config_dir=None) -> Suite:
    path = find_suite(name_or_path, config_dir)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"suite file {path}{where} is not valid YAML ({getattr(exc, 'problem', exc)}); fix it") from None
    return Suite(data, path)


# ================================================================================================ one run
def run_resolved(expid: str, params: dict, step_callback=None, quiet: bool = True):
    """Run one experiment from its fully resolved params alone (no config files involved).

    The params are written as a one-expid config folder and handed to
    :func:`~mdl_bench.benchmark.runner.run_expid`, the package's one run function; suites and ``rerun`` both
    come here, so a rerun takes exactly the path of the original run. Console output of the run (FuxiCTR's
    stream handler, warnings) is captured and appended to the run's log file.
    """
    from .config import DATASET_KEYS, ConfigSet
    from .runner import run_expid

    folder = Path(tempfile.mkdtemp(prefix="mdl-bench-run-"))
    console = io.StringIO()
    try:
        dataset_block = {k: v for k, v in params.items() if k in DATASET_KEYS and k != "dataset_id"}
        (folder / "model_config.yaml").write_text(yaml.safe_dump({"Base": {}, expid: dict(params)}))
        (folder / "dataset_config.yaml").write_text(yaml.safe_dump({params["dataset_id"]: dataset_block}))
        over = {"model_id": params["model_id"]}
        if ConfigSet(folder).load(expid, over) != params:  # YAML round trip must be lossless
            raise RuntimeError(f"the resolved config of {expid} does not survive a YAML round trip")
        with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
            try:
                return run_expid(expid, folder, over, step_callback=step_callback, quiet=quiet)
            except BaseException:
                logging.getLogger().error("Run failed:\n" + traceback.format_exc())
                raise
    finally:
        _close_run_logging()
        text = console.getvalue()
        log_file = os.path.join(params["model_root"], params["dataset_id"], params["model_id"] + ".log")
        if text.strip() and os.path.isdir(os.path.dirname(log_file)):
            with open(log_file, "a", encoding="utf-8") as fh:
                fh.write("---- console output ----\n" + text)
        shutil.rmtree(folder, ignore_errors=True)


def _close_run_logging() -> None:
    """Detach the handlers FuxiCTR's ``set_logger`` installed, so later output does not land in a past run's log."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        with contextlib.suppress(Exception):
            handler.close()


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _maxrss_bytes(who) -> int:
    import resource

    value = resource.getrusage(who).ru_maxrss
    return int(value if sys.platform == "darwin" else value * 1024)


def execute_run(run: PlannedRun, store: Store, suite_name: str | None, step_callback=None) -> tuple[int | None, Any]:
    """Train, evaluate and store one planned run (one transaction). Returns ``(run_id or None if it was stored
    meanwhile by another process, RunResult)``."""
    import resource

    import torch

    scope = "run" if _reset_peak_rss() else "process"
    started = time.time()
    result = run_resolved(run.expid, run.params, step_callback=step_callback, quiet=True)
    finished = time.time()
    digest = config_hash(result.params)
    if digest != run.variant.config_hash:  # run_expid resolved something else than planned: a bug, not input
        raise RuntimeError(f"{run.describe()}: the config that ran hashes to {digest[:8]}, not {run.variant.short_hash}")
    code = code_fingerprint(result.model, result.params.get("models_from"))
    if code.digest != run.variant.code:  # the files changed while the suite ran: store what really ran
        logging.getLogger().warning(f"{run.describe()}: the model's code changed since the suite was planned "
                                    f"({run.variant.code[:8]} -> {code.digest[:8]})")
    git = git_state()
    versions = library_versions()
    versions["git_dirty"] = git["dirty"]
    versions["code_files"] = code.files
    outcome = result.to_dict()
    outcome.pop("params", None)
    record = dict(
        config_hash=digest, seed=run.seed, code_fingerprint=code.digest, expid=run.expid, model=result.model,
        dataset_id=result.dataset_id,
        model_id=run.model_id, suite=suite_name, config=portable_config(result.params),
        best_epoch=result.best_epoch, epochs_run=result.epochs_run, train_seconds=result.train_seconds,
        train_samples_per_second=result.train_samples_per_second, wall_seconds=result.wall_seconds,
        num_parameters=result.num_parameters, peak_rss_bytes=_maxrss_bytes(resource.RUSAGE_SELF),
        peak_rss_children_bytes=_maxrss_bytes(resource.RUSAGE_CHILDREN), peak_rss_scope=scope,
        torch_threads=torch.get_num_threads(), versions=versions, git_commit=git["commit"],
        hostname=socket.gethostname(), checkpoint=result.checkpoint, log_file=run.log_file, result=outcome,
        started_at=started, finished_at=finished,
        metrics={"valid": result.valid, "test": result.test, "oracle": result.oracle})
    return store.insert_run(record), result


# ================================================================================================ progress
class SuiteProgress:
    """One tqdm bar over every pending run's epochs: the current run(s), the epoch, elapsed and ETA."""

    def __init__(self, runs: list, stream=None, disable: bool = False):
        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no monitor thread (worker processes are started while the bar exists)
        self.runs = {r.key: (i + 1, r) for i, r in enumerate(runs)}
        self.count = len(runs)
        self.done_units = 0.0
        self.current: dict[tuple, float] = {}
        self.epoch_of: dict[tuple, int] = {}
        self.stream = stream or sys.stderr
        self.bar = tqdm(total=float(sum(r.epochs for r in runs)) or 1.0, file=self.stream, disable=disable,
                        dynamic_ncols=True, mininterval=0.5, smoothing=0.05,
                        bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.1f}/{total:.0f} epochs "
                                   "[{elapsed}<{remaining}]")
        self._refresh()

    def _refresh(self) -> None:
        n = min(self.done_units + sum(self.current.values()), self.bar.total)
        if self.current:
            parts = []
            for key in self.current:
                i, run = self.runs[key]
                epoch = self.epoch_of.get(key)
                stage = f"epoch {epoch + 1}/{run.epochs}" if epoch is not None else "loading"
                parts.append(f"run {i}/{self.count} {run.expid} seed {run.seed} {stage}")
            desc = "; ".join(parts)
        else:
            desc = f"{self.count} runs"
        self.bar.set_description_str(desc, refresh=False)
        self.bar.update(n - self.bar.n)
        self.bar.refresh()

    def started(self, key) -> None:
        self.current[key] = 0.0
        self._refresh()

    def step(self, key, info: dict) -> None:
        _, run = self.runs[key]
        batches = max(1, int(info.get("batches") or 1))
        self.epoch_of[key] = int(info["epoch"])
        self.current[key] = min(float(run.epochs), info["epoch"] + (info["batch"] + 1) / batches)
        if info["batch"] % 5 == 0 or info["batch"] + 1 == batches:
            self._refresh()

    def finished(self, key, line: str | None = None) -> None:
        _, run = self.runs[key]
        self.current.pop(key, None)
        self.done_units += run.epochs
        if line:
            self.bar.write(line, file=self.stream)
        self._refresh()

    def write(self, line: str) -> None:
        self.bar.write(line, file=self.stream)

    def close(self) -> None:
        self.bar.close()


# ================================================================================================ the loop
@dataclass
class SuiteOutcome:
    plan: Plan
    store_path: Path
    stored_before: int = 0
    outdated: list = field(default_factory=list)  # pending runs whose config and seed are stored by other code
    stored_now: list = field(default_factory=list)
    stored_elsewhere: list = field(default_factory=list)
    failed: list = field(default_factory=list)


def _result_line(index: int, count: int, run: PlannedRun, run_id, result, split: str = "test") -> str:
    logs = getattr(result, split)
    values = " ".join(f"{m} {logs[m]:.4f}" for m in ("AUC", "gAUC") if m in logs)
    where = f"stored as run {run_id}" if run_id is not None else "already stored by another process"
    return (f"[{index}/{count}] {run.variant.label} ({run.expid}) seed {run.seed}: {split} {values}; "
            f"{result.wall_seconds:.0f}s; {where}")


def run_suite(suite: Suite, config_dir=None, store: str | None = None, jobs: int = 1,
              extra_overrides: dict | None = None, dry_run: bool = False, out=print,
              progress_stream=None, poll_seconds: float = 2.0) -> SuiteOutcome:
    """Run every run of ``suite`` that the store does not hold yet. Checks everything before the first run."""
    if not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"--jobs must be a positive integer, got {jobs!r}")
    plan = suite.plan(config_dir, extra_overrides, strict=True)
    if dry_run and not store_path(store or suite.store).exists():  # a dry run creates nothing
        for run in plan.unique_runs():
            out(f"  {run.variant.short_hash} seed {run.seed:<6} {run.variant.label:<34} {run.expid:<32} to run")
        out(f"Suite {suite.name}: {len(plan.variants)} rows, {len(plan.unique_runs())} runs, none stored yet (no store "
            f"at {store_path(store or suite.store)})")
        return SuiteOutcome(plan=plan, store_path=store_path(store or suite.store))
    if not dry_run:
        from .runner import check_paths

        for params in {(r.params["model_root"], r.params["dataset_id"], r.params.get("data_root")): r.params
                       for r in plan.unique_runs()}.values():
            check_paths(params)  # before the store is made or a run starts: a folder no run could write
        check_store_writable(store or suite.store)
        # a data error is the dataset's, not each run's: one error, before any run starts
        stored = _stored_keys(store or suite.store)
        prepare_datasets([r for r in plan.unique_runs() if r.key not in stored], out=out)
    db = Store(store or suite.store, create=not dry_run)  # a dry run only reads (a read-only store too)
    outcome = SuiteOutcome(plan=plan, store_path=db.path)
    try:
        stored = db.stored_keys()
        by_config = db.stored_by_config()
        unique = plan.unique_runs()
        pending = [r for r in unique if r.key not in stored]
        outdated = {r.key: by_config[r.key[:2]][0] for r in pending if r.key[:2] in by_config}
        outcome.stored_before = len(unique) - len(pending)
        outcome.outdated = [r for r in pending if r.key in outdated]
        stale = (f", {len(outdated)} of them outdated (stored by other code: "
                 f"{', '.join(sorted({r.variant.label for r in outcome.outdated}))})" if outdated else "")
        out(f"Suite {suite.name}: {len(plan.variants)} rows, {len(unique)} runs ({outcome.stored_before} stored "
            f"already, {len(pending)} to run{stale}{f', {jobs} at a time' if jobs > 1 and pending else ''}); "
            f"store {db.path}")
        if dry_run:
            for run in unique:
                state = (f"stored (run {stored[run.key]})" if run.key in stored else
                         f"outdated (run {outdated[run.key][0]}, code {outdated[run.key][1][:8] or 'unknown'} -> "
                         f"{run.variant.code[:8]}): to run" if run.key in outdated else "to run")
                out(f"  {run.variant.short_hash} seed {run.seed:<6} {run.variant.label:<34} {run.expid:<32} {state}")
            return outcome
        if not pending:
            return outcome
        progress = SuiteProgress(pending, stream=progress_stream)
        try:
            if jobs == 1:
                _run_here(pending, db, suite.name, progress, outcome, poll_seconds)
            else:
                _run_workers(pending, db, suite.name, progress, outcome, jobs, poll_seconds)
        finally:
            progress.close()
    finally:
        db.close()
    return outcome


def _stored_keys(store: str | None) -> dict:
    """The stored runs of an existing store; ``{}`` (and no file created) when there is none yet."""
    path = store_path(store)
    if not path.exists():
        return {}
    with Store(path, create=False) as db:
        return db.stored_keys()


def prepare_datasets(runs: list, out=print) -> None:
    """Check (or build) each dataset the ``runs`` need, once, before the first run starts.

    A dataset that cannot be built stops the suite with one :class:`UserError` naming the dataset, the number of
    its runs and the cause; nothing is stored. Datasets are told apart by their build folder (a variant that
    changes how data is built has its own, see :meth:`Suite._separate_data_variant`).
    """
    from .data.build import ensure_dataset

    needed: dict[tuple, list] = {}
    for run in runs:
        needed.setdefault((run.params.get("data_root"), run.params.get("dataset_id")), []).append(run)
    for (_, dataset_id), of_dataset in needed.items():
        try:
            ensure_dataset(of_dataset[0].params, log=lambda message: out(f"  {message}"))
        except UserError as exc:
            runs_text = f"none of the {len(of_dataset)} runs that need it started" if len(of_dataset) > 1 else \
                "the run that needs it did not start"
            raise UserError(f"dataset {dataset_id!r} cannot be built, so {runs_text}: {exc}") from None


def _run_here(pending: list, db: Store, suite_name: str, progress: SuiteProgress, outcome: SuiteOutcome,
              poll_seconds: float) -> None:
    """Sequential runs in this process; runs claimed by another live process are waited for, then skipped."""
    queue = list(pending)
    waiting: dict[tuple, PlannedRun] = {}
    count = len(pending)
    while queue or waiting:
        if not queue:
            time.sleep(poll_seconds)
            for key, run in list(waiting.items()):
                if db.run_id(*key) is not None:
                    waiting.pop(key)
                    outcome.stored_elsewhere.append(run)
                    progress.finished(key, f"[{progress.runs[key][0]}/{count}] {run.describe()}: stored by another "
                                           f"process")
                elif db.claim(*key) is None:  # the other process is gone: take it over
                    queue.append(waiting.pop(key))
            continue
        run = queue.pop(0)
        if db.run_id(*run.key) is not None:
            outcome.stored_elsewhere.append(run)
            progress.finished(run.key)
            continue
        other = db.claim(*run.key)
        if other is not None:
            waiting[run.key] = run
            progress.write(f"{run.describe()} is running in process {other['pid']} on {other['hostname']}; "
                           f"waiting for it")
            continue
        index = progress.runs[run.key][0]
        progress.started(run.key)
        try:
            run_id, result = execute_run(run, db, suite_name, step_callback=lambda info, k=run.key:
                                         progress.step(k, info))
        except KeyboardInterrupt:
            db.release(*run.key)
            raise
        except Exception as exc:  # a failing run is reported; the suite goes on with the others
            db.release(*run.key)
            message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            outcome.failed.append((run, message))
            progress.finished(run.key, f"[{index}/{count}] FAILED {run.describe()}: {message} (log: {run.log_file})")
            continue
        (outcome.stored_now if run_id is not None else outcome.stored_elsewhere).append(run)
        progress.finished(run.key, _result_line(index, count, run, run_id, result))


# ------------------------------------------------------------------------------------------------ workers
def _worker_main(worker_id: int, tasks, results, store_file: str, suite_name: str, threads: int,
                 parent_pid: int, home: str | None) -> None:
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if home:
        os.environ["MDL_BENCH_HOME"] = home
    die_with_parent(parent_pid)
    import torch

    torch.set_num_threads(threads)
    db = Store(store_file)
    try:
        while True:
            run = tasks.get()
            if run is None:
                return
            results.put(("start", worker_id, run.key, None))
            try:
                run_id, result = execute_run(run, db, suite_name, step_callback=lambda info, k=run.key:
                                             results.put(("step", worker_id, k, info)))
                results.put(("done", worker_id, run.key, (run_id, result)))
            except KeyboardInterrupt:
                return
            except Exception as exc:
                message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
                results.put(("error", worker_id, run.key, message))
    finally:
        db.close()


def _run_workers(pending: list, db: Store, suite_name: str, progress: SuiteProgress, outcome: SuiteOutcome,
                 jobs: int, poll_seconds: float) -> None:
    """``jobs`` worker processes (fresh interpreters), each storing its own runs; this process claims, dispatches
    and draws the bar. Each worker gets ``cores // jobs`` torch threads."""
    import multiprocessing as mp
    import queue as queue_lib

    import torch

    ctx = mp.get_context("spawn")
    threads = max(1, torch.get_num_threads() // jobs)
    tasks, results = ctx.Queue(), ctx.Queue()
    workers = {}
    for wid in range(min(jobs, len(pending))):
        proc = ctx.Process(target=_worker_main, daemon=True,
                           args=(wid, tasks, results, str(db.path), suite_name, threads, os.getpid(),
                                 os.environ.get("MDL_BENCH_HOME")))
        proc.start()
        workers[wid] = proc
    queue = list(pending)
    waiting: dict[tuple, PlannedRun] = {}
    in_flight: dict[tuple, PlannedRun] = {}
    busy: dict[int, tuple] = {}
    by_key = {r.key: r for r in pending}
    count = len(pending)
    last_poll = time.time()

    def dispatch():
        while queue and len(in_flight) < len(workers):
            run = queue.pop(0)
            if db.run_id(*run.key) is not None:
                outcome.stored_elsewhere.append(run)
                progress.finished(run.key)
                continue
            other = db.claim(*run.key)
            if other is not None:
                waiting[run.key] = run
                progress.write(f"{run.describe()} is running in process {other['pid']}; waiting for it")
                continue
            in_flight[run.key] = run
            tasks.put(run)

    def fail(key, message):
        run = in_flight.pop(key)
        db.release(*key)
        outcome.failed.append((run, message))
        progress.finished(key, f"[{progress.runs[key][0]}/{count}] FAILED {run.describe()}: {message} "
                               f"(log: {run.log_file})")

    try:
        dispatch()
        while in_flight or queue or waiting:
            try:
                kind, wid, key, payload = results.get(timeout=1.0)
            except queue_lib.Empty:
                kind = None
            if kind == "start":
                busy[wid] = key
                progress.started(key)
            elif kind == "step":
                progress.step(key, payload)
            elif kind == "done":
                busy.pop(wid, None)
                run = in_flight.pop(key)
                run_id, result = payload
                (outcome.stored_now if run_id is not None else outcome.stored_elsewhere).append(run)
                progress.finished(key, _result_line(progress.runs[key][0], count, run, run_id, result))
            elif kind == "error":
                busy.pop(wid, None)
                fail(key, payload)
            for wid, proc in list(workers.items()):  # a worker that died (killed, out of memory) fails its run
                if not proc.is_alive():
                    workers.pop(wid)
                    if wid in busy:
                        fail(busy.pop(wid), f"worker process exited with code {proc.exitcode}")
            if not workers and (queue or in_flight):
                for key in list(in_flight):
                    fail(key, "no worker process left")
                for run in queue:
                    outcome.failed.append((run, "not run: no worker process left"))
                queue.clear()
                break
            if waiting and time.time() - last_poll > poll_seconds:
                last_poll = time.time()
                for key, run in list(waiting.items()):
                    if db.run_id(*key) is not None:
                        waiting.pop(key)
                        outcome.stored_elsewhere.append(run)
                        progress.finished(key, f"{run.describe()}: stored by another process")
                    elif db.claim(*key) is None:
                        waiting.pop(key)
                        db.release(*key)
                        queue.append(run)
            dispatch()
    finally:
        for _ in workers:
            tasks.put(None)
        deadline = time.time() + 10
        for proc in workers.values():
            proc.join(timeout=max(0.1, deadline - time.time()))
            if proc.is_alive():
                proc.terminate()
        for key in list(in_flight):
            db.release(*key)


# ================================================================================================ rerun
def rerun(run_id: int, store: str | None = None, out=print, progress_stream=None) -> bool:
    """Rerun a stored run from its stored config alone and compare every stored metric. True if all match."""
    import torch

    from .store import local_config
    from .paths import bench_home

    db = Store(store, create=False)
    try:
        run = db.get_run(run_id)
    finally:
        db.close()
    params = local_config(run["config"])
    if config_hash(params) != run["config_hash"]:
        raise UserError(f"run {run_id}: its stored config does not hash to its stored hash; the store was edited")
    params["model_root"] = str(bench_home() / "reruns" / f"run{run_id}")
    out(f"Rerunning run {run_id}: {run['expid']} ({run['model']}) on {run['dataset_id']}, seed {run['seed']}, "
        f"config {run['config_hash'][:8]}, {run['torch_threads']} torch threads; stored with commit "
        f"{(run['git_commit'] or 'unknown')[:12]}, now {(git_state()['commit'] or 'unknown')[:12]}")
    code = code_fingerprint(run["model"], params.get("models_from"))
    if code.digest == run.get("code_fingerprint"):
        out(f"  code: the same as the run's (fingerprint {code.digest[:8]}): the values should match exactly")
    else:
        changed = code.changed_files((run.get("versions") or {}).get("code_files"))
        what = (f"changed since: {', '.join(changed)}" if (run.get("versions") or {}).get("code_files")
                else "the run predates code fingerprints")
        out(f"  code: DIFFERS from the run's (fingerprint {(run.get('code_fingerprint') or 'unknown')[:8]}, now "
            f"{code.digest[:8]}; {what}): differences below may come from the code, not from nondeterminism")
    old_threads = torch.get_num_threads()
    if run.get("torch_threads"):
        torch.set_num_threads(int(run["torch_threads"]))
    fake = PlannedRun(variant=Variant(0, Entry(run["expid"]), run["expid"], run["dataset_id"], {}, params,
                                      run["config_hash"], [run["seed"]], run["model"], "", run["model"],
                                      run["expid"], label=run["expid"], code=code.digest),
                      seed=int(run["seed"]), params=params)
    progress = SuiteProgress([fake], stream=progress_stream)
    try:
        progress.started(fake.key)
        result = run_resolved(run["expid"], params, step_callback=lambda info: progress.step(fake.key, info))
        progress.finished(fake.key)
    finally:
        progress.close()
        torch.set_num_threads(old_threads)
    rows, mismatches = [], 0
    fresh = {"valid": result.valid, "test": result.test, "oracle": result.oracle}
    for split in ("valid", "test"):
        for name, old in sorted(run["metrics"].get(split, {}).items()):
            new = fresh[split].get(name, float("nan"))
            same = old == new or (math.isnan(old) and math.isnan(new))
            mismatches += not same
            rows.append(f"  {split:5s} {name:14s} stored {old:.10f}  rerun {new:.10f}  "
                        f"{'match' if same else f'MISMATCH (diff {new - old:+.3e})'}")
    same_epoch = run["best_epoch"] == result.best_epoch
    mismatches += not same_epoch
    out("\n".join(rows))
    out(f"  best epoch: stored {run['best_epoch']}, rerun {result.best_epoch}: {'match' if same_epoch else 'MISMATCH'}")
    total = len(rows) + 1
    out(f"All {total} values match exactly." if not mismatches else f"{mismatches} of {total} values differ.")
    return mismatches == 0
