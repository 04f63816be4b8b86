"""The training loop's state and its early-stopping rule, owned by this package (not FuxiCTR's private fields).

The rule is FuxiCTR 2.3.10's, kept exactly so that results do not move: a validation *improves* when the monitor
beats the best so far by at least ``min_delta`` (``>= best + min_delta`` for ``max``, ``<= best - min_delta`` for
``min``); otherwise it is a *plateau*, which counts towards ``early_stop_patience`` (plateaus in a row) and, with
``reduce_lr_on_plateau``, multiplies every learning rate by 0.1 (never below 1e-6).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

LR_DECAY_FACTOR = 0.1
MIN_LEARNING_RATE = 1e-6
MIN_DELTA = 1e-6


@dataclass
class TrainingState:
    """Where one ``fit`` stands. Counters are 0-based; ``epochs_run`` and ``best_epoch`` count from 1."""

    steps_per_epoch: int = 0
    eval_steps: int = 0  # validate every this many steps (FuxiCTR's ``eval_steps`` rule)
    epoch: int = 0
    batch: int = 0
    total_steps: int = 0
    best_metric: float = -math.inf
    stopping_steps: int = 0  # validations in a row without improvement
    stop: bool = False
    stopped_by: str | None = None  # a validation callback's reason for ending early (a pruned trial)
    best_epoch: int | None = None  # epoch (from 1) of the validation that wrote the kept checkpoint

    @classmethod
    def start(cls, steps_per_epoch: int, eval_steps: int | None, monitor_mode: str) -> "TrainingState":
        return cls(steps_per_epoch=steps_per_epoch, eval_steps=int(eval_steps or steps_per_epoch),
                   best_metric=math.inf if monitor_mode == "min" else -math.inf)

    @property
    def epochs_run(self) -> int:
        return self.epoch + 1

    @property
    def at_epoch_end(self) -> bool:
        return self.batch + 1 >= self.steps_per_epoch


def improves(value: float, best: float, monitor_mode: str, min_delta: float = MIN_DELTA) -> bool:
    """Whether a validation's monitor ``value`` improves on ``best`` (FuxiCTR's comparison, boundaries included)."""
    if monitor_mode == "min":
        return not value > best - min_delta
    return not value < best + min_delta


def record_validation(state: TrainingState, value: float, monitor_mode: str, patience: int,
                      min_delta: float = MIN_DELTA) -> bool:
    """Update ``state`` with one validation; True if it improved (the caller then writes the checkpoint). Sets
    ``state.stop`` once ``patience`` plateaus came in a row."""
    improved = improves(value, state.best_metric, monitor_mode, min_delta)
    if improved:
        state.stopping_steps = 0
        state.best_metric = value
        state.best_epoch = state.epoch + 1
    else:
        state.stopping_steps += 1
    if state.stopping_steps >= patience:
        state.stop = True
    return improved


def record_unmeasured(state: TrainingState, patience: int) -> bool:
    """Update ``state`` with a validation whose monitor could not be measured (NaN: e.g. no validation rows of
    one class). It counts as a plateau, so that patience still ends training; the first validation of a ``fit``
    counts as an improvement (True) so that a best state exists. ``best_metric`` keeps its value."""
    if state.best_epoch is None:
        state.best_epoch = state.epoch + 1
        return True
    state.stopping_steps += 1
    if state.stopping_steps >= patience:
        state.stop = True
    return False


def decay_group_learning_rate(group: dict, factor: float = LR_DECAY_FACTOR, floor: float = MIN_LEARNING_RATE) -> float:
    """Multiply one optimiser parameter group's learning rate by ``factor``, not below ``floor``; the new rate."""
    group["lr"] = max(group["lr"] * factor, floor)
    return group["lr"]


def decay_learning_rate(optimizer, factor: float = LR_DECAY_FACTOR, floor: float = MIN_LEARNING_RATE) -> float:
    """Multiply every parameter group's learning rate by ``factor``, not below ``floor``; the new rate."""
    rate = float("nan")
    for group in optimizer.param_groups:
        rate = decay_group_learning_rate(group, factor, floor)
    return rate
