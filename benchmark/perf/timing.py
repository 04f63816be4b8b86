"""Timing helpers of ``mdl-bench perf``: the clock, medians, batches, and the step as perf times it.

Every timed step is :func:`mdl_bench.model_zoo.core.step.train_step`, the step training runs: the bare loop times
it whole, :func:`split_steps` reads the clock between its phases (its ``mark`` callback), and
:func:`component_times` times the parts a model names itself (:meth:`MultiDomainModel.step_components`).
"""
from __future__ import annotations

import contextlib
import itertools
import os
from collections import defaultdict
from typing import Callable, Iterable, Iterator

import numpy as np

from mdl_bench.model_zoo.core.step import PHASES, now, train_step

#: FuxiCTR's ``fit`` default clip norm, used where a run's config does not set ``max_gradient_norm``
DEFAULT_MAX_NORM = 10.0


def median(values) -> float:
    """Median of the values that are not ``None`` (NaN when there are none)."""
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else float("nan")


class FirstBatches:
    """The first ``n`` batches of a loader, as a loader (``len``, ``set_epoch`` and the rest pass through)."""

    def __init__(self, loader, n: int | None):
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return len(self.loader) if self.n is None else min(self.n, len(self.loader))

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.loader), len(self))

    def __getattr__(self, name):
        return getattr(self.loader, name)


@contextlib.contextmanager
def silent():
    """Training prints tqdm bars to stdout (``verbose: 1``, as run-expid); keep them out of the report."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def batch_rows(batch: dict) -> int:
    """``B``, the rows of a batch ``{column: tensor of B rows}``."""
    return int(next(iter(batch.values())).shape[0])


def bare_loop(model, batches: list[dict], max_norm: float = DEFAULT_MAX_NORM) -> list[float]:
    """The ceiling: the training step on in-memory batches. Returns the seconds of each step.

    ``model`` is a multi-domain model or a plain FuxiCTR ``BaseModel`` (the stock side's)."""
    times = []
    model.train()
    for batch in batches:
        tick = now(model.device)
        train_step(model, batch, max_norm)
        times.append(now(model.device) - tick)
    return times


def split_steps(model, batch_source: Iterable[dict], n: int, max_norm: float = DEFAULT_MAX_NORM,
                with_min: bool = False) -> dict[str, float]:
    """Median milliseconds of data (next batch), forward (+ loss), backward and optimiser (zero_grad, clip, step)
    over ``n`` steps, and of the whole ``step``; ``batch_source`` is a loader (data time measured) or a list of
    in-memory batches. ``with_min``: also ``step_min``, the fastest step (the least disturbed on a shared machine)."""
    parts: dict[str, list[float]] = defaultdict(list)
    iterator = iter(batch_source)
    model.train()
    for _ in range(n):
        start = now(model.device)
        try:
            batch = next(iterator)
        except StopIteration:
            break
        ticks = {"data": now(model.device)}

        def mark(phase: str) -> None:
            ticks[phase] = now(model.device)

        train_step(model, batch, max_norm, mark=mark)
        ends = [ticks[p] for p in PHASES]  # zero_grad, forward, backward, optimizer
        parts["data"].append(ticks["data"] - start)
        parts["forward"].append(ends[1] - ends[0])
        parts["backward"].append(ends[2] - ends[1])
        parts["optimizer"].append((ends[0] - ticks["data"]) + (ends[3] - ends[2]))
        parts["step"].append(ends[3] - start)
    out = {k: 1000 * median(v) for k, v in parts.items()}
    if with_min and parts["step"]:
        out["step_min"] = 1000 * min(parts["step"])
    return out


def closure_times(parts: dict[str, Callable], device, repeats: int) -> dict[str, list[float]]:
    """Forward+backward milliseconds of each closure (a scalar's ``backward()``), every one of ``repeats`` calls
    after one untimed call."""
    out = {}
    for name, closure in parts.items():
        times = []
        for _ in range(repeats + 1):
            tick = now(device)
            closure().backward()
            times.append(1000 * (now(device) - tick))
        out[name] = times[1:]
    return out


def time_closures(parts: dict[str, Callable], device, repeats: int) -> dict[str, float]:
    """Median forward+backward milliseconds of each closure over ``repeats`` calls (:func:`closure_times`)."""
    return {name: median(times) for name, times in closure_times(parts, device, repeats).items()}


def component_times(model, batch: dict, repeats: int, stat: Callable = median) -> dict[str, float] | None:
    """Forward+backward milliseconds of each part of a step that the model names
    (:meth:`MultiDomainModel.step_components`, e.g. embedding, experts, gate, towers, auxiliary loss), the
    ``stat`` (median, or e.g. ``min``) of ``repeats`` calls, or ``None`` for a model that does not split its step."""
    X = model.get_inputs(batch)
    parts = model.step_components(X, model.domain_of(X))
    if parts is None:
        return None
    out = {name: stat(times) for name, times in closure_times(parts, model.device, repeats).items()}
    model.zero_grad(set_to_none=True)
    return out
