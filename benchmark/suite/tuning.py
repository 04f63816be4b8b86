"""Tuning suites: one search protocol for every row, every trial a run in the results store.

A suite with a ``tuner:`` block is a tuning suite. Its ``tuner_space`` (FuxiCTR's autotuner idiom: a list is a
grid axis, a scalar is fixed; a list of mappings is one axis whose points set several keys together) is the
search space *shared* by every row (the training recipe); a row's own ``tuner_space`` adds at most a few of the
method's own hyperparameters. ``tuner``::

    tuner:
      trials: 12        # trials per row (the same budget for every method); omitted: the whole grid
      seed: 2024        # the draw: trial i of every row gets the same shared (recipe) point
      rungs: [1, 3]     # successive halving: at the end of these epochs a trial goes on only if ...
      keep: 0.34        # ... its best validation monitor so far ranks in this top fraction of its row's
                        #     earlier trials at that epoch (at least the best one always goes on)

The draw: the shared grid's points in a seeded random order (drawn again, in a new order, when ``trials``
exceeds the grid), the same sequence for every row, so every method meets the same recipes; the row's own grid
likewise from a stream seeded by the row (its expid and dataset). Trial ``i`` of a row is shared point ``i``
plus own point ``i``. Without ``trials`` a row's trials are the whole grid, shared x own, in grid order.

A trial is a run whose config says ``evaluate_test: false``: it is trained until early stopping (or the
pruner) ends it, evaluated on the validation split only, and stored with its every validation
(``valid_history``). The test split is never read while tuning; the chosen values are run on it once, by the
suites that use the tuned defaults.

Pruning (successive halving on epochs, asynchronous as in ASHA, but in a fixed order so that it reproduces):
trial ``i`` is compared only with trials ``0..i-1`` of its row, which are stored before it starts (under
``--jobs N`` rows run side by side, each row's trials one after another). At the end of each rung epoch ``r`` its value is the best monitor of epochs ``1..r``;
the values of the earlier trials at ``r`` are the same quantity from their stored histories (a trial that
ended by early stopping before ``r`` counts with its final best; one pruned before ``r`` does not count). With
``n`` values (its own included) the trial goes on when it ranks within the best ``max(1, floor(n * keep))``.
Selection: the best validation monitor (the configured ``monitor``, ``monitor_mode``) among the trials that were
not pruned; a tie goes to the earlier trial. Everything is deterministic given the stored runs, so running the
suite again from its config alone (same seed, same code) picks the same values.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from mdl_bench.kernel.errors import UserError, close_matches

TUNER_KEYS = ("trials", "seed", "rungs", "keep")


@dataclass(frozen=True)
class Tuner:
    """The parsed ``tuner:`` block of a suite."""

    trials: int | None = None
    seed: int = 0
    rungs: tuple = ()
    keep: float = 1.0

    @classmethod
    def parse(cls, data, where: str) -> "Tuner":
        if not isinstance(data, dict):
            raise UserError(f"{where}: `tuner` must be a mapping ({', '.join(TUNER_KEYS)}); fix the suite file")
        for key in data:
            if key not in TUNER_KEYS:
                raise UserError(f"{where}, tuner: unknown tuner key {key!r}{close_matches(str(key), TUNER_KEYS)}; "
                                f"known keys: {', '.join(TUNER_KEYS)}")
        trials, seed = data.get("trials"), data.get("seed", 0)
        rungs, keep = data.get("rungs") or [], data.get("keep", 1.0)
        if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 1):
            raise UserError(f"{where}: tuner `trials` must be an integer >= 1 (or left out for the whole grid), got "
                            f"{trials!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UserError(f"{where}: tuner `seed` must be an integer, got {seed!r}")
        if not isinstance(rungs, list) or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1
                                                  for r in rungs):
            raise UserError(f"{where}: tuner `rungs` must be a list of epochs >= 1, got {rungs!r}")
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
            raise UserError(f"{where}: tuner `keep` must be a fraction in (0, 1], got {keep!r}")
        return cls(trials=trials, seed=seed, rungs=tuple(sorted(set(rungs))), keep=float(keep))


@dataclass
class Trial:
    """Where a planned run stands in its row's search: its index and the keys of the trials before it."""

    row: str
    index: int
    tuner: Tuner
    earlier: list = field(default_factory=list)  # run keys (config hash, seed, code) of trials 0..index-1
    monitor_mode: str = "max"


def _draw(points: list, count: int, stream: str) -> list:
    """``count`` of ``points`` in seeded random orders: every point once before any point twice."""
    rng = random.Random(stream)  # a str seed is hashed with SHA-512: the same draw on every machine and run
    out: list = []
    while len(out) < count:
        order = list(range(len(points)))
        rng.shuffle(order)
        out += [points[i] for i in order]
    return out[:count]


def trial_points(shared: list, own: list, tuner: Tuner, row: str) -> list:
    """The trials of one row: ``shared`` and ``own`` are the grid points (dicts) of the suite's and the row's
    ``tuner_space``; returns one merged point per trial."""
    if tuner.trials is None:
        return [{**s, **o} for s in shared for o in own]
    shared_seq = _draw(shared, tuner.trials, f"{tuner.seed}:shared")
    own_seq = _draw(own, tuner.trials, f"{tuner.seed}:{row}")
    return [{**s, **o} for s, o in zip(shared_seq, own_seq)]


# ------------------------------------------------------------------------------------------------ pruning
def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def _best(values, mode: str) -> float:
    return max(values) if mode == "max" else min(values)


def rung_value(history: list, rung: int, mode: str, pruned: bool) -> float | None:
    """A stored trial's value at rung epoch ``rung``: its best monitor over epochs ``1..rung`` once it finished
    epoch ``rung``; its final best if it ended by early stopping (not pruned) before; else ``None``."""
    if not history:
        return None
    reached = any(h["epoch"] > rung or (h["epoch"] == rung and h.get("epoch_end", True)) for h in history)
    if reached:
        return _best([h["monitor"] for h in history if h["epoch"] <= rung], mode)
    return None if pruned else _best([h["monitor"] for h in history], mode)


class Pruner:
    """The validation callback of one trial (``MultiDomainModel.validation_callbacks``): at the end of each rung
    epoch it ranks the trial among its row's earlier trials and returns a reason to stop when it falls outside
    the kept fraction. ``earlier``: the stored ``(valid_history, stopped_by)`` of trials ``0..i-1``."""

    def __init__(self, tuner: Tuner, earlier: list, mode: str = "max"):
        self.tuner, self.earlier, self.mode = tuner, list(earlier), mode
        self.history: list = []

    def __call__(self, entry: dict) -> str | None:
        self.history.append(entry)
        epoch = int(entry["epoch"])
        if epoch not in self.tuner.rungs or not entry.get("epoch_end", True):
            return None
        own = _best([h["monitor"] for h in self.history], self.mode)
        others = [v for v in (rung_value(h, epoch, self.mode, bool(s)) for h, s in self.earlier) if v is not None]
        n = len(others) + 1
        kept = max(1, math.floor(n * self.tuner.keep))
        rank = 1 + sum(1 for v in others if _better(v, own, self.mode))
        if rank > kept:
            return f"pruned at epoch {epoch}: rank {rank} of {n} trials (the best {kept} go on)"
        return None


def pruner_for(trial: Trial, store, key: tuple) -> Pruner:
    """The pruner of a trial about to run, from the stored results of its row's earlier trials (``store``: an
    open :class:`~mdl_bench.benchmark.store.Store`; a trial not stored, e.g. a failed one, does not count)."""
    earlier = []
    for other in trial.earlier:
        run_id = store.run_id(*other) if other != key else None
        if run_id is not None:
            result = store.get_run(run_id)["result"]
            earlier.append((result.get("valid_history") or [], result.get("stopped_by")))
    return Pruner(trial.tuner, earlier, trial.monitor_mode)


def selection_value(result: dict, mode: str) -> float | None:
    """A stored trial's score for selection: its best validation monitor; ``None`` for a pruned trial."""
    history = result.get("valid_history") or []
    if result.get("stopped_by") or not history:
        return None
    return _best([h["monitor"] for h in history], mode)


def select(results: list, mode: str) -> int | None:
    """Index of the chosen trial among ``results`` (stored results in trial order, ``None`` for a missing one)."""
    best, best_value = None, None
    for i, result in enumerate(results):
        value = selection_value(result, mode) if result is not None else None
        if value is not None and (best_value is None or _better(value, best_value, mode)):
            best, best_value = i, value
    return best
