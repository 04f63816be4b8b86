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

Without torchrun, ``nproc: N`` in a run's config (``mdl-bench run --suite S --nproc N``, or ``--set nproc=N``)
makes :func:`launch` start the ``N`` ranks on this machine itself, with a clear error when one of them fails.
"""
from __future__ import annotations

import datetime
import logging
import os
import queue
import socket
import time
import traceback
from typing import Any

import torch
import torch.distributed as dist

from ..model_zoo.core.collectives import DistInfo, current, env_info, shutdown
from mdl_bench.kernel.errors import UserError
from .procs import die_with_parent


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
    """Wrap ``model`` in DDP and let its train step call the wrapper (:meth:`attach_data_parallel`)."""
    info = current()
    if not info.active:
        return
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [model.device.index] if model.device.type == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=device_ids)
    model.attach_data_parallel(ddp)


# ------------------------------------------------------------------------------------------------ local launcher
class RankFailed(UserError):
    """A rank of a launched group failed; the others were stopped."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_main(fn, args, kwargs, rank: int, nproc: int, port: int, threads: int, messages, parent_pid: int,
               progress: bool) -> None:
    die_with_parent(parent_pid)  # a killed launcher takes its ranks with it
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nproc),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads))
    torch.set_num_threads(threads)
    if rank == 0 and progress:
        kwargs = dict(kwargs, step_callback=lambda info: messages.put(("progress", rank, dict(info))))
    try:
        value = fn(*args, **kwargs)
        messages.put(("ok", rank, value if rank == 0 else None))
    except BaseException as exc:  # reported to the launcher, which stops the other ranks
        text = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        messages.put(("error", rank, (text.splitlines()[0] if text else type(exc).__name__, traceback.format_exc())))
    finally:
        shutdown()


def _first_failure(procs, messages, done: dict, errors: list, poll_seconds: float) -> tuple[int, str, str] | None:
    """The failure to report: a rank that died without a word (its peers' errors are only lost connections),
    else the first error reported. Waits a moment for the last messages in the pipe."""
    time.sleep(poll_seconds)
    while True:
        try:
            kind, rank, payload = messages.get_nowait()
        except queue.Empty:
            break
        if kind == "ok":
            done[rank] = payload
        elif kind == "error":
            errors.append((rank, *payload))
    reported = {e[0] for e in errors}
    for rank, proc in enumerate(procs):
        if rank not in done and rank not in reported and proc.exitcode not in (None, 0):
            how = (f"was killed by signal {-proc.exitcode}" if proc.exitcode < 0
                   else f"exited with code {proc.exitcode}")
            return rank, f"the process {how}", ""
    if errors:
        return errors[0]
    for rank, proc in enumerate(procs):
        if rank not in done and proc.exitcode is not None:
            return rank, f"the process exited with code {proc.exitcode} before reporting a result", ""
    return None


def launch(fn, args: tuple = (), kwargs: dict | None = None, nproc: int = 2, threads: int | None = None,
           step_callback=None, poll_seconds: float = 0.2):
    """Run ``fn(*args, **kwargs)`` in ``nproc`` fresh processes forming one process group on this machine (what
    ``torchrun --standalone --nproc_per_node=nproc`` does) and return rank 0's value.

    With ``step_callback`` given, rank 0 gets ``step_callback=`` forwarding its progress to ``step_callback`` here. When a rank raises or dies,
    the others are stopped at once (they would wait forever in their next collective) and :class:`RankFailed`
    names the rank and its error; the full traceback goes to the log.
    """
    import multiprocessing as mp

    if nproc < 1:
        raise UserError(f"nproc must be a positive number of processes, got {nproc}")
    threads = threads or max(1, torch.get_num_threads() // nproc)
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_main, name=f"mdl-bench-rank{rank}",
                         args=(fn, args, kwargs or {}, rank, nproc, port, threads, messages, os.getpid(),
                               step_callback is not None))
             for rank in range(nproc)]
    for proc in procs:
        proc.start()
    done: dict[int, Any] = {}
    failure: tuple[int, str, str] | None = None
    try:
        while failure is None and len(done) < nproc:
            try:
                kind, rank, payload = messages.get(timeout=poll_seconds)
            except queue.Empty:
                if any(p.exitcode is not None for r, p in enumerate(procs) if r not in done):
                    failure = _first_failure(procs, messages, done, [], poll_seconds)
                continue
            if kind == "progress":
                if step_callback is not None:
                    step_callback(payload)
            elif kind == "ok":
                done[rank] = payload
            else:
                failure = _first_failure(procs, messages, done, [(rank, *payload)], poll_seconds)
    finally:
        for proc in procs:
            if failure is not None and proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
    if failure is not None:
        rank, message, trace = failure
        if trace:
            logging.error(f"rank {rank} of {nproc} failed:\n{trace}")
        raise RankFailed(f"rank {rank} of {nproc} failed: {message}; the other ranks were stopped")
    return done[0]
