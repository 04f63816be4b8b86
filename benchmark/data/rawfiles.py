"""Reading published raw files that do not fit in memory, block by block (the real-data converters' input side).

* :class:`BadLines` counts malformed lines of one file, keeps the first few line numbers with the reason, and
  turns into a one-line :class:`UserError` once they exceed a fraction of the file (``--max-malformed``);
* :func:`line_blocks` / :func:`read_csv_blocks` read a CSV file with a header in blocks of lines, drop malformed
  lines (wrong field count, a value that does not parse), and give typed Polars frames with KuaiRand's
  ``-124`` / ``NaN`` / empty read as missing (null); :func:`read_header` refuses what is not a CSV file.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import polars as pl

from mdl_bench.kernel.errors import UserError

KUAIRAND_MISSING = -124  # KuaiRand's code for "missing"
DEFAULT_MAX_MALFORMED = 0.01


# ============================================================================================ malformed lines
class BadLines:
    """Malformed lines of one file: counted, the first few kept with their reason, fatal above a fraction.

    ``max_fraction`` is the largest tolerated share of malformed lines (``0`` tolerates none). The check
    runs when the file ends (:meth:`finish`) and, for long files, early: once 100,000 lines were read and the
    share is already above the limit, reading stops with the same error.
    """

    def __init__(self, path, max_fraction: float = DEFAULT_MAX_MALFORMED, keep: int = 5):
        self.path = str(path)
        self.max_fraction = float(max_fraction)
        self.keep = keep
        self.count = 0
        self.lines = 0
        self.examples: list[tuple[int, str]] = []

    def add(self, line_no: int, reason: str) -> None:
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append((int(line_no), reason))

    @property
    def wants_examples(self) -> int:
        return self.keep - len(self.examples)

    def seen(self, lines: int) -> None:
        """Record that ``lines`` more data lines were read; stop early when malformed lines clearly dominate."""
        self.lines += lines
        if self.lines >= 100_000 and self.count > self.max_fraction * self.lines:
            self._raise(early=True)

    def where(self) -> str:
        return ", ".join(f"{n} ({why})" for n, why in self.examples)

    def _raise(self, early: bool = False) -> None:
        share = self.count / max(self.lines, 1)
        first = "in the first " if early else "of "
        raise UserError(f"{self.path}: {self.count:,} {first}{self.lines:,} lines are malformed ({share:.2%}, "
                        f"more than --max-malformed {self.max_fraction:g}); first: line {self.where()}; fix or "
                        f"re-download the file, or raise --max-malformed to skip them")

    def finish(self, log: Callable[[str], None] = print) -> None:
        if self.count > self.max_fraction * max(self.lines, 1):
            self._raise()
        if self.count:
            log(f"  warning: {self.path}: skipped {self.count:,} malformed of {self.lines:,} lines; first: line "
                f"{self.where()}")


# ================================================================================================ raw files
def find_raw_file(raw_dir, name: str, what: str, hint: str) -> Path:
    """``raw_dir/name`` (or ``raw_dir/data/name``, ``raw_dir/train|test/name``, as archives unpack)."""
    root = Path(raw_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"--raw-dir {root} is not a folder; pass the folder holding the {what} files ({hint})")
    for folder in (root, root / "data", root / "train", root / "test"):
        if (folder / name).is_file():
            path = folder / name
            if not os.access(path, os.R_OK):
                raise UserError(f"{path} is not readable; fix its permissions")
            return path
    raise UserError(f"{what} file {name} not found in {root} (nor in its data/ folder); {hint}")


def line_blocks(path, block_bytes: int = 32 << 20, skip_header: bool = False) -> Iterator[tuple[int, list[bytes]]]:
    """Yield ``(line number of the first line, lines)`` blocks of a text file, without line ends.

    Line numbers are 1-based and count every physical line (the header too), so they match an editor's.
    """
    with open(path, "rb") as fh:
        line_no = 1
        if skip_header:
            fh.readline()
            line_no = 2
        while True:
            chunk = fh.read(block_bytes)
            if not chunk:
                return
            if not chunk.endswith(b"\n"):
                chunk += fh.readline()
            lines = chunk.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            if lines and lines[0].endswith(b"\r"):  # Windows line ends
                lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
            yield line_no, lines
            line_no += len(lines)


# Leading bytes of files often given where a CSV belongs, so the error can say what the file is instead.
_NOT_CSV_MAGIC = {b"\x1f\x8b": ("gzip-compressed", "unpack it with gunzip"),
                  b"PK\x03\x04": ("a zip archive", "unpack it"),
                  b"PAR1": ("a Parquet file", "give the CSV file it was made from"),
                  b"\x89HDF": ("an HDF5 file", "give the CSV file it was made from")}


def read_header(path, fix: str = "re-download it", strip: bool = True) -> list[str]:
    """The column names of a CSV file's header line, read without looking at (or typing) any data row.

    A file that is not CSV text (compressed, Parquet, binary) or has no header line is a :class:`UserError`
    ending in ``fix``. ``strip=False`` keeps spaces around names (as Polars reads them)."""
    with open(path, "rb") as fh:
        start = fh.read(4096)
    for magic, (what, action) in _NOT_CSV_MAGIC.items():
        if start.startswith(magic):
            raise UserError(f"{path} is not a CSV file: it is {what}; {action}, or {fix}")
    if b"\x00" in start:
        raise UserError(f"{path} is not a CSV text file (it holds binary NUL bytes); {fix}")
    with open(path, "r", encoding="utf-8-sig", errors="replace", newline="") as fh:  # -sig: a BOM is no name
        first = fh.readline()
    if not first.strip():
        raise UserError(f"{path} is empty or starts with a blank line; expected a CSV header line; {fix}")
    names = next(csv.reader([first.rstrip("\r\n")]))
    return [c.strip() for c in names] if strip else names


def _field_count(line: bytes) -> int:
    if b'"' not in line:
        return line.count(b",") + 1
    try:
        return len(next(csv.reader([line.decode("utf-8", errors="replace")])))
    except csv.Error:
        return -1


def parse_columns(frame: pl.DataFrame, kinds: dict[str, str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Type the text columns of ``frame`` by kind; return ``(typed frame, one boolean "bad" column per kind)``.

    Kinds: ``key`` (integer, required), ``label`` (0 or 1, required), ``int`` (integer, ``"4.0"`` is 4 as
    pandas writes nullable integers; missing allowed), ``float`` (missing allowed), ``str`` (empty is
    missing). ``-124``, ``NaN`` and empty cells are missing (null); a value that does not parse makes its
    line malformed.
    """
    typed, bad = [], []
    for name, kind in kinds.items():
        text = pl.col(name).str.strip_chars()
        empty = text.is_null() | (text == "")
        if kind == "str":
            missing = empty | (text == str(KUAIRAND_MISSING)) | text.str.to_lowercase().is_in(["nan", "null"])
            typed.append(pl.when(missing).then(None).otherwise(text).alias(name))
            continue
        as_float = text.cast(pl.Float64, strict=False)
        nan = as_float.is_nan().fill_null(False)
        if kind == "float":
            values = as_float
        else:
            integral = pl.when(as_float.is_finite() & (as_float == as_float.floor())).then(as_float).otherwise(None)
            values = text.cast(pl.Int64, strict=False).fill_null(integral.cast(pl.Int64, strict=False))
        missing = empty | nan | (values == KUAIRAND_MISSING).fill_null(False)
        is_bad = ~empty & ~nan & values.is_null()
        if kind in ("key", "label"):
            is_bad = is_bad | missing
        if kind == "label":
            is_bad = is_bad | ~values.is_in([0, 1]).fill_null(False)
        typed.append(pl.when(missing).then(None).otherwise(values).alias(name))
        bad.append(is_bad.alias(name))
    return frame.select(typed), frame.select(bad) if bad else pl.DataFrame()


def read_csv_blocks(path, kinds: dict[str, str], bad: BadLines, *, header: list[str] | None = None,
                    block_bytes: int = 32 << 20, what: str = "", expected: str = "") -> Iterator[pl.DataFrame]:
    """Typed frames (the columns of ``kinds``, in that order) of a CSV file, one per block of lines.

    ``header``: the column names when the file has no header line of its own (a later ``_partN`` file);
    when ``None`` the first line is the header, and a file whose header lacks a column of ``kinds`` is
    refused (wrong column layout). Malformed lines (wrong number of fields, a value that does not parse, a
    missing key or label) are dropped and counted in ``bad``.
    """
    own_header = header is None
    names = read_header(path) if own_header else list(header)
    missing = [c for c in kinds if c not in names]
    if missing:
        raise UserError(f"{path} has no column {missing[0]!r} (its header: {', '.join(names[:12])}"
                        f"{' ...' if len(names) > 12 else ''}), so it is not {what or 'a file of the expected'} "
                        f"layout{' (' + expected + ')' if expected else ''}; check --raw-dir and the file")
    width = len(names)
    for first, lines in line_blocks(path, block_bytes, skip_header=own_header):
        good, line_nos = [], []
        for offset, line in enumerate(lines):
            if not line.strip():
                continue  # blank lines carry no data (a trailing one is common)
            n = _field_count(line)
            if n != width:
                bad.add(first + offset, f"{n} fields, expected {width}")
                continue
            good.append(line)
            line_nos.append(first + offset)
        bad.seen(len(lines))
        if not good:
            continue
        text = pl.read_csv(io.BytesIO(b"\n".join(good) + b"\n"), has_header=False, new_columns=names,
                           schema={n: pl.Utf8 for n in names}, quote_char='"').select(list(kinds))
        if text.height != len(good):  # only if a quoted field spans lines; refuse rather than misalign
            raise UserError(f"{path}: lines {first}-{first + len(lines) - 1} do not parse as one CSV row per line "
                            f"(a quoted field spans lines?); fix the file")
        typed, flags = parse_columns(text, kinds)
        if flags.width:
            rows_bad = flags.select(pl.any_horizontal(pl.all())).to_series()
            if rows_bad.any():
                rows = np.flatnonzero(rows_bad.to_numpy())
                shown = rows[: max(bad.wants_examples, 0)]
                for row in shown:
                    column = next(c for c in flags.columns if flags[c][int(row)])
                    bad.add(line_nos[int(row)], f"{column}={text[column][int(row)]!r}")
                bad.count += len(rows) - len(shown)
                typed = typed.filter(~rows_bad)
        yield typed
