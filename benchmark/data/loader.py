"""Serve a built split from memory: loaded into tensors once, cut into (shuffled) batches each epoch.

This replaces FuxiCTR 2.3.10's Ray-Data parquet loader on the default path (no Ray process, no per-epoch
re-read). It follows FuxiCTR's loader contract, so it can be passed to ``RankDataLoader(data_loader=...)`` and
fed to ``BaseModel.fit``/``evaluate``/``predict``: ``len(loader)`` is the number of batches and iterating yields
``dict[str, Tensor]`` keyed by feature and label names.

Sharding for data-parallel training is built in: with ``world_size > 1`` every rank draws the same permutation
(seeded by ``seed`` and the epoch), cuts it into the same global batches of ``batch_size`` rows, and keeps its
own contiguous slice of each global batch. Without shuffling (evaluation) rank ``r`` gets the ``r``-th
contiguous block of rows, so the ranks together cover every row exactly once.
"""
from __future__ import annotations

import logging
import math
from typing import Iterator

import numpy as np
import polars as pl
import torch

from ..errors import UserError


def _column_tensor(series: pl.Series) -> torch.Tensor:
    if isinstance(series.dtype, (pl.Array, pl.List)):
        values = np.stack(series.to_numpy())
    else:
        values = series.to_numpy(writable=True)
    dtype = np.int64 if values.dtype.kind in "iub" else np.float32
    return torch.from_numpy(np.require(values, dtype=dtype, requirements=["C", "W"]))


def load_columns(feature_map, data_path: str) -> dict[str, torch.Tensor]:
    """Read the feature and label columns of a built parquet split into CPU tensors."""
    names = list(feature_map.features) + list(feature_map.labels)
    try:
        schema = pl.read_parquet_schema(data_path)
    except Exception as exc:
        raise UserError(f"cannot read built data {data_path} ({str(exc).splitlines()[0]}); delete the dataset "
                        f"folder so that it is rebuilt") from None
    missing = [n for n in names if n not in schema]
    if missing:
        raise UserError(f"built data {data_path} has no column {missing[0]!r}; it was built from another config, so "
                        f"delete the dataset folder to rebuild it")
    frame = pl.read_parquet(data_path, columns=names)
    return {name: _column_tensor(frame[name]) for name in names}


class InMemoryLoader:
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

    @property
    def num_batches(self) -> int:
        return len(self)

    def set_epoch(self, epoch: int) -> None:
        """Fix the permutation of the next pass (as ``DistributedSampler.set_epoch`` does)."""
        self.epoch = int(epoch)
        self._epoch_set = True

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
