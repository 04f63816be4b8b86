"""The collectives a model needs under data-parallel training (each is the identity with one process).

A process is rank 0 of 1 unless its process group is initialised (:mod:`mdl_bench.benchmark.distributed` starts
and joins it). Under DDP a model gathers its predictions over ranks, rank 0 writes checkpoints while the others
wait, and normalisation statistics are made rank 0's before evaluating or saving.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from mdl_bench.kernel.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """This process's place in a torchrun launch (rank 0 of 1 when not launched by torchrun)."""
    try:
        return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                        int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise UserError("RANK/WORLD_SIZE/LOCAL_RANK must be integers; launch with torchrun") from None


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), env_info().local_rank)
    return DistInfo()


def sync_buffers(model) -> None:
    """Give every rank rank 0's buffers (running statistics of normalisation layers).

    DDP broadcasts them at each forward, so after the last training step every rank holds its own batch
    statistics; evaluating or saving on those would differ by rank."""
    if not current().active:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def barrier() -> None:
    if current().active:
        dist.barrier()


def gather_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate each array over ranks in rank order (rank 0's rows first); identity with one process."""
    info = current()
    if not info.active:
        return arrays
    parts: list = [None] * info.world_size
    dist.all_gather_object(parts, arrays)
    return {key: np.concatenate([p[key] for p in parts]) for key in arrays}


def all_agree(flag: bool) -> bool:
    """True on every rank iff ``flag`` is true on every rank."""
    if not current().active:
        return flag
    value = torch.tensor([1 if flag else 0])
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # already torn down by a failing peer
            logging.debug("process group already destroyed")
