"""Serve a built split from memory: loaded into tensors once, cut into (shuffled) batches each epoch.

This replaces FuxiCTR 2.3.10's Ray-Data parquet loader on the default path (no Ray process, no per-epoch
re-read). It follows FuxiCTR's loader contract, so it can be passed to ``RankDataLoader(data_loader=...)`` and
fed to ``BaseModel.fit``/``evaluate``/``predict``: ``len(loader)`` is the number of batches and iterating yields
``dict[str, Tensor]`` keyed by feature and label names.

Sharding for data-parallel training is built in: with ``world_size > 1`` every rank draws the same permutation
(seeded by ``seed`` and the epoch), cuts it into the same global batches of ``batch_size`` rows, and keeps its
own contiguous slice of each global batch. Without shuffling (evaluation) rank ``r`` gets the ``r``-th
contiguous block of rows, so the ranks together cover every row exactly once.

A split built in parts (``data_block_size > 0``: a folder of ``part-*.parquet``) is served by
:class:`StreamingLoader` instead, which never holds more than a shuffle buffer and one part per reader.
"""
from __future__ import annotations

import glob
import logging
import math
import os
import queue
import threading
from typing import Iterator

import numpy as np
import polars as pl
import torch

from mdl_bench.kernel.errors import UserError


def _column_tensor(series: pl.Series) -> torch.Tensor:
    if isinstance(series.dtype, (pl.Array, pl.List)):
        values = np.stack(series.to_numpy())
    else:
        values = series.to_numpy(writable=True)
    dtype = np.int64 if values.dtype.kind in "iub" else np.float32
    return torch.from_numpy(np.require(values, dtype=dtype, requirements=["C", "W"]))


def part_files(data_path: str) -> list[str]:
    """The parquet parts of a split built in parts (sorted by name), or ``[data_path]`` for a single file."""
    if not os.path.isdir(data_path):
        return [data_path]
    parts = sorted(glob.glob(os.path.join(data_path, "*.parquet")))
    if not parts:
        raise UserError(f"built data folder {data_path} holds no parquet part; delete the dataset folder so that "
                        f"it is rebuilt")
    return parts


def checked_parts(data_path: str, names: list[str]) -> list[str]:
    """The parts of a built split (see :func:`part_files`) after checking that they hold the columns ``names``."""
    parts = part_files(data_path)
    try:
        schema = pl.read_parquet_schema(parts[0])
    except Exception as exc:
        raise UserError(f"cannot read built data {data_path} ({str(exc).splitlines()[0]}); delete the dataset "
                        f"folder so that it is rebuilt") from None
    missing = [n for n in names if n not in schema]
    if missing:
        raise UserError(f"built data {data_path} has no column {missing[0]!r}; it was built from another config, so "
                        f"delete the dataset folder to rebuild it")
    return parts


def load_columns(feature_map, data_path: str, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Read the feature and label columns (or just ``names``) of a built split into CPU tensors; a split built
    in parts is read whole (for the analysis tools and small parted datasets)."""
    names = list(names) if names is not None else list(feature_map.features) + list(feature_map.labels)
    parts = checked_parts(data_path, names)
    frame = pl.read_parquet(parts if len(parts) > 1 else parts[0], columns=names)
    return {name: _column_tensor(frame[name]) for name in names}


class _EpochLoader:
    """What both loaders share: FuxiCTR's ``num_batches`` and the epoch that fixes the next pass's order."""

    epoch: int = 0
    _epoch_set: bool = False

    @property
    def num_batches(self) -> int:
        return len(self)

    def set_epoch(self, epoch: int) -> None:
        """Fix the permutation of the next pass (as ``DistributedSampler.set_epoch`` does)."""
        self.epoch = int(epoch)
        self._epoch_set = True


class InMemoryLoader(_EpochLoader):
    """Batches of one split from tensors held in memory.

    Args:
        feature_map: FuxiCTR ``FeatureMap`` of the dataset.
        data_path: built parquet file of the split.
        split: ``"train"``, ``"valid"`` or ``"test"`` (only used in log lines).
        batch_size: rows per (global) batch.
        shuffle: draw a new permutation every epoch.
        seed: base seed of the permutations (epoch ``e`` uses ``seed * 1_000_003 + e``).
        rank, world_size: this process's shard (see module docstring).
        columns: preloaded tensors (skips reading ``data_path``).
    """

    def __init__(self, feature_map, data_path: str | None = None, split: str = "train", batch_size: int = 4096,
                 shuffle: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 columns: dict[str, torch.Tensor] | None = None, **kwargs):
        if batch_size < 1:
            raise UserError(f"batch_size must be a positive integer, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.feature_map = feature_map
        self.split = split
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed or 0)
        self.rank, self.world_size = rank, world_size
        self.columns = columns if columns is not None else load_columns(feature_map, data_path)
        self.num_samples = int(next(iter(self.columns.values())).shape[0])
        self.num_blocks = 1
        self.epoch = 0
        self._epoch_set = False
        logging.info(f"{split.capitalize()} samples: {self.num_samples:,} in memory, "
                     f"{len(self)} batches of {self.batch_size}")

    def __len__(self) -> int:
        if self.shuffle:
            full, rest = divmod(self.num_samples, self.batch_size)
            return full + (1 if rest >= self.world_size or full == 0 else 0)
        lo, hi = self._eval_range()
        return math.ceil((hi - lo) / self.batch_size)

    def read_columns(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Whole columns of the split (all rows, in file order)."""
        return {name: self.columns[name] for name in names if name in self.columns}

    def _eval_range(self) -> tuple[int, int]:
        bounds = np.linspace(0, self.num_samples, self.world_size + 1).astype(np.int64)
        return int(bounds[self.rank]), int(bounds[self.rank + 1])

    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.shuffle:
            perm = self.permutation(self.epoch)
            starts = list(range(0, self.num_samples, self.batch_size)) + [self.num_samples]
            if len(starts) > 2 and starts[-1] - starts[-2] < self.world_size:
                del starts[-2]  # a last global batch too small to give every rank a row joins the one before
            for start, stop in zip(starts[:-1], starts[1:]):
                index = perm[start:stop]
                if self.world_size > 1:
                    index = torch.tensor_split(index, self.world_size)[self.rank]
                yield {name: col.index_select(0, index) for name, col in self.columns.items()}
            if not self._epoch_set:
                self.epoch += 1
            self._epoch_set = False
        else:
            lo, hi = self._eval_range()
            for start in range(lo, hi, self.batch_size):
                stop = min(start + self.batch_size, hi)
                yield {name: col[start:stop] for name, col in self.columns.items()}


class StreamingLoader(_EpochLoader):
    """Batches of a split built in parts, streamed with bounded memory.

    An epoch's parts are dealt round-robin to the ranks, and each rank's parts round-robin to its
    ``max(1, num_workers)`` readers, a reader being one (rank, worker) pair, the workers being reader threads: in a shuffled epoch the part order is a permutation drawn from ``seed``
    and the epoch, the same on every rank, so every part is read by exactly one reader and every row is served
    exactly once. A shuffling reader fills a buffer of at least ``shuffle_buffer`` rows from its parts, permutes
    it and serves it as batches; the rows short of a full batch stay for the next fill; its last batch may be
    short. Memory per reader: about ``shuffle_buffer`` rows plus one part.

    Each rank's batches hold ``batch_size // world_size`` rows, so the global batch is the configured one.
    Ranks may get different numbers of rows (parts differ in size and count), so ``uneven`` is True and the
    model's train loop runs under DDP's ``join`` and evaluates at epoch ends only.

    Args:
        feature_map: FuxiCTR ``FeatureMap`` of the dataset.
        data_path: folder of ``part-*.parquet`` files.
        split, batch_size, shuffle, seed, rank, world_size: as for :class:`InMemoryLoader`.
        num_workers: reader threads per rank (0: parts are read in the training thread).
        shuffle_buffer: rows a shuffling reader permutes together (default one million).
    """

    uneven = True

    def __init__(self, feature_map, data_path: str, split: str = "train", batch_size: int = 4096,
                 shuffle: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 shuffle_buffer: int = 1_000_000, **kwargs):
        if batch_size < 1:
            raise UserError(f"batch_size must be a positive integer, got {batch_size}")
        if not isinstance(shuffle_buffer, int) or shuffle_buffer < 1:
            raise UserError(f"shuffle_buffer must be a positive number of rows, got {shuffle_buffer!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.feature_map = feature_map
        self.names = list(feature_map.features) + list(feature_map.labels)
        self.data_path = data_path
        self.parts = checked_parts(data_path, self.names)
        try:
            self.part_rows = [pl.scan_parquet(p).select(pl.len()).collect().item() for p in self.parts]
        except Exception as exc:
            raise UserError(f"cannot read built data in {data_path} ({str(exc).splitlines()[0]}); delete the dataset "
                            f"folder so that it is rebuilt") from None
        self.split, self.shuffle, self.seed = split, bool(shuffle), int(seed or 0)
        self.batch_size = int(batch_size)
        self.local_batch_size = max(1, self.batch_size // world_size)
        self.rank, self.world_size = rank, world_size
        self.num_workers = max(0, int(num_workers or 0))
        self.shuffle_buffer = shuffle_buffer
        self.num_samples = int(sum(self.part_rows))
        self.num_blocks = len(self.parts)
        self.epoch = 0
        self._epoch_set = False
        readers = world_size * max(1, self.num_workers)
        if len(self.parts) < readers:
            logging.warning(f"{split}: {len(self.parts)} parts for {readers} readers (ranks x workers); some readers "
                            f"stay idle, so build with a smaller data_block_size")
        logging.info(f"{split.capitalize()} samples: {self.num_samples:,} streamed from {len(self.parts)} parts, "
                     f"about {len(self)} batches of {self.local_batch_size} per rank")

    # ------------------------------------------------------------------ the epoch plan
    def part_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.parts)))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.parts), generator=generator).tolist()

    def reader_parts(self, epoch: int, worker: int, workers: int) -> list[int]:
        """Indices of the parts that worker ``worker`` of ``workers`` of this rank reads in ``epoch``."""
        return self.part_order(epoch)[self.rank::self.world_size][worker::workers]

    def __len__(self) -> int:
        workers = max(1, self.num_workers)
        total = 0
        for worker in range(workers):
            rows = sum(self.part_rows[i] for i in self.reader_parts(self.epoch, worker, workers))
            total += math.ceil(rows / self.local_batch_size)
        return total

    # ------------------------------------------------------------------ reading
    def _read_part(self, index: int) -> dict[str, torch.Tensor]:
        frame = pl.read_parquet(self.parts[index], columns=self.names)
        return {name: _column_tensor(frame[name]) for name in self.names}

    def reader_batches(self, epoch: int, worker: int, workers: int) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of one reader in one epoch (see the class docstring)."""
        size = self.local_batch_size
        if not self.shuffle:
            for index in self.reader_parts(epoch, worker, workers):
                part = self._read_part(index)
                rows = int(next(iter(part.values())).shape[0])
                for start in range(0, rows, size):
                    yield {name: col[start:start + size] for name, col in part.items()}
            return
        reader = self.rank * workers + worker
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 9_973 + reader)
        buffer: list[dict[str, torch.Tensor]] = []
        buffered = 0
        pending = self.reader_parts(epoch, worker, workers)
        while pending or buffered:
            while pending and buffered < max(self.shuffle_buffer, size):
                part = self._read_part(pending.pop(0))
                buffer.append(part)
                buffered += int(next(iter(part.values())).shape[0])
            merged = {name: torch.cat([b[name] for b in buffer]) for name in self.names}
            order = torch.randperm(buffered, generator=generator)
            full = buffered if not pending else buffered - buffered % size  # the end of the stream serves all
            for start in range(0, full, size):
                index = order[start:min(start + size, full)]
                yield {name: col.index_select(0, index) for name, col in merged.items()}
            rest = order[full:]
            buffer = [{name: col.index_select(0, rest) for name, col in merged.items()}] if len(rest) else []
            buffered = int(len(rest))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = self.epoch
        if self.num_workers == 0:
            yield from self.reader_batches(epoch, 0, 1)
        else:
            yield from self._threaded(epoch)
        if self.shuffle and not self._epoch_set:
            self.epoch += 1
        self._epoch_set = False

    def _threaded(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """The readers of this rank as threads, each filling its own bounded queue; batches are taken from the
        readers in turn, so the batch order is the same on every run. Threads, not processes: Parquet decoding and
        ``index_select`` release the GIL, and forking a process whose Polars thread pool has run can deadlock."""
        workers = self.num_workers
        queues = [queue.Queue(maxsize=2) for _ in range(workers)]
        stop = threading.Event()
        done = object()

        def put(q: queue.Queue, item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def read(worker: int) -> None:
            try:
                for batch in self.reader_batches(epoch, worker, workers):
                    if not put(queues[worker], batch):
                        return
            except BaseException as exc:  # handed to the consumer, which raises it
                put(queues[worker], exc)
            put(queues[worker], done)

        threads = [threading.Thread(target=read, args=(w,), daemon=True, name=f"{self.split}-reader-{w}")
                   for w in range(workers)]
        for thread in threads:
            thread.start()
        try:
            live = list(range(workers))
            while live:
                for worker in list(live):
                    item = queues[worker].get()
                    if item is done:
                        live.remove(worker)
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        yield item
        finally:
            stop.set()
            for thread in threads:
                thread.join()

    def read_columns(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Whole columns of the split (all rows, part by part in name order); only the columns asked for."""
        return load_columns(self.feature_map, self.data_path, names)
