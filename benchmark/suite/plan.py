"""The suite file and its plan: the keys a suite file may hold and their checks, the variants (leaderboard rows)
and runs it expands to, each with its identity in the store, and finding a suite by name or path."""
from __future__ import annotations

import copy
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mdl_bench.kernel.errors import UserError, close_matches
from mdl_bench.kernel.paths import expand_path, packaged_config_dir
from ..codeid import code_fingerprint
from ..resolved import ResolvedRun, config_hash, resolve, run_model_id
from .tuning import RowSearch, Trial, TrialSpec, Tuner, search_space, stored_trials

SUITE_KEYS = ("name", "description", "datasets", "expids", "seeds", "overrides", "tuner_space", "tuner", "store",
              "leaderboard", "models_from")
ENTRY_KEYS = ("expid", "label", "group", "info", "overrides", "tuner_space", "seeds")
LEADERBOARD_KEYS = ("metrics", "split", "domains", "std", "digits", "group_order", "lift", "plots", "title",
                    "reference")
LIFT_KEYS = ("base", "metrics", "domain", "title")
PLOT_KEYS = ("name", "x", "metrics", "series", "lift_over", "xscale", "title", "domain", "xlabel", "panels",
             "vs_oracle")
SPLITS = ("test", "valid")
# Dataset keys that change the built data: a suite overriding one builds that variant in its own folder.
BUILD_KEYS = ("feature_cols", "label_col", "min_categr_count", "domain_field", "domains", "group_id", "oracle_field",
              "data_block_size")
# Dataset keys a suite may not override (they name the raw data): make a dataset block instead.
RAW_KEYS = ("synth", "train_data", "valid_data", "test_data", "data_format")


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
    trial: Trial | None = None  # in a tuning suite: the variant's place in its row's search

    @property
    def short_hash(self) -> str:
        return self.config_hash[:8]


@dataclass
class PlannedRun:
    """One run: a variant and a seed, with its resolved run (final params: seed and model_id set)."""

    variant: Variant
    seed: int
    resolved: ResolvedRun

    @property
    def params(self) -> dict:
        return self.resolved.params

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


def _trial_key(variant: "Variant") -> tuple[str, int, str]:
    """A tuning trial's run key in the store (a trial has one seed): :attr:`PlannedRun.key` of its one run."""
    return (variant.config_hash, variant.seeds[0], variant.code)


@dataclass
class TuningRow:
    """One row's search on one dataset: its trials so far (variants, in order) and whether the search is over."""

    name: str
    entry: Entry
    dataset: str | None
    search: RowSearch
    variants: list = field(default_factory=list)
    base_label: str = ""
    finished: bool = False

    def earlier(self) -> list:
        """``(spec, run key)`` of the row's trials so far."""
        return [(v.trial.spec, _trial_key(v)) for v in self.variants]


@dataclass
class Plan:
    suite: "Suite"
    variants: list
    runs: list
    tuning: dict = field(default_factory=dict)  # row name -> TuningRow (a tuning suite)
    context: tuple = ()  # what resolving a further trial needs (a tuning suite)

    def catch_up(self, store, failed=(), rows=None) -> list:
        """A tuning suite's trials after those planned, as far as the store holds their earlier trials: each
        row's next trial once its last one is stored (or in ``failed``: run keys that failed here). Returns the
        new runs (also added to :attr:`runs`)."""
        new: list[PlannedRun] = []
        for row in (self.tuning.values() if rows is None else [self.tuning[r] for r in rows]):
            while not row.finished:
                key = _trial_key(row.variants[-1])
                if key not in failed and store.run_id(*key) is None:
                    break
                spec = row.search.next(stored_trials(row.earlier(), store))
                if spec is None:
                    row.finished = True
                    break
                variant, model_class = self.suite._tuning_variant(row, spec, len(self.variants), *self.context)
                self.variants.append(variant)
                runs = [_planned_run(variant, int(seed), model_class) for seed in variant.seeds]
                self.runs += runs
                new += runs
        return new

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
    """FuxiCTR autotuner semantics: a list value is a grid axis, a scalar is fixed; the grid in key order.

    A list of mappings is one *joint* axis: each of its points sets the keys of its mapping together (the axis's
    own name is only a label), e.g. ``embedding_regularization: [{embedding_regularizer: 0}, {embedding_regularizer:
    1.e-2, embedding_regularizer_scope: batch}]`` - combinations that a product of two axes would repeat or make
    meaningless are left out."""
    if not space:
        return [{}]
    keys = list(space)
    axes = [v if isinstance(v, list) else [v] for v in space.values()]
    for key, axis in zip(keys, axes):
        if not axis:
            raise UserError(f"tuner_space key {key!r} has an empty list; give at least one value")
        if any(isinstance(v, dict) for v in axis) and not all(isinstance(v, dict) and v for v in axis):
            raise UserError(f"tuner_space key {key!r} mixes mappings and values; a joint axis lists only mappings "
                            f"of config keys (key: value), a plain axis only values")
    points = []
    for values in itertools.product(*axes):
        point: dict = {}
        for key, value in zip(keys, values):
            point.update(value if isinstance(value, dict) else {key: value})
        points.append(point)
    return points


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
        self.tuner = Tuner.parse(data["tuner"], self.where) if data.get("tuner") is not None else None
        if self.tuner is not None and self.seeds is not None and len(self.seeds) > 1:
            raise UserError(f"{self.where}: a tuning suite (`tuner:`) trains each trial with one seed, but `seeds` lists "
                            f"{len(self.seeds)}; keep one seed (the final runs of the chosen values take several)")
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
               "reference": None if data.get("reference") is None else str(data["reference"]),
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
                                 "xlabel": spec.get("xlabel"),
                                 "panels": None if spec.get("panels") is None else str(spec["panels"]),
                                 "vs_oracle": bool(spec.get("vs_oracle", False))})
        return out

    # -------------------------------------------------------------------------------------- the plan
    def plan(self, config_dir=None, extra_overrides: dict | None = None, strict: bool = True) -> Plan:
        """Resolve every variant and run, once: each run carries its :class:`ResolvedRun`, which the executor and
        the workers run as it is. ``strict`` (for running) checks models and keys through
        :func:`~mdl_bench.benchmark.resolved.resolve`; the leaderboard uses ``strict=False`` so that rows of
        models that are not importable now still find their stored runs."""
        from mdl_bench.model_zoo import add_models_from
        from ..config import ConfigSet

        add_models_from(self.models_from, self.models_base)
        config = ConfigSet(config_dir)
        wanted = self._check_names(config, config_dir)
        variants: list[Variant] = []
        runs: list[PlannedRun] = []
        tuning: dict[str, TuningRow] = {}
        context = (extra_overrides, config, config_dir, strict, wanted)
        for entry in self.entries:
            space = dict(self.tuner_space)
            space.update(entry.tuner_space)
            # FuxiCTR tuners list seeds under `seed`: here they are the row's replicates, not separate rows
            space_seeds = _seeds(space.pop("seed", None), f"{self.where}, expid {entry.expid}, tuner_space")
            if self.tuner is not None and space_seeds is not None and len(space_seeds) > 1:
                raise UserError(f"{self.where}, expid {entry.expid}: a tuning suite trains each trial with one seed; "
                                f"drop `seed` from tuner_space")
            for dataset in self.datasets or [None]:
                if self.tuner is not None:  # a search: its first trial now, the next ones as trials end
                    row, first = self._tuning_row(entry, dataset, context)
                    tuning[row.name] = row
                    variant, model_class = self._tuning_variant(row, first, len(variants), *context)
                    variants.append(variant)
                    runs += [_planned_run(variant, int(seed), model_class) for seed in variant.seeds]
                    continue
                for point in tuner_points(space):
                    params, model_class = self._resolve_point(entry, dataset, point, {}, extra_overrides, config,
                                                              config_dir, strict, wanted)
                    variant = self._variant(len(variants), entry, point, space, params, model_class, space_seeds)
                    variants.append(variant)
                    runs += [_planned_run(variant, int(seed), model_class) for seed in variant.seeds]
        _label_variants(variants)
        for row in tuning.values():
            row.base_label = row.variants[0].label.rsplit(" #", 1)[0]
        if self.tuner is None:
            _check_distinct_rows(self.where, variants)
        return Plan(suite=self, variants=variants, runs=runs, tuning=tuning, context=context)

    def _check_names(self, config, config_dir) -> set:
        """Datasets, expids and leaderboard metrics known; returns the metrics the leaderboard asks for."""
        from mdl_bench.model_zoo.core import metrics as metric_lib

        named = [(d, "") for d in self.datasets] + [
            (d, "tuner `datasets` names an ") for d in (self.tuner.datasets() if self.tuner is not None else ())]
        for dataset, prefix in named:
            if dataset not in config.datasets:
                raise UserError(f"{self.where}: {prefix}unknown dataset {dataset!r}"
                                f"{close_matches(dataset, config.datasets)}; known datasets: "
                                f"{', '.join(sorted(config.datasets))}")
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
        return wanted

    def _tuning_row(self, entry: Entry, dataset, context: tuple) -> tuple[TuningRow, TrialSpec]:
        """A row's search - its space (the suite's recipe, minus what the row's overrides fix, and its own keys),
        its monitor direction and full epoch cap (from the expid resolved with them) - and its first trial."""
        extra_overrides, config, config_dir, strict, wanted = context
        where = f"{self.where}, expid {entry.expid}"
        params, _ = self._resolve_point(entry, dataset, {}, {"evaluate_test": False}, extra_overrides, config,
                                        config_dir, strict, wanted)
        fixed = set(entry.overrides) | set(extra_overrides or {})
        axes, constants = search_space(self.tuner_space, entry.tuner_space, fixed, where)
        name = f"{entry.expid}@{dataset or '-'}"
        tuner = self.tuner.for_dataset(dataset or params.get("dataset_id"))
        search = RowSearch(name, axes, constants, tuner, str(params.get("monitor_mode", "max")),
                           int(params.get("epochs") or 1))
        first = search.next([])
        if first is None:
            raise UserError(f"{where}: the tuner's budget of {tuner.budget} epochs leaves no room for a search "
                            f"trial after stage 2's reserve ({search.reserve([]):.0f} epochs for "
                            f"{search.sweep_size()} trials); raise `budget` or drop own values")
        return TuningRow(name=name, entry=entry, dataset=dataset, search=search), first

    def _tuning_variant(self, row: TuningRow, spec, index: int, extra_overrides, config, config_dir, strict,
                        wanted) -> tuple[Variant, type | None]:
        """A trial of a tuning row as a variant (its own config: the trial's point, the test never read), and its
        model class."""
        layer = {"evaluate_test": False, "tuning_trial": spec.label}
        params, model_class = self._resolve_point(row.entry, row.dataset, spec.point, layer, extra_overrides, config,
                                                  config_dir, strict, wanted)
        variant = self._variant(index, row.entry, spec.point, {}, params, model_class, None)
        variant.trial = Trial(row=row.name, spec=spec, search=row.search, earlier=row.earlier())
        if row.base_label:
            variant.label = f"{row.base_label} #{spec.index + 1}"
        row.variants.append(variant)
        return variant, model_class

    def _resolve_point(self, entry: Entry, dataset, point: dict, tuner_layer: dict, extra_overrides, config,
                       config_dir, strict: bool, wanted: set) -> tuple[dict, type | None]:
        """The resolved params of one variant (and its model class; ``None`` when not strict and not importable)."""
        overrides = {"dataset_id": dataset} if dataset else {}
        # (the message starts with the suite file and the expid already)
        origin = {"dataset_id": "the suite's `datasets`"} if dataset else {}
        for layer, text in ((self.overrides, "the suite's `overrides`"), (entry.overrides, "the row's `overrides`"),
                            (point, "`tuner_space`"), (tuner_layer, "the suite's `tuner`"),
                            (extra_overrides or {}, "--set")):
            overrides.update(copy.deepcopy(layer))
            origin.update(dict.fromkeys(layer, text))
        where = f"{self.where}, expid {entry.expid}"
        for key in RAW_KEYS:
            if key in overrides:
                raise UserError(f"{where}: a suite cannot override {key!r} (it names the raw data); add a dataset "
                                f"block to dataset_config.yaml and list it in `datasets`")
        try:
            params, model_class = _resolve_params(entry.expid, config, config_dir, overrides, origin, strict)
            if strict:
                self._check_leaderboard_fits(where, params, wanted)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        params["verbose"] = 0  # console output only (not hashed): logs go to the run's log file
        self._separate_data_variant(params, config)
        return params, model_class

    def _check_leaderboard_fits(self, where: str, params: dict, wanted: set) -> None:
        """The leaderboard's metrics are computed by the expid, and its domains are the dataset's."""
        from mdl_bench.model_zoo.core import metrics as metric_lib
        from ..data.build import domain_names

        names = domain_names(params)
        configured = {metric_lib.parse_metric(m)[0] for m in params.get("metrics") or []}
        for metric in sorted(wanted - configured):
            raise UserError(f"the leaderboard asks for {metric!r}, which the expid does not compute (its metrics: "
                            f"{', '.join(params.get('metrics') or [])}); add it to `metrics` or drop it from the "
                            f"leaderboard")
        lb = self.leaderboard
        for spec in lb["lift"]:
            if spec["domain"] != "Overall" and spec["domain"] not in names:
                raise UserError(f"lift domain {spec['domain']!r} is not a domain of {params['dataset_id']!r} "
                                f"({', '.join(names)}, Overall)")
        for name in lb["domains"] if lb["domains"] != "all" else []:
            if name != "Overall" and name not in names:
                raise UserError(f"leaderboard domain {name!r}{close_matches(name, names)} is not a domain of "
                                f"{params['dataset_id']!r}; its domains: {', '.join(names)}, Overall")

    def _variant(self, index: int, entry: Entry, point: dict, space: dict, params: dict, model_class,
                 space_seeds) -> Variant:
        model = str(params.get("model"))
        tuned = ({k: v for k, v in point.items() if isinstance(space.get(k), list) and len(space[k]) > 1}
                 if self.tuner is None else point)
        return Variant(
            index=index, entry=entry, expid=entry.expid, dataset_id=params["dataset_id"], tuned=tuned, params=params,
            config_hash=config_hash(params), seeds=list(space_seeds or entry.seeds or self.seeds
                                                        or [int(params.get("seed") or 0)]),
            model=model, group=entry.group or (getattr(model_class, "group", None) if model_class else None) or "Other",
            display_name=(getattr(model_class, "display_name", None) or model_class.__name__) if model_class else model,
            series=entry.label or entry.expid,
            code=code_fingerprint(model, params.get("models_from")).digest if model_class else "")

    def _separate_data_variant(self, params: dict, config) -> None:
        """A config that changes how the data is built gets its own build folder (``data_root`` is not hashed)."""
        block = config.dataset_resolved(params["dataset_id"])
        changed = {k: params.get(k) for k in BUILD_KEYS if params.get(k) != block.get(k)}
        if changed:
            import hashlib
            import json
            tag = hashlib.sha256(json.dumps(changed, sort_keys=True, default=str).encode()).hexdigest()[:8]
            params["data_root"] = os.path.join(params["data_root"], "variants", tag)


def _resolve_params(expid: str, config, config_dir, overrides: dict, origin: dict, strict: bool):
    """Strict: the one resolution (:func:`~mdl_bench.benchmark.resolved.resolve`). Otherwise the config merged
    and typed as a strict plan types it ("1e-3" -> 0.001, so the hashes agree); a model that is not importable now
    has its keys taken as they are."""
    if strict:
        params, model_class, _ = resolve(expid, config_dir, overrides, origin)
        return params, model_class
    from mdl_bench.model_zoo import registry
    from ..schema import validate

    params = config.load(expid, overrides)
    model_class = registry().get(str(params.get("model")))
    params = validate(params, model_class, config.sources(expid, overrides, origin))
    return params, model_class


def _planned_run(variant: Variant, seed: int, model_class) -> "PlannedRun":
    """A variant's run of one seed: its final params (seed, ``model_id``), resolved once."""
    params = dict(variant.params, seed=seed)
    params["model_id"] = run_model_id(variant.expid, params, variant.config_hash, variant.code)
    run = ResolvedRun(expid=variant.expid, params=params, model_class=model_class, config_hash=variant.config_hash,
                      code=variant.code)
    return PlannedRun(variant=variant, seed=seed, resolved=run)


def _check_distinct_rows(where: str, variants: list) -> None:
    """Two rows of one config on one dataset would show the same runs twice (both marked best): an error."""
    seen: dict[tuple, Variant] = {}
    for v in variants:
        first = seen.setdefault((v.dataset_id, v.config_hash), v)
        if first is not v:
            raise UserError(f"{where}: rows {first.label!r} ({first.expid}) and {v.label!r} ({v.expid}) resolve to one "
                            f"config on dataset {v.dataset_id!r} (the same runs, shown twice); drop one, or make them "
                            f"differ (`overrides`, `tuner_space`)")


def _label_variants(variants: list) -> None:
    """Row names: the entry's label, else the model's display name, else (on a clash) the expid; tuned values
    appended as ``[key=value]``, or a tuning trial's number as ``#i``."""
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
        if v.trial is not None:
            name += f" #{v.trial.index + 1}"
        elif v.tuned:
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
    suite = Suite(data, path)
    suite.given = str(name_or_path)  # as the user wrote it: the commands the tool suggests repeat it
    return suite


def suite_command(suite, verb: str = "run", config_dir=None, store=None, overrides: dict | None = None) -> str:
    """The ``mdl-bench`` command line that repeats ``verb`` on this suite as it was given: its name or path, and
    the ``--config``, ``--store`` and ``--set`` it was read with, so a suggested command runs as printed."""
    import shlex

    parts = ["mdl-bench", verb, "--suite", str(getattr(suite, "given", None) or suite.path or suite.name)]
    if config_dir:
        parts += ["--config", str(config_dir)]
    if store:
        parts += ["--store", str(store)]
    for key, value in (overrides or {}).items():
        if key == "nproc":
            parts += ["--nproc", str(value)]
        else:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
            parts += ["--set", f"{key}={text.removesuffix('...').strip()}"]
    return " ".join(shlex.quote(p) for p in parts)
