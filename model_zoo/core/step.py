"""The training step, written once, and the clock that times it.

Every place that trains calls :func:`train_step`: the trainer (:meth:`MultiDomainModel.train_step`, under
its own ``fit``), and every measurement of ``mdl-bench perf`` - the bare loop, the step split into phases, and the
stock FuxiCTR models of its child process (plain ``fuxictr.pytorch.models.BaseModel`` subclasses). A measurement
therefore times the very operations training runs, in the same order, and a change to the step changes them all.

The order is FuxiCTR's ``BaseModel.train_step``: zero_grad; forward; labels and loss; backward; clip the gradient
norm (of all parameters together, or of each of a model's :func:`clip_groups`); optimiser step. Training is
bit-identical to that order; do not reorder it.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Mapping, Protocol

import torch

#: the phases of a step, in order; ``mark(phase)`` is called right after each one ends
PHASES = ("zero_grad", "forward", "backward", "optimizer")


class Trainable(Protocol):
    """What a step needs of a model: FuxiCTR's ``BaseModel`` has all of it (after ``compile``)."""

    optimizer: torch.optim.Optimizer

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]: ...

    def get_labels(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor: ...

    def compute_loss(self, return_dict: dict[str, Any], y_true: torch.Tensor) -> torch.Tensor: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...


def train_step(model: Trainable, batch: Mapping[str, torch.Tensor], max_gradient_norm: float,
               module: Callable[[Mapping[str, torch.Tensor]], dict[str, Any]] | None = None,
               mark: Callable[[str], None] | None = None) -> torch.Tensor:
    """One optimiser step of ``model`` on ``batch``; returns the loss (a scalar tensor, not detached).

    Args:
        model: owns the optimiser, the labels, the loss and the parameters that are clipped.
        batch: ``{column: tensor}`` of ``B`` rows, labels included (a loader's batch).
        max_gradient_norm: the total gradient norm (of each of :func:`clip_groups`) is clipped to this (FuxiCTR's
            ``fit`` default: 10).
        module: what the forward goes through (default ``model``). Under DDP this must be the wrapper, or the
            gradients are never all-reduced.
        mark: called with each name of :data:`PHASES` right after that phase, so that a caller can read a clock
            between phases (``forward`` ends after the loss; ``optimizer`` after clipping and the step).
    """
    model.optimizer.zero_grad()
    if mark is not None:
        mark("zero_grad")
    return_dict = (module if module is not None else model)(batch)
    y_true = model.get_labels(batch)
    loss = model.compute_loss(return_dict, y_true)
    if mark is not None:
        mark("forward")
    loss.backward()
    if mark is not None:
        mark("backward")
    for params in clip_groups(model):
        torch.nn.utils.clip_grad_norm_(params, max_gradient_norm)
    model.optimizer.step()
    if mark is not None:
        mark("optimizer")
    return loss


def clip_groups(model: Trainable) -> list:
    """The sets of parameters whose gradient norm is clipped as one: by default all of the model's (FuxiCTR's
    step); a model that trains independent models side by side declares ``gradient_clip_groups()`` (one
    parameter list per model), so that each is clipped on its own norm, as it would be trained alone."""
    declared = getattr(model, "gradient_clip_groups", None)
    return [model.parameters()] if declared is None else declared()


def now(device: torch.device | None = None) -> float:
    """``time.perf_counter()``, after the queued kernels of ``device`` have finished when it is a CUDA device
    (CUDA runs asynchronously: without the wait, a step's time would land in whatever is timed next)."""
    if device is not None and getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
