"""Tuning suites: one search per row, the same compute for every method, every trial a run in the results store.

A suite with a ``tuner:`` block is a tuning suite. Its ``tuner_space`` is the training recipe *shared* by every
row; a row's own ``tuner_space`` adds the method's own defining hyperparameters (at most three, structural ones
included). A key is searched as::

    learning_rate: {low: 1.e-4, high: 1.e-2, log: true}   # a float range (log scale with `log: true`)
    batch_norm: [true, false]                              # a categorical axis
    embedding_regularization:                              # a joint axis: each choice sets several keys
        - {embedding_regularizer: 0}
        - {embedding_regularizer: 1.e-2, embedding_regularizer_scope: batch}
    embedding_dim: 16                                      # a scalar: fixed

A row's own keys must be categorical (lists): each of their values is trained to convergence (below). A shared key
that the row fixes in its ``overrides`` is not searched for that row (e.g. Single Domain's loss weighting).

``tuner``::

    tuner:
      budget: 40         # training epochs per row, all its trials together (the same for every method)
      seed: 2024         # the search's seed (each row's stream is seeded by it and the row)
      startup_trials: 8  # TPE: trials drawn at random before the model-based draws start
      first_rung: 2      # successive halving: the first rung (epochs); rungs first_rung * reduction^k
      reduction: 3       # at each rung the best 1/reduction go on
      converged_epochs: 6  # the epochs one converged trial is assumed to take until the row has one
      search_epochs: 0   # a stage-1 trial's epoch cap (0: the row's own cap; stage 2 trains the winner on)
      datasets:          # a dataset's own settings over the ones above (e.g. a budget that fits its search
        conflict_like: {budget: 32}   # in the time there is, where its trials converge more slowly)

The search of a row has two stages.

1. **Search** (Optuna's TPE sampler, ``multivariate``, with Optuna's successive-halving pruner, ASHA): trial
   ``i`` is drawn by TPE from trials ``0..i-1`` of its row and trained with the Base protocol (validations, learning
   rate decay, early stopping); at the end of each rung epoch ``r`` it reports its best validation monitor of
   epochs ``1..r`` and goes on only when that value ranks within the top ``floor(n / reduction)`` (at least the
   top 1) of the ``n`` trials of its row that reached rung ``r`` so far, itself included (Optuna's
   ``SuccessiveHalvingPruner`` with ``bootstrap_count=0``: with fewer than ``reduction`` values only a value at
   least as good as the best so far goes on). Stage 1 runs while the row's epochs used so far plus the
   reserve for stage 2 (its trials - the other own values and the learning-rate decades but one - times the
   mean epochs of the row's converged trials, or ``converged_epochs`` before it has one) stay below
   ``budget``; its last trial's epoch cap is cut to what is left, so the rows use the same epochs (such a
   trial that ends at its cut cap has not converged). With ``search_epochs`` > 0 every stage-1 trial is capped
   there too: a row's first trial, which the pruner never stops (nothing at its rungs to compare it with), then
   cannot spend most of the budget on one point where trials converge slowly. Stage 2 may end past the budget,
   by as much as its trials take beyond the reserve assumed (or when the chosen point must first be trained to
   the end); the report gives every row's epochs used.
2. **Sweep**: the stage-1 choice (its best trial not pruned: converged, or cut by the budget) trained to
   convergence when it was not, and, for each decade of the learning-rate range without a converged trial,
   that point with its learning rate moved into the decade (same mantissa, clipped to the range); then, at the
   best converged trial so far - the chosen recipe - each other value of each own key, one key at a time. Own
   values change no recipe key, so every own value is trained at the recipe of the final choice. Sweep trials
   are never pruned.

Selection: the best validation monitor (the configured ``monitor``, ``monitor_mode``) among the converged trials
of both stages; a tie goes to the earlier trial. A trial is *converged* when it was not pruned and ended by early
stopping (or at the row's full epoch cap). Float values are rounded to two significant digits before a trial
runs (what is stored is what TPE is told).

Reproducibility: trial ``i`` depends only on its row's stored trials ``0..i-1`` (the study is rebuilt from the
store by replaying them through the same sampler and pruner; TPE's seed is drawn from the suite seed, the row
and ``i``), so rows run side by side under ``--jobs`` while each row's trials run one after another, and running
the suite again from its file into a fresh store trains the same trials and chooses the same values (given
deterministic training). A trial is a run whose config says ``evaluate_test: false``: the test split is never
read while tuning.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from dataclasses import dataclass, field

from mdl_bench.kernel.errors import UserError, close_matches

DATASETS_KEY = "datasets"
TUNER_KEYS = ("budget", "seed", "startup_trials", "first_rung", "reduction", "converged_epochs", "search_epochs",
              DATASETS_KEY)
MAX_OWN_KEYS = 3
SIGNIFICANT_DIGITS = 2
LEARNING_RATE = "learning_rate"


def _int(data: dict, key: str, default: int, low: int, where: str) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{where}: tuner `{key}` must be an integer >= {low}, got {value!r}")
    return value


@dataclass(frozen=True)
class Tuner:
    """The parsed ``tuner:`` block of a suite. ``by_dataset``: the settings a dataset of the suite sets for itself
    (the block's ``datasets:`` mapping), as ``((dataset id, ((key, value), ...)), ...)``; :meth:`for_dataset`
    gives the tuner a dataset's rows search with."""

    budget: int = 40
    seed: int = 0
    startup_trials: int = 8
    first_rung: int = 2
    reduction: int = 3
    converged_epochs: float = 6.0
    search_epochs: int = 0
    by_dataset: tuple = ()

    @classmethod
    def parse(cls, data, where: str) -> "Tuner":
        if not isinstance(data, dict):
            raise UserError(f"{where}: `tuner` must be a mapping ({', '.join(TUNER_KEYS)}); fix the suite file")
        data = dict(data)
        per_dataset = data.pop(DATASETS_KEY, None) or {}
        if not isinstance(per_dataset, dict) or not all(isinstance(v, dict) for v in per_dataset.values()):
            raise UserError(f"{where}: tuner `{DATASETS_KEY}` must map dataset ids to tuner settings, e.g. "
                            f"`{DATASETS_KEY}: {{conflict_like: {{budget: 32}}}}`; got {per_dataset!r}")
        base = cls._parse_settings(data, where)
        by_dataset = []
        for dataset, settings in per_dataset.items():
            if DATASETS_KEY in settings:
                raise UserError(f"{where}, tuner, {DATASETS_KEY}, {dataset}: a dataset's settings cannot nest "
                                f"`{DATASETS_KEY}`")
            cls._parse_settings({**data, **settings}, f"{where}, tuner, {DATASETS_KEY}, {dataset}")
            by_dataset.append((str(dataset), tuple(sorted(settings.items()))))
        return dataclasses.replace(base, by_dataset=tuple(by_dataset))

    @classmethod
    def _parse_settings(cls, data: dict, where: str) -> "Tuner":
        for key in data:
            if key not in TUNER_KEYS:
                raise UserError(f"{where}, tuner: unknown tuner key {key!r}{close_matches(str(key), TUNER_KEYS)}; "
                                f"known keys: {', '.join(TUNER_KEYS)}")
        seed = data.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UserError(f"{where}: tuner `seed` must be an integer, got {seed!r}")
        converged = data.get("converged_epochs", 6.0)
        if isinstance(converged, bool) or not isinstance(converged, (int, float)) or converged <= 0:
            raise UserError(f"{where}: tuner `converged_epochs` must be a number > 0, got {converged!r}")
        return cls(budget=_int(data, "budget", 40, 1, where), seed=seed,
                   startup_trials=_int(data, "startup_trials", 8, 0, where),
                   first_rung=_int(data, "first_rung", 2, 1, where), reduction=_int(data, "reduction", 3, 2, where),
                   converged_epochs=float(converged), search_epochs=_int(data, "search_epochs", 0, 0, where))

    def settings(self) -> dict:
        """The suite-wide settings (without the datasets' own)."""
        return {key: getattr(self, key) for key in TUNER_KEYS if key != DATASETS_KEY}

    def for_dataset(self, dataset) -> "Tuner":
        """The tuner of one dataset's rows: the suite-wide settings under that dataset's own."""
        own = dict(dict(self.by_dataset).get(str(dataset), ()))
        return dataclasses.replace(self, by_dataset=()) if not own else \
            self._parse_settings({**self.settings(), **own}, f"tuner of dataset {dataset}")

    def with_settings(self, settings: dict, where: str) -> "Tuner":
        """These settings over every level (``--tuner KEY=VALUE``: what the command line sets wins, for the suite
        and for each dataset that sets the key for itself)."""
        per_dataset = {d: {k: v for k, v in own if k not in settings} for d, own in self.by_dataset}
        return Tuner.parse({**self.settings(), **settings, DATASETS_KEY: per_dataset}, where)

    def datasets(self) -> list[str]:
        """The datasets with settings of their own."""
        return [d for d, _ in self.by_dataset]


# ------------------------------------------------------------------------------------------------ the space
@dataclass(frozen=True)
class Axis:
    """One searched dimension. ``choices`` (categorical): each a mapping of config keys to values; ``low``,
    ``high``, ``log`` (float): the range of the config key ``name``."""

    name: str
    own: bool
    choices: tuple = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False

    @property
    def categorical(self) -> bool:
        return bool(self.choices)

    def distribution(self):
        import optuna

        if self.categorical:
            return optuna.distributions.CategoricalDistribution(list(range(len(self.choices))))
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)

    def config(self, value) -> dict:
        """The config keys this axis sets for an encoded value (a choice's index, or the float)."""
        return dict(self.choices[value]) if self.categorical else {self.name: value}


def _axis(name: str, value, own: bool, where: str) -> Axis | None:
    if isinstance(value, dict) and ("low" in value or "high" in value):
        unknown = set(value) - {"low", "high", "log"}
        low, high, log = value.get("low"), value.get("high"), bool(value.get("log", False))
        if unknown or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) \
                or not low < high or (log and low <= 0):
            raise UserError(f"{where}: tuner_space {name!r} must be {{low: a, high: b[, log: true]}} with a < b (and "
                            f"a > 0 on a log scale), got {value!r}")
        if own:
            raise UserError(f"{where}: the row's own key {name!r} must list its values (each is trained to "
                            f"convergence at the chosen recipe), not a range")
        return Axis(name=name, own=own, low=float(low), high=float(high), log=log)
    if not isinstance(value, list):
        return None  # a scalar: fixed, not searched
    if not value:
        raise UserError(f"{where}: tuner_space key {name!r} has an empty list; give at least one value")
    if any(isinstance(v, dict) for v in value) and not all(isinstance(v, dict) and v for v in value):
        raise UserError(f"tuner_space key {name!r} mixes mappings and values; a joint axis lists only mappings "
                        f"of config keys (key: value), a plain axis only values")
    choices = tuple(dict(v) if isinstance(v, dict) else {name: v} for v in value)
    return Axis(name=name, own=own, choices=choices)


def search_space(shared: dict, own: dict, fixed, where: str) -> tuple[list, dict]:
    """The axes of one row (shared recipe first, then its own keys) and the fixed keys (scalars of the spaces).
    ``fixed``: the keys the row's overrides set, which the row does not search."""
    if len([k for k, v in own.items() if isinstance(v, (list, dict))]) > MAX_OWN_KEYS:
        raise UserError(f"{where}: a row searches at most {MAX_OWN_KEYS} of its own keys, got "
                        f"{', '.join(own)}; keep the ones that define the method")
    axes, constants = [], {}
    for space, is_own in ((shared, False), (own, True)):
        for name, value in space.items():
            if name == "seed" or (not is_own and name in own):
                continue
            axis = _axis(name, value, is_own, where)
            if axis is None:
                constants[name] = value
            elif not (set(axis.config(0) if axis.categorical else {name}) & set(fixed)):
                axes.append(axis)
    return axes, constants


def round_value(value: float) -> float:
    """``value`` to :data:`SIGNIFICANT_DIGITS` significant digits (what a trial runs and TPE is told)."""
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


# ------------------------------------------------------------------------------------------------ trials
@dataclass(frozen=True)
class TrialSpec:
    """A trial of a row: its index, stage (``search`` or ``sweep``), encoded values (axis name -> choice index or
    float), config keys, and its epoch cap when the budget cut it (else ``None``)."""

    index: int
    stage: str
    values: tuple
    point: dict = field(hash=False, compare=False)
    epochs: int | None = None

    @property
    def label(self) -> str:
        return f"{self.stage} {self.index + 1}"


@dataclass
class Trial:
    """Where a planned run stands in its row's search: the row, its spec, the row's search and its earlier trials
    (their specs and store keys: the sampler and the pruner replay them)."""

    row: str
    spec: TrialSpec
    search: "RowSearch"
    earlier: list = field(default_factory=list)  # (TrialSpec, run key) of trials 0..index-1

    @property
    def index(self) -> int:
        return self.spec.index

    @property
    def monitor_mode(self) -> str:
        return self.search.mode


def decade_of(value: float) -> int:
    """The decade ``floor(log10(value))`` of a positive value (a learning rate), robust to rounding at 10^k."""
    return math.floor(math.log10(value) + 1e-9)


def _best(values, mode: str) -> float:
    return max(values) if mode == "max" else min(values)


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def epoch_values(history: list, mode: str) -> list:
    """``(epoch, best monitor of epochs 1..epoch)`` at each epoch end of a stored ``valid_history``."""
    out, best = [], None
    for entry in history or []:
        best = entry["monitor"] if best is None else _best([best, entry["monitor"]], mode)
        if entry.get("epoch_end", True):
            out.append((int(entry["epoch"]), best))
    return out


def converged(spec: TrialSpec, result: dict | None, full_cap: int) -> bool:
    """Not pruned, and ended by early stopping, or at the row's full epoch cap (not at a cap the budget cut)."""
    if result is None or result.get("stopped_by") or not result.get("valid_history"):
        return False
    cap = spec.epochs or full_cap
    return int(result.get("epochs_run") or 0) < cap or cap >= full_cap


def best_monitor(result: dict | None, mode: str) -> float | None:
    """The validation monitor of the model a run returned: the best of its history (the kept checkpoint's), or,
    for a model that keeps each domain's best state (``domain_monitor`` in its entries: Single Domain), the
    last entry, which describes that composite model."""
    history = (result or {}).get("valid_history") or []
    if not history:
        return None
    if "domain_monitor" in history[-1]:
        return float(history[-1]["monitor"])
    return _best([h["monitor"] for h in history], mode)


class RowSearch:
    """The search of one row on one dataset: given its stored trials, the next one (or ``None``: done)."""

    def __init__(self, row: str, axes: list, constants: dict, tuner: Tuner, mode: str, full_cap: int):
        self.row, self.axes, self.constants, self.tuner = row, axes, constants, tuner
        self.mode, self.full_cap = mode, int(full_cap)
        self.by_name = {a.name: a for a in axes}

    # -------------------------------------------------------------------------------- what trials mean
    def point(self, values: tuple, epochs: int | None = None) -> dict:
        out = dict(self.constants)
        for name, value in values:
            out.update(self.by_name[name].config(value))
        if epochs is not None:
            out["epochs"] = epochs
        return out

    def spec(self, index: int, stage: str, values: dict, epochs: int | None = None) -> TrialSpec:
        ordered = tuple((a.name, values[a.name]) for a in self.axes)
        return TrialSpec(index=index, stage=stage, values=ordered, point=self.point(ordered, epochs), epochs=epochs)

    # -------------------------------------------------------------------------------- Optuna
    def study(self, done: list, index: int):
        """An in-memory Optuna study holding the row's stage-1 trials ``done`` (``(spec, result)``), replayed
        through the sampler and pruner in their order, so the pruner's rungs are as they were when each ran."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        seed = int.from_bytes(hashlib.sha256(f"{self.tuner.seed}:{self.row}:{index}".encode()).digest()[:4], "big")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multivariate TPE is marked experimental
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.tuner.startup_trials,
                                                 multivariate=True)
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=self.tuner.first_rung,
                                                        reduction_factor=self.tuner.reduction,
                                                        min_early_stopping_rate=0, bootstrap_count=0)
        study = optuna.create_study(direction="maximize" if self.mode == "max" else "minimize", sampler=sampler,
                                    pruner=pruner)
        for spec, result in done:
            if spec.stage != "search":
                continue
            trial = self._ask(study, spec)
            for epoch, value in epoch_values((result or {}).get("valid_history"), self.mode):
                trial.report(value, epoch)
                trial.should_prune()
            if result is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            elif converged(spec, result, self.full_cap):
                study.tell(trial, best_monitor(result, self.mode))
            else:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return study

    def _ask(self, study, spec: TrialSpec | None = None):
        if spec is not None:
            study.enqueue_trial(dict(spec.values))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return study.ask({a.name: a.distribution() for a in self.axes})

    def pruner(self, done: list, spec: TrialSpec) -> "Pruner":
        study = self.study(done, spec.index)
        return Pruner(self._ask(study, spec), self.mode, self.tuner.reduction)

    # -------------------------------------------------------------------------------- the next trial
    def epochs_used(self, done: list) -> int:
        return sum(int((result or {}).get("epochs_run") or 0) for _, result in done)

    def sweep_size(self) -> int:
        """Stage 2's trials, counted before it starts: the other own values and the decades but the chosen
        point's (the chosen point itself is usually converged already: the pruner lets the best go on)."""
        own = sum(len(a.choices) - 1 for a in self.axes if a.own)
        # with capped stage-1 trials the chosen point is not converged yet: one more trial
        return own + max(0, len(self.decades()) - 1) + (1 if self.tuner.search_epochs else 0)

    def reserve(self, done: list) -> float:
        runs = [int(r["epochs_run"]) for s, r in done if converged(s, r, self.full_cap)]
        per_trial = sum(runs) / len(runs) if runs else self.tuner.converged_epochs
        return self.sweep_size() * per_trial

    def next(self, done: list) -> TrialSpec | None:
        """The trial after ``done`` (``(spec, stored result or None)`` of every earlier trial), or ``None``."""
        if not any(s.stage == "sweep" for s, _ in done):
            left = int(math.floor(self.tuner.budget - self.reserve(done) - self.epochs_used(done)))
            if left >= self.tuner.first_rung and self.axes:
                trial = self._ask(self.study(done, len(done)))
                values = {a.name: (trial.params[a.name] if a.categorical else round_value(trial.params[a.name]))
                          for a in self.axes}
                cap = min(left, self.tuner.search_epochs or self.full_cap)
                return self.spec(len(done), "search", values, cap if cap < self.full_cap else None)
        return self._next_sweep(done)

    def chosen(self, done: list, stage: str | None = None) -> int | None:
        """Index in ``done`` of the best converged trial (of ``stage`` only, when given); a tie: the earlier."""
        return self._best_index(done, lambda spec, result: (not stage or spec.stage == stage)
                                and converged(spec, result, self.full_cap))

    def _stage_one_choice(self, search: list) -> int:
        """Index in ``search`` of the trial stage 2 starts from: the best validation monitor among the trials not
        pruned - converged, or cut by the budget (its value at the cut is what it reached so far, so a cut trial
        ahead of every converged one is the most promising point and is trained to the end) - else among all.
        A tie goes to the earlier trial."""
        best = self._best_index(search, lambda _, result: bool(result) and not result.get("stopped_by"))
        if best is None:
            best = self._best_index(search, lambda _, result: True)
        return 0 if best is None else best

    def _best_index(self, done: list, eligible) -> int | None:
        """Index in ``done`` of the best validation monitor among the trials ``eligible(spec, result)`` admits
        (``None``: no such trial with a monitor); a tie goes to the earlier."""
        best, best_value = None, None
        for i, (spec, result) in enumerate(done):
            if not eligible(spec, result):
                continue
            value = best_monitor(result, self.mode)
            if value is not None and (best_value is None or _better(value, best_value, self.mode)):
                best, best_value = i, value
        return best

    def _next_sweep(self, done: list) -> TrialSpec | None:
        """Stage 2: first the stage-1 choice trained to convergence and its learning rate moved into every decade
        without a converged trial; then, around the best converged trial so far (the recipe from here on), every
        other value of each own key. Own values change no recipe key, so the recipe of the final choice is the
        one every own value was trained at."""
        search = [(s, r) for s, r in done if s.stage == "search"]
        if not search:  # nothing to search (every key fixed): the row's one point, trained to convergence
            return None if done or self.axes else self.spec(0, "sweep", {})
        first = dict(search[self._stage_one_choice(search)][0].values)
        for values in [first, *self._decade_points(first, done)]:
            if self._new(values, done):
                return self.spec(len(done), "sweep", values)
        best = self.chosen(done)
        base = dict(done[best][0].values) if best is not None else first
        for values in self._own_points(base):
            if self._new(values, done):
                return self.spec(len(done), "sweep", values)
        return None

    def _new(self, values: dict, done: list) -> bool:
        """A point no converged trial and no stage-2 trial of the row has had."""
        return not any(dict(s.values) == values and (s.stage == "sweep" or converged(s, r, self.full_cap))
                       for s, r in done)

    def _own_points(self, base: dict):
        for axis in self.axes:
            if axis.own:
                for choice in range(len(axis.choices)):
                    if choice != base[axis.name]:
                        yield {**base, axis.name: choice}

    def _decade_points(self, base: dict, done: list):
        lr = self.by_name.get(LEARNING_RATE)
        if lr is None or lr.categorical:
            return
        for decade in self.decades():
            covered = any(converged(s, r, self.full_cap) and decade_of(dict(s.values)[LEARNING_RATE]) == decade
                          for s, r in done)
            if not covered:
                mantissa = base[LEARNING_RATE] / 10 ** decade_of(base[LEARNING_RATE])
                moved = min(max(mantissa * 10 ** decade, lr.low), lr.high)
                yield {**base, LEARNING_RATE: round_value(moved)}

    def decades(self) -> list:
        """The decades (``floor(log10)``) the learning-rate range spans; none when it is not a float axis."""
        lr = self.by_name.get(LEARNING_RATE)
        if lr is None or lr.categorical:
            return []
        # the top of the range opens no decade of its own: [1e-4, 1e-2] spans the decades of 1e-4 and 1e-3
        return list(range(decade_of(lr.low), math.floor(math.log10(lr.high) - 1e-9) + 1))


class Pruner:
    """The validation callback of one stage-1 trial (``MultiDomainModel.validation_callbacks``): at each epoch end
    it reports the best monitor so far to its Optuna trial and returns a reason to stop when the pruner says so."""

    def __init__(self, trial, mode: str = "max", reduction: int = 3):
        self.trial, self.mode, self.reduction = trial, mode, reduction
        self.best: float | None = None

    def __call__(self, entry: dict) -> str | None:
        value = float(entry["monitor"])
        self.best = value if self.best is None else _best([self.best, value], self.mode)
        if not entry.get("epoch_end", True):
            return None
        epoch = int(entry["epoch"])
        self.trial.report(self.best, epoch)
        if self.trial.should_prune():
            return f"pruned at epoch {epoch}: not in the best 1/{self.reduction} of its row's trials at this rung"
        return None


def pruner_for(trial: Trial, store) -> Pruner | None:
    """The pruner of a stage-1 trial about to run, from its row's stored earlier trials (``store``: an open
    :class:`~mdl_bench.benchmark.store.Store`); ``None`` for a sweep trial."""
    if trial.spec.stage != "search":
        return None
    return trial.search.pruner(stored_trials(trial.earlier, store), trial.spec)


def stored_trials(earlier: list, store) -> list:
    """``(spec, stored result or None)`` of ``earlier`` (``(spec, run key)``)."""
    out = []
    for spec, key in earlier:
        run_id = store.run_id(*key)
        out.append((spec, store.get_run(run_id)["result"] if run_id is not None else None))
    return out


def selection_value(result: dict, mode: str) -> float | None:
    """A stored trial's score: its best validation monitor; ``None`` for a pruned trial."""
    if result.get("stopped_by"):
        return None
    return best_monitor(result, mode)
