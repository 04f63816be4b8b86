"""Reading the raw splits of a dataset with the dtypes its config declares, and the one-line errors for what is
wrong in them (a missing column, a value of another type, a label outside {0, 1}, a domain the config does not
list, NaN), each naming the file, the column and the first rows concerned."""
from __future__ import annotations

import numpy as np
import polars as pl

from mdl_bench.kernel.errors import UserError
from .rawfiles import read_header

POLARS_DTYPES = {"str": pl.Utf8, "int": pl.Int64, "float": pl.Float64}


def wanted_columns(cols: list[dict], label: dict) -> dict:
    wanted = {c["name"]: POLARS_DTYPES[c["dtype"]] for c in cols if not c.get("preprocess")}
    wanted[label["name"]] = POLARS_DTYPES.get(label["dtype"], pl.Float64)
    return wanted


def check_header(path: str, wanted: dict, split: str) -> None:
    """The file is CSV text with a header naming every wanted column; reads the header line only, so no data
    row is looked at (or typed) here."""
    header = read_header(path, fix=f"point {split}_data at a CSV file with a header line", strip=False)
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        where = [i + 1 for i, c in enumerate(header) if c == twice[0]]
        raise UserError(f"{split}_data file {path}: the header names column {twice[0]!r} twice (fields "
                        f"{' and '.join(map(str, where[:2]))}), so which one is meant is ambiguous; rename or drop one "
                        f"of them")
    missing = [c for c in wanted if c not in header]
    if missing:
        seps = [sep for sep in (";", "\t", "|") if len(header) == 1 and sep in header[0]]
        if seps:  # FuxiCTR's dataset config has no separator option: its CSV files are comma-separated
            raise UserError(f"{split}_data file {path} looks {seps[0]!r}-separated (its header is one field, "
                            f"{header[0][:60]!r}); this build reads comma-separated CSV files, so convert the file "
                            f"to commas")
        spaced = [h for h in header if h.strip() == missing[0]]
        if spaced:
            raise UserError(f"{split}_data file {path}: the header names column {spaced[0]!r} with spaces around "
                            f"it, so there is no column {missing[0]!r}; remove the spaces from the header line")
        raise UserError(f"{split}_data file {path} has no column {missing[0]!r} (it has: {', '.join(header)}); "
                        f"fix feature_cols/label_col or the file")


_DTYPE_NAMES = {pl.Utf8: "str", pl.Int64: "int", pl.Float64: "float"}


def _bad_value(path: str, wanted: dict) -> tuple[str, str, int, int] | None:
    """The declared column of ``path`` whose first value that does not parse as its declared dtype comes first:
    ``(column, value, line, rows that do not parse)``, or ``None``. Scans the file as text, streamed."""
    text = pl.scan_csv(path, infer_schema=False, null_values=[""]).select(list(wanted)).with_row_index("__row")
    first = None
    for name, dtype in wanted.items():
        if dtype == pl.Utf8:
            continue
        number = pl.col(name).str.strip_chars().cast(dtype, strict=False)  # the CSV parser allows spaces
        found = (text.filter(pl.col(name).is_not_null() & number.is_null())
                 .select(pl.len().alias("count"), pl.col("__row").first(), pl.col(name).first())
                 .collect(engine="streaming"))
        count = int(found["count"][0])
        if count and (first is None or int(found["__row"][0]) + 2 < first[2]):
            first = (name, found[name][0], int(found["__row"][0]) + 2, count)  # +2: 1-based, after the header
    return first


def diagnose(split: str, path: str, wanted: dict, cols: list[dict]) -> UserError | None:
    """What is really wrong with a raw file Polars could not read: a value that does not parse as the dtype its
    column declares (column, value, line, declared dtype and the fix), or a broken CSV layout; ``None`` if
    neither is found."""
    try:
        found = _bad_value(path, wanted)
    except Exception as exc:  # even as plain text it does not read: the CSV layout itself is broken
        return _layout_error(split, path, exc)
    if found is None:
        return None
    name, value, line, count = found
    kind = next((c["type"] for c in cols if c["name"] == name), "label")
    if kind == "label":
        fix = "labels must be 0 or 1; fix or drop those rows"
    elif kind == "numeric":
        fix = "a numeric column needs numbers: write a missing value as an empty cell, or fix those values"
    else:  # an id column: reading it as text keeps every value a category of its own
        fix = f"declare `dtype: str` for {name!r} in feature_cols (its values are ids), or fix those values"
    more = f"; {count:,} rows do not parse" if count > 1 else ""
    return UserError(f"{split}_data file {path} line {line}: column {name!r} is declared dtype: "
                     f"{_DTYPE_NAMES[wanted[name]]} but holds {value!r}{more}; {fix}")


def _layout_error(split: str, path: str, exc: Exception) -> UserError:
    """The error for a file Polars cannot read even as plain text: its encoding or its CSV structure."""
    if "utf-8" in str(exc).lower():
        return UserError(f"{split}_data file {path} is not UTF-8 text ({str(exc).splitlines()[0]}); convert it to "
                         f"UTF-8 (e.g. `iconv -f latin1 -t utf-8 FILE > NEW`) and point {split}_data at the result")
    return UserError(f"{split}_data file {path} is not a well-formed CSV file ({str(exc).splitlines()[0]}); every "
                     f"line needs the header's number of fields and every quote its closing quote; fix the file")


def read_error(split: str, path: str, wanted: dict, cols: list[dict], exc: Exception) -> UserError:
    """The one-line error for a raw file Polars failed to read (``exc``): :func:`diagnose`'s; when every declared
    value parses, the file's layout is what Polars refused."""
    return diagnose(split, path, wanted, cols) or _layout_error(split, path, exc)


def scan_csv(path: str, wanted: dict) -> pl.LazyFrame:
    return pl.scan_csv(path, schema_overrides=wanted, infer_schema_length=0, null_values=[""]).select(list(wanted))


def read_split(files: list[str], cols: list[dict], label: dict, split: str) -> pl.DataFrame:
    wanted = wanted_columns(cols, label)
    frames = []
    for path in files:
        check_header(path, wanted, split)
        try:
            frame = pl.read_csv(path, columns=list(wanted), schema_overrides=wanted, infer_schema_length=0,
                                null_values=[""])
        except Exception as exc:
            raise read_error(split, path, wanted, cols, exc) from None
        frames.append(frame.select(list(wanted)))
    return pl.concat(frames) if len(frames) > 1 else frames[0]


def _first_rows(mask: pl.Series, limit: int = 5, offset: int = 0) -> str:
    rows = (np.flatnonzero(mask.to_numpy()) + 2 + offset)[:limit]  # +2: 1-based, after the header line
    return ", ".join(map(str, rows))


def check_split(frame: pl.DataFrame, label: dict, domain_field: str, domains: list, split: str, path: str,
                 offset: int = 0):
    """Labels 0/1 and known domain values; ``offset``: rows of the file before ``frame`` (for line numbers)."""
    y = frame[label["name"]]
    bad = y.is_null() | y.is_nan() | ~y.is_in([0.0, 1.0])
    if bad.any():
        raise UserError(f"{split}_data {path}: {int(bad.sum())} rows have a label {label['name']!r} that is missing, "
                        f"NaN or not 0/1 (lines {_first_rows(bad, offset=offset)}); fix or drop those rows")
    if domain_field not in frame.columns:
        raise UserError(f"domain_field {domain_field!r} is not among feature_cols; add it as a categorical column")
    dom = frame[domain_field]
    known = [str(v) for v in domains]
    as_text = dom.cast(pl.Utf8)
    unknown = as_text.is_null() | ~as_text.is_in(known)
    if unknown.any():
        values = sorted(set(as_text.filter(unknown).fill_null("<missing>").to_list()))[:5]
        raise UserError(f"{split}_data {path}: {int(unknown.sum())} rows have domain {domain_field}="
                        f"{', '.join(values)}, which `domains` ({', '.join(known)}) does not list (lines "
                        f"{_first_rows(unknown, offset=offset)}); add the value to `domains` or drop those rows")
