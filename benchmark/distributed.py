"""Data-parallel training on PyTorch's own engine: DDP launched by ``torchrun`` (gloo on CPU, nccl on GPU).

``torchrun --nproc_per_node=N $(which mdl-bench) run-expid --expid ID`` starts ``N`` copies of the run. Each
finds its rank in the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), and:

* the model is wrapped in ``DistributedDataParallel`` and training steps call the wrapper (calling
  ``module.forward`` directly, as FuxiCTR's ``fit`` does, would skip the gradient all-reduce and let the ranks
  drift apart);
* every rank reads its own slice of each global batch of the epoch's permutation (the same permutation on every
  rank, reshuffled each epoch), so the global batch size is the configured one;
* evaluation shards rows contiguously by rank and gathers predictions, labels, domains and user ids, so metrics
  are computed exactly on all rows, none twice; every rank computes the same numbers, so early stopping and
  learning-rate decisions agree without extra messages;
* rank 0 writes checkpoints, logs and results; the others wait at barriers.

With one process none of this is active and a run behaves exactly as before.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .errors import UserError


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


def init(params: dict) -> DistInfo:
    """Join the process group when launched by torchrun; pick the device of this rank. No-op otherwise."""
    info = env_info()
    if not info.active:
        return info
    if not dist.is_initialized():
        use_cuda = int(params.get("gpu", -1)) >= 0 and torch.cuda.is_available()
        if use_cuda:
            params["gpu"] = info.local_rank  # one GPU per local rank
            torch.cuda.set_device(info.local_rank)
        timeout = datetime.timedelta(seconds=float(params.get("dist_timeout", 600)))
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
    return current()


def wrap(model) -> None:
    """Wrap ``model`` in DDP and let its train step call the wrapper (stored outside the module tree)."""
    info = current()
    if not info.active:
        return
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [model.device.index] if model.device.type == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=device_ids)
    object.__setattr__(model, "_ddp", ddp)  # not a submodule: the module tree stays the model's own


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
