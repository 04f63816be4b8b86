"""Shared pieces of the real-dataset converters (:mod:`.kuairand`, :mod:`.aliccp`).

Both converters read published raw files that do not fit in memory as one table, so everything here works
block by block:

* the input side is :mod:`.rawfiles`: malformed-line accounting and CSV files read in typed blocks;
* :class:`Spool` keeps parsed rows on disk as Parquet chunks (a later pass reads them back without parsing
  text again);
* :class:`ValueCounter` counts values of a column chunk by chunk (memory grows with the number of distinct
  values, never with the rows);
* :class:`SplitWriter` writes ``train.csv`` / ``valid.csv`` / ``test.csv`` under temporary names, renamed into
  place only when the conversion succeeded;
* :func:`dataset_config_text` writes the dataset config block; :func:`print_table1` the statistics of the paper's
  table 1.

Conventions of the written CSV files (both datasets), chosen so the FuxiCTR build needs no special case:

* a value seen fewer than ``min_count`` (default 10) times in the *training* split is replaced by the default
  ``-1`` (integer columns) or ``__rare__`` (text columns) in every split - counting on train only keeps
  valid/test frequencies out of training; a value that never occurs in train becomes the default too, which
  then has a trained embedding instead of FuxiCTR's untrained OOV id;
* a missing value is written as ``-2`` (text columns: ``__missing__``), a category of its own. Chosen over an
  empty cell: FuxiCTR fills an empty cell with ``fill_na`` and then leaves that value out of the vocabulary
  (so it shares the untrained OOV id, and a column with no value in train crashes its tokenizer), and its
  default fill 0 is a real value of many fields;
* ``group_id`` (the gAUC group) is the user id *before* rare-value replacement, so users seen fewer than 10
  times keep their own group instead of being pooled into one.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import polars as pl
import yaml

from mdl_bench.kernel.errors import UserError
from mdl_bench.kernel.paths import check_writable_dir, pid_alive

RARE_INT = -1
RARE_STR = "__rare__"
MISSING_INT = -2
MISSING_STR = "__missing__"
SPLITS = ("train", "valid", "test")


# ===================================================================================================== spool
class Spool:
    """Parsed rows kept on disk as numbered Parquet chunks, read back in the same order."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.chunks: list[Path] = []
        self.rows = 0

    def append(self, frame: pl.DataFrame) -> None:
        if frame.height == 0:
            return
        path = self.folder / f"chunk-{len(self.chunks):06d}.parquet"
        frame.write_parquet(path, compression="lz4", statistics=False)
        self.chunks.append(path)
        self.rows += frame.height

    def __iter__(self) -> Iterator[pl.DataFrame]:
        for path in self.chunks:
            yield pl.read_parquet(path)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class ValueCounter:
    """Occurrence counts of the values of a column, added chunk by chunk (optionally weighted).

    Memory grows with the number of distinct values: per-chunk counts are merged once they add up to more
    rows than the running table (a hash group-by, so merging stays linear).
    """

    def __init__(self, dtype=pl.Int64):
        self.dtype = dtype
        self.table = pl.DataFrame({"value": pl.Series([], dtype=dtype), "count": pl.Series([], dtype=pl.Int64)})
        self.pending: list[pl.DataFrame] = []
        self.pending_rows = 0

    def add(self, values: pl.Series, weights: pl.Series | None = None) -> None:
        frame = pl.DataFrame({"value": values.cast(self.dtype),
                              "count": weights.cast(pl.Int64) if weights is not None else pl.repeat(1, len(values),
                                                                                                   eager=True,
                                                                                                   dtype=pl.Int64)})
        part = frame.drop_nulls("value").group_by("value").agg(pl.col("count").sum())
        self.pending.append(part)
        self.pending_rows += part.height
        if self.pending_rows > max(self.table.height, 1_000_000):
            self._merge()

    def _merge(self) -> None:
        if self.pending:
            self.table = (pl.concat([self.table] + self.pending).group_by("value").agg(pl.col("count").sum()))
            self.pending, self.pending_rows = [], 0

    def counts(self) -> pl.DataFrame:
        self._merge()
        return self.table

    def kept(self, min_count: int) -> pl.Series:
        """Values seen at least ``min_count`` times."""
        table = self.counts()
        return table.filter(pl.col("count") >= min_count)["value"]


def replace_rare(column: str, kept: pl.Series, default) -> pl.Expr:
    """Expression: the column where its value is kept (or missing), else ``default``."""
    col = pl.col(column)
    return pl.when(col.is_null() | col.is_in(kept.implode())).then(col).otherwise(pl.lit(default)).alias(column)


def splitmix_uniform(index: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per row index, fixed by (index, seed), independent of chunking."""
    with np.errstate(over="ignore"):
        z = index.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64((seed % (1 << 32)) + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


# ==================================================================================================== output
class SplitWriter:
    """``train.csv``, ``valid.csv`` and ``test.csv`` in ``out_dir``, written block by block.

    Files are written as ``.<name>.<pid>.partial`` and renamed at :meth:`close`; :meth:`abort` removes them, so a
    failed or interrupted conversion never leaves a CSV that looks complete.
    """

    def __init__(self, out_dir: Path, columns: list[str]):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.columns = columns
        self.handles = {s: open(self._partial(s), "wb") for s in SPLITS}
        self.rows = {s: 0 for s in SPLITS}
        for split, fh in self.handles.items():
            fh.write((",".join(columns) + "\n").encode())

    def write(self, split: str, frame: pl.DataFrame) -> None:
        if frame.height:
            frame = frame.select(self.columns)
            frame = frame.with_columns([pl.col(c).fill_null(MISSING_STR if frame.schema[c] == pl.Utf8 else MISSING_INT)
                                        for c in frame.columns])
            frame.write_csv(self.handles[split], include_header=False)
            self.rows[split] += frame.height

    def close(self) -> dict[str, Path]:
        paths = {}
        for split, fh in self.handles.items():
            fh.close()
            final = self.out_dir / f"{split}.csv"
            os.replace(self._partial(split), final)
            paths[split] = final
        return paths

    def abort(self) -> None:
        for split, fh in self.handles.items():
            fh.close()
            with contextlib.suppress(OSError):
                os.remove(self._partial(split))

    def _partial(self, split: str) -> Path:
        """The file being written; the pid says whose it is (:func:`remove_leftovers`)."""
        return self.out_dir / f".{split}.csv.{os.getpid()}.partial"


class ConversionFiles:
    """The temporary files of one conversion, as a ``with`` block: its :class:`Spool` (always removed when the block
    ends) and its :class:`SplitWriter` (:meth:`open_writer`; when the block ends by an exception its partial CSVs
    are removed, so a failed conversion never leaves a CSV that looks complete)."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.spool = Spool(self.out_dir / f".spool-{os.getpid()}")
        self.writer: SplitWriter | None = None

    def open_writer(self, columns: list[str]) -> SplitWriter:
        self.writer = SplitWriter(self.out_dir, columns)
        return self.writer

    def close(self) -> dict[str, Path]:
        """Rename the written splits into place; their paths."""
        paths = self.writer.close()
        self.writer = None
        return paths

    def __enter__(self) -> "ConversionFiles":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None and self.writer is not None:
            self.writer.abort()
        self.spool.remove()
        return False


def check_range(option: str, value, low: float, high: float | None = None, high_open: bool = False) -> None:
    """A converter option inside ``[low, high]`` (``[low, high)`` with ``high_open``), else a one-line error."""
    above = high is not None and (value >= high if high_open else value > high)
    if value != value or value < low or above:
        n = lambda v: str(int(v)) if float(v).is_integer() else f"{v:g}"  # 4294967295, not 4.29497e+09
        where = f"in [{n(low)}, {n(high)}{')' if high_open else ']'}" if high is not None else f">= {n(low)}"
        raise UserError(f"{option} must be {where}, got {value!r}; fix the option")


def check_out_dir(out_dir, log: Callable[[str], None] = print) -> Path:
    """The conversion's output folder, checked (a folder, writable) and created; leftovers of a killed conversion
    in it are removed first (:func:`remove_leftovers`)."""
    out = check_writable_dir(out_dir, "--out", "pass --out DIR, a writable folder for train.csv, valid.csv and "
                                               "test.csv")
    out.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out, log)
    return out


_SPOOL = re.compile(r"^\.spool-(\d+)$")
_PARTIAL = re.compile(r"^\.(train|valid|test)\.csv\.(?:(\d+)\.)?partial$")


def remove_leftovers(out: Path, log: Callable[[str], None] = print) -> list[str]:
    """Remove the ``.spool-<pid>`` folders and ``.<split>.csv.<pid>.partial`` files of conversions whose process is
    gone (killed), saying so in one line. A live conversion's files are left alone, and a folder another live
    conversion writes into is refused (a one-line :class:`UserError`, nothing removed). A ``.partial`` without
    a pid (written before pids were in the name) counts as a leftover."""
    entries = list(out.iterdir())
    owners = [m.group(1) if (m := _SPOOL.match(e.name)) else (m.group(2) if (m := _PARTIAL.match(e.name)) else None)
              for e in entries]
    live = {int(pid) for pid in owners if pid and pid_alive(int(pid))} - {os.getpid()}
    if live:  # two conversions into one folder would overwrite each other's train/valid/test.csv
        raise UserError(f"another conversion (pid {min(live)}) is writing into {out} right now; wait for it to "
                        f"finish, or pass another --out")
    removed, size = [], 0
    for entry in entries:  # every owner is gone now (checked above)
        if not (_SPOOL.match(entry.name) or _PARTIAL.match(entry.name)):
            continue
        files = [f for f in entry.rglob("*") if f.is_file()] if entry.is_dir() else [entry]
        size += sum(f.stat().st_size for f in files)
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry.name)
    if removed:
        log(f"Removed leftovers of a killed conversion in {out}: {', '.join(sorted(removed))} ({size / 1e6:.1f} MB)")
    return removed


# ============================================================================================ config, stats
def feature_block(names: list[str], dtype: str, source: str, **extra) -> dict:
    block = {"name": names if len(names) > 1 else names[0], "active": True, "dtype": dtype, "type": "categorical"}
    block.update(extra)
    block["source"] = source
    return block


def dataset_block(*, dataset_id: str, out_dir: Path, domain_field: str, domains: list, feature_cols: list,
                  label: str, roles: dict, domain_names=None, config_paths: dict | None = None) -> dict:
    """A converted dataset's block: ``roles`` maps the roles model configs name (user, item, author...) to its
    columns; ``domain_names`` labels the domains (a list, or a text with ``{}`` for the value)."""
    paths = config_paths or {s: str(Path(out_dir) / f"{s}.csv") for s in SPLITS}
    names = {} if domain_names is None else {"domain_names": domain_names}
    return {
        "data_root": "${MDL_BENCH_HOME}/data",
        "data_format": "csv",
        "train_data": paths["train"],
        "valid_data": paths["valid"],
        "test_data": paths["test"],
        "domain_field": domain_field,
        "domains": list(domains),
        **names,
        "roles": dict(roles),
        "group_id": "group_id",
        "min_categr_count": 1,
        "feature_cols": feature_cols + [{"name": "group_id", "active": True, "dtype": "int", "type": "meta"}],
        "label_col": {"name": label, "dtype": "float"},
    }


def config_paths_for(out_dir: Path, dataset_id: str) -> dict:
    """Split paths for the config: ``${MDL_BENCH_HOME}/raw/<id>/...`` when ``out_dir`` is that default folder."""
    from mdl_bench.kernel.paths import bench_home

    out = Path(out_dir).expanduser().resolve()
    default = (bench_home() / "raw" / dataset_id).expanduser().resolve()
    if out == default:
        return {s: f"${{MDL_BENCH_HOME}}/raw/{dataset_id}/{s}.csv" for s in SPLITS}
    return {s: str(out / f"{s}.csv") for s in SPLITS}


def dataset_config_text(dataset_id: str, block: dict, comment: str) -> str:
    body = yaml.safe_dump({dataset_id: block}, sort_keys=False, default_flow_style=None, width=110)
    lines = [f"# {line}" if line else "#" for line in comment.strip().splitlines()]
    return "\n".join(lines) + "\n" + body


def default_out(dataset_id: str) -> Path:
    from mdl_bench.kernel.paths import bench_home

    return bench_home() / "raw" / dataset_id


def _short(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else (f"{n / 1e3:.1f}k" if n >= 1e3 else str(n))


def print_table1(stats: dict, log: Callable[[str], None] = print) -> None:
    """The paper's table 1 columns (#Sample, #User, #Item, rows per domain) and the rows of each split."""
    rows = stats["rows"]  # split -> domain -> count
    domains = stats["domains"]
    total = {d: sum(rows[s].get(str(d), 0) for s in SPLITS) for d in domains}
    label = dict(zip(domains, stats.get("domain_names") or [f"S{d}" for d in domains]))
    log(f"Table 1 statistics of {stats['dataset_id']} (after low-frequency filtering):")
    log(f"  #Sample {stats['samples']:,}   #User {stats['users']:,}   #Item {stats['items']:,}   Domain (#Impr) "
        + " / ".join(f"{label[d]}({_short(total[d])})" for d in domains))
    width = max(9, *(len(f"{v:,}") + 1 for v in total.values()))
    log("  " + "split".ljust(6) + "rows".rjust(12) + "".join(label[d].rjust(width) for d in domains) + "   CTR")
    for split in SPLITS:
        n = sum(rows[split].values())
        ctr = stats["clicks"][split] / n if n else float("nan")
        log("  " + split.ljust(6) + f"{n:,}".rjust(12)
            + "".join(f"{rows[split].get(str(d), 0):,}".rjust(width) for d in domains) + f"   {ctr:.4f}")
    log(f"  #User and #Item count ids seen >= {stats['min_count']} times in train; rows whose id is the rare "
        f"default: user {stats['rare_user_rows']:,}, item {stats['rare_item_rows']:,}")


def peak_rss_mb() -> float:
    """Peak resident memory of this process (and of finished children), MB. Linux reports KiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + kids) / 1024.0


def write_json(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


class Timer:
    def __init__(self):
        self.start = time.time()

    @property
    def seconds(self) -> float:
        return time.time() - self.start
