"""AliCCP (Ali-CCP, Tianchi dataset 408) from its raw files to a multi-domain CTR dataset (paper section 4.1).

Raw files (no header lines; a feature item is ``field\\x02feat_id\\x03value``, items separated by ``\\x01``)::

    sample_skeleton_{train,test}.csv   sample_id,click,buy,common_feature_index,feature_num,feature_list
    common_features_{train,test}.csv   common_feature_index,feature_num,feature_list

What the conversion does, in the paper's terms:

* **rows**: every skeleton line; label ``click`` (``buy`` is not used). The official train file is the training
  split; the official test file is split in half, **valid = the lines whose CRC-32 of ``sample_id`` is even,
  test = odd** (chosen over alternating lines because it does not depend on the file's order or on
  ``--max-rows``, and halves any large subset);
* **domains**: field 301. Its raw feature ids are written as domains ``1..K`` in ascending order of the raw id
  (the mapping is printed and kept in ``stats.json``); ``domains=`` gives the raw ids in the order of S1..SK and
  drops rows of other values;
* **features** (paper: 12 user, 4 item and 4 user-item fields, plus the ids): ``user_id`` (101), ``item_id``
  (205), ``domain`` (301), user ``f121 f122 f124 f125 f126 f127 f128 f129 f109_14 f110_14 f127_14 f150_14``,
  item ``f206 f207 f210 f216``, user-item ``f508 f509 f702 f853``. A field comes from the skeleton line, else
  from its common-features line (joined by ``common_feature_index``). Where a field has several items (the
  14-day behaviour fields), the one with the largest value is kept (first on ties) - chosen because that
  value is the behaviour count, so this is the user's most frequent category/shop/brand/intention;
* **values**: a value seen fewer than ``min_count`` = 10 times in the training rows becomes ``-1`` in every
  split; an absent field is missing (``-2``).

Memory is bounded by design, not by the data: the skeleton files are read line by line and handled in chunks
of ``block_bytes`` (16 MB) of lines; the training rows go to a Parquet spool (written out once their value counts are
known), the test rows straight to ``valid.csv``/``test.csv``. What is held: one file's common features
(the user fields of each ``common_feature_index``), one chunk, and the value counts of each field (they grow
with the number of distinct values, not with the rows). One process; the peak resident memory is printed.
"""
from __future__ import annotations

import inspect
import io
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from mdl_bench.kernel.errors import UserError
from . import rawfiles, realdata as rd

USER_FIELDS = ["121", "122", "124", "125", "126", "127", "128", "129", "109_14", "110_14", "127_14", "150_14"]
ITEM_FIELDS = ["206", "207", "210", "216"]
CROSS_FIELDS = ["508", "509", "702", "853"]
DOMAIN_FIELD = "301"
NAMES = {"101": "user_id", "205": "item_id", DOMAIN_FIELD: "domain"}
FIELDS = ["101"] + USER_FIELDS + ["205"] + ITEM_FIELDS + CROSS_FIELDS + [DOMAIN_FIELD]
COLUMNS = [NAMES.get(f, f"f{f}") for f in FIELDS]
FEATURES = [c for c in COLUMNS if c != "domain"]  # rare-value replacement applies to these
LABEL = "click"
FILES = {"train": ("sample_skeleton_train.csv", "common_features_train.csv"),
         "test": ("sample_skeleton_test.csv", "common_features_test.csv")}
# polars >= 1.3x warns that explode's default for empty lists changes in 2.0; older 1.x lacks the argument
_EXPLODE = {"empty_as_null": True} if "empty_as_null" in inspect.signature(pl.DataFrame.explode).parameters else {}
HINT = ("download Ali-CCP from https://tianchi.aliyun.com/dataset/408, unpack sample_train.tar.gz and "
        "sample_test.tar.gz, and pass the folder with --raw-dir")


def feature_cols() -> list[dict]:
    """The ``feature_cols`` of the written dataset (the packaged ``aliccp`` block lists the same)."""
    col = dict(zip(FIELDS, COLUMNS))
    return [rd.feature_block(["user_id"], "int", "user"), rd.feature_block(["item_id"], "int", "item"),
            rd.feature_block(["domain"], "int", "context"),
            rd.feature_block([col[f] for f in USER_FIELDS], "int", "user"),
            rd.feature_block([col[f] for f in ITEM_FIELDS], "int", "item"),
            rd.feature_block([col[f] for f in CROSS_FIELDS], "int", "user_item")]


def output_columns() -> list[str]:
    return [LABEL] + COLUMNS + ["group_id"]


# ================================================================================================ parsing
def parse_block(lines: list[bytes], line_nos: list[int], parts: int, bad: rawfiles.BadLines, prefix: str) -> pl.DataFrame:
    """Parse a block of raw lines (``parts`` = 6 for skeleton, 3 for common-features lines), vectorised.

    Returns one row per well-formed line: ``__line`` (line number), the leading columns (``sid, click, cidx``
    or ``cidx``), and ``<prefix><j>`` = the feature id of ``FIELDS[j]`` (null where absent). Where a field has
    several items, the one with the largest value wins (first on ties). Malformed lines - wrong number of
    comma-separated fields, a click that is not 0/1, a non-integer feature_num, an item of a wanted field
    that is not ``field\x02id\x03value`` with an integer id and a numeric value - are counted in ``bad``.
    """
    good, good_nos = [], []
    for line_no, line in zip(line_nos, lines):
        if not line:
            continue
        commas = line.count(b",")
        if commas != parts - 1:
            bad.add(line_no, f"{commas + 1} comma-separated fields, expected {parts}")
            continue
        good.append(line)
        good_nos.append(line_no)
    line_nos = good_nos
    lead = ["sid", "click", "buy", "cidx", "num"] if parts == 6 else ["cidx", "num"]
    names = lead + ["flist"]
    ids = [f"{prefix}{j}" for j in range(len(FIELDS))]
    if not good:
        schema = {"__line": pl.Int64, **{c: pl.Utf8 for c in lead if c in ("sid", "cidx")}}
        if parts == 6:
            schema[LABEL] = pl.Int8
        schema.update({c: pl.Int64 for c in ids})
        return pl.DataFrame(schema=schema)
    frame = pl.read_csv(io.BytesIO(b"\n".join(good) + b"\n"), has_header=False, new_columns=names, quote_char=None,
                        schema={n: pl.Utf8 for n in names})
    frame = frame.with_columns(pl.Series("__line", line_nos, dtype=pl.Int64), pl.int_range(pl.len()).alias("__row"))
    n_fields = len(FIELDS)
    items = (frame.select("__row", pl.col("flist").str.split("\x01").alias("item"))
             .explode("item", **_EXPLODE)
             .with_columns(pl.col("item").str.split_exact("\x02", 1).alias("a")).unnest("a")
             .filter(pl.col("field_0").is_in(FIELDS))
             .select("__row", pl.col("field_0").replace_strict(FIELDS, list(range(n_fields)), return_dtype=pl.Int64)
                     .alias("field"), pl.col("field_1").str.split_exact("\x03", 1).alias("b")).unnest("b")
             .select("__row", "field", pl.col("field_0").cast(pl.Int64, strict=False).alias("id"),
                     pl.col("field_1").cast(pl.Float64, strict=False).alias("w")))
    flags = {"an item of a wanted field is not field\\x02id\\x03value": items.filter(
        pl.col("id").is_null() | pl.col("w").is_null())["__row"].unique()}
    flags["feature_num is not an integer"] = frame.filter(
        pl.col("num").cast(pl.Int64, strict=False).is_null())["__row"]
    if parts == 6:
        flags["click is not 0 or 1"] = frame.filter(~pl.col("click").is_in(["0", "1"]))["__row"]
    bad_rows = pl.concat(list(flags.values())).unique()
    if bad_rows.len():
        first = sorted((row, reason) for reason, rows in flags.items() for row in rows.sort().head(bad.keep).to_list())
        shown = set()
        for row, reason in first:
            if row not in shown and bad.wants_examples > 0:
                shown.add(row)
                bad.add(line_nos[row], reason)
        bad.count += bad_rows.len() - len(shown)
    # one id per (line, field): the item with the largest value, first on ties (a stable sort keeps item order)
    chosen = (items.filter(pl.col("id").is_not_null() & pl.col("w").is_not_null())
              .with_columns((pl.col("__row") * n_fields + pl.col("field")).alias("key"))
              .sort(["key", "w"], descending=[False, True], maintain_order=True)
              .unique(subset="key", keep="first", maintain_order=True))
    values = np.zeros((frame.height, n_fields), dtype=np.int64)
    present = np.zeros((frame.height, n_fields), dtype=bool)
    rows_, fields_ = chosen["__row"].to_numpy(), chosen["field"].to_numpy()
    values[rows_, fields_] = chosen["id"].to_numpy()
    present[rows_, fields_] = True
    out = frame.with_columns([pl.Series(f"{prefix}{j}", values[:, j]).set(pl.Series(~present[:, j]), None)
                              if not present[:, j].all() else pl.Series(f"{prefix}{j}", values[:, j])
                              for j in range(n_fields)])
    if bad_rows.len():
        out = out.filter(~pl.col("__row").is_in(bad_rows.implode()))
    keep = ["__line"] + [c for c in lead if c in ("sid", "cidx")]
    if parts == 6:
        out = out.with_columns(pl.col("click").cast(pl.Int8).alias(LABEL))
        keep.append(LABEL)
    return out.select(keep + [pl.col(c).cast(pl.Int64) for c in ids])


def _check_layout(path: Path, parts: int, layout: str) -> None:
    with open(path, "rb") as fh:
        first = fh.readline(1 << 20).rstrip(b"\r\n")
    if not first:
        raise UserError(f"{path} is empty; re-download it ({HINT})")
    fields = first.split(b",")  # a feature list has no commas: exactly parts - 1 of them
    if len(fields) != parts or b"\x02" not in fields[-1] or b"\x03" not in fields[-1]:
        columns = ("sample_id,click,buy,common_feature_index,feature_num,feature_list" if parts == 6
                   else "common_feature_index,feature_num,feature_list")
        raise UserError(f"{path} line 1 is not an AliCCP {layout} line ({layout} lines are {columns} with "
                        f"field\\x02id\\x03value items); check --raw-dir and the file")


def read_common(path: Path, bad: rawfiles.BadLines, needed: set | None = None, block_bytes: int = 16 << 20,
                log: Callable[[str], None] = print) -> pl.DataFrame:
    """``__cidx`` (common_feature_index) -> ``__c<j>`` = the fields found in its feature list, one row per index.

    ``needed``: keep only these indices (bytes), for ``--max-rows``.
    """
    frames = []
    for first, lines in rawfiles.line_blocks(path, block_bytes):
        nos = range(first, first + len(lines))
        bad.seen(len(lines))
        if needed is not None:
            picked = [(n, ln) for n, ln in zip(nos, lines) if ln.split(b",", 1)[0] in needed]
            nos, lines = [n for n, _ in picked], [ln for _, ln in picked]
        frames.append(parse_block(lines, list(nos), 3, bad, "__c"))
    frame = pl.concat(frames) if frames else parse_block([], [], 3, bad, "__c")
    frame = frame.drop("__line").rename({"cidx": "__cidx"}).with_columns(pl.lit(True).alias("__known"))
    unique = frame.unique(subset=["__cidx"], keep="first", maintain_order=False)
    if unique.height != frame.height:
        log(f"  warning: {path}: {frame.height - unique.height:,} repeated common_feature_index lines; kept the "
              f"first of each")
    return unique


def _skeleton_chunks(path: Path, bad: rawfiles.BadLines, max_rows: int | None, block_bytes: int, split_test: bool):
    """Parsed skeleton lines, one frame per block: ``__line``, ``click``, ``__split``, ``__cidx``, ``__s<j>``."""
    read = 0
    for first, lines in rawfiles.line_blocks(path, block_bytes):
        if max_rows is not None:
            lines = lines[: max_rows - read]
        read += len(lines)
        bad.seen(len(lines))
        frame = parse_block(lines, list(range(first, first + len(lines))), 6, bad, "__s")
        if split_test:  # the official test file halved: CRC-32 of sample_id, even -> valid, odd -> test
            halves = [zlib.crc32(sid.encode()) & 1 for sid in frame["sid"].to_list()]
        else:
            halves = [0] * frame.height
        yield frame.drop("sid").rename({"cidx": "__cidx"}).with_columns(pl.Series("__split", halves, dtype=pl.Int8))
        if max_rows is not None and read >= max_rows:
            return


def _join_common(chunk: pl.DataFrame, common: pl.DataFrame, bad: rawfiles.BadLines) -> pl.DataFrame:
    """Each field from the skeleton line, else from its common features; lines whose index is unknown are
    malformed (their user fields would be missing)."""
    joined = chunk.join(common, on="__cidx", how="left")
    found = joined["__known"].is_not_null()
    if not found.all():
        lost = joined.filter(~found)
        shown = lost.select("__line", "__cidx").head(max(bad.wants_examples, 0))
        for line_no, cidx in shown.iter_rows():
            bad.add(line_no, f"common_feature_index {cidx[:16]} not in the common features file")
        bad.count += lost.height - shown.height
        joined = joined.filter(found)
    out = joined.select(
        pl.col("__line"), pl.col(LABEL), pl.col("__split"),
        *[pl.coalesce(f"__s{j}", f"__c{j}").alias(name) for j, name in enumerate(COLUMNS)])
    return out.with_columns(pl.col("user_id").alias("group_id"))


# ============================================================================================= conversion
def convert(raw_dir, out_dir=None, *, max_rows: int | None = None, domains=None, min_count: int = 10,
            max_malformed: float = rawfiles.DEFAULT_MAX_MALFORMED, dataset_id: str = "aliccp", block_bytes: int = 16 << 20,
            log: Callable[[str], None] = print) -> dict:
    """Convert AliCCP; write ``train/valid/test.csv``, ``dataset_config.yaml`` and ``stats.json``; return the stats."""
    if max_rows is not None and max_rows < 1:
        raise UserError(f"--max-rows must be at least 1, got {max_rows}")
    if min_count < 1:
        raise UserError(f"--min-count must be at least 1, got {min_count}")
    rd.check_range("--max-malformed", max_malformed, 0, 1)
    wanted_domains = _parse_domains(domains)
    timer = rd.Timer()
    files = {split: [rawfiles.find_raw_file(raw_dir, n, "AliCCP", HINT) for n in names] for split, names in FILES.items()}
    for split, (skeleton, common) in files.items():
        _check_layout(skeleton, 6, "sample skeleton")
        _check_layout(common, 3, "common features")
    out = rd.check_out_dir(out_dir or rd.default_out(dataset_id), log)
    log(f"Converting AliCCP from {Path(raw_dir).expanduser()} -> {out}"
        + (f" (at most {max_rows:,} lines of each skeleton file)" if max_rows else ""))
    read = {"max_rows": max_rows, "max_malformed": max_malformed, "block_bytes": block_bytes, "timer": timer,
            "log": log, "lines": {"read": 0}}  # raw lines read, common-feature files included
    tally = {"rows": {s: {} for s in rd.SPLITS}, "clicks": {s: 0 for s in rd.SPLITS},
             "rare": {"user_id": 0, "item_id": 0}, "dropped": {}}
    with rd.ConversionFiles(out) as temporary:
        domain_rows, kept = _spool_train(files["train"], temporary.spool, wanted_domains, min_count, tally, read)
        mapping = _domain_mapping(domain_rows, wanted_domains, tally["dropped"])
        log("  field 301 (raw id -> domain, training rows): "
            + ", ".join(f"{raw} -> {d} ({domain_rows.get(raw, 0):,})" for raw, d in mapping.items()))
        if tally["dropped"]:
            log("  rows of other field-301 values dropped: "
                + ", ".join(f"{k}: {v:,}" for k, v in tally["dropped"].items()))
        finish = _finisher(kept, mapping)
        writer = temporary.open_writer(output_columns())
        for frame in temporary.spool:
            frame = finish(frame)
            _tally(frame, "train", tally["rows"], tally["clicks"], tally["rare"])
            writer.write("train", frame)
        temporary.spool.remove()
        _write_test(files["test"], writer, finish, list(mapping), tally, read)
        paths = temporary.close()
    stats = _stats(dataset_id, mapping, kept, tally, min_count, max_rows, read, paths)
    _write_config(out, dataset_id, mapping, min_count)
    rd.write_json(out / "stats.json", stats)
    rd.print_table1(stats, log)
    log(f"Wrote {out}/{{train,valid,test}}.csv and {out / 'dataset_config.yaml'}: {stats['lines_read']:,} raw lines "
        f"in {stats['seconds']:.1f}s = {stats['lines_per_second']:,} lines/s; peak memory {stats['peak_rss_mb']:.0f} "
        f"MB (max RSS of this process)")
    return stats


def _spool_train(pair, spool, wanted_domains, min_count: int, tally: dict, read: dict):
    """The training skeleton parsed, joined and spooled; returns its rows per raw field-301 id and, per feature,
    the values seen at least ``min_count`` times."""
    counters = {c: rd.ValueCounter() for c in FEATURES}
    domain_rows: dict[int, int] = {}
    for frame, bad in _joined_frames(pair, False, **read):
        frame = _domain_filter(frame, wanted_domains, bad, tally["dropped"])
        for value, n in frame.group_by("domain").len().iter_rows():
            domain_rows[value] = domain_rows.get(value, 0) + n
        for column, counter in counters.items():
            counter.add(frame[column])
        spool.append(frame.drop("__line", "__split"))
    return domain_rows, {c: counter.kept(min_count) for c, counter in counters.items()}


def _finisher(kept: dict, mapping: dict[int, int]) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """Rare values -> the default, raw field-301 ids -> domains 1..K (rows of other ids dropped)."""
    remap = pl.col("domain").replace_strict(list(mapping), list(mapping.values()), default=None)

    def finish(frame):
        frame = frame.with_columns([rd.replace_rare(c, kept[c], rd.RARE_INT) for c in FEATURES] + [remap])
        return frame.filter(pl.col("domain").is_not_null())

    return finish


def _write_test(pair, writer, finish, domains: list[int], tally: dict, read: dict) -> None:
    """The official test file, parsed and joined, halved into valid (even CRC-32) and test (odd)."""
    for frame, bad in _joined_frames(pair, True, **read):
        frame = finish(_domain_filter(frame, domains, bad, tally["dropped"]))
        for code, name in ((0, "valid"), (1, "test")):
            part = frame.filter(pl.col("__split") == code)
            _tally(part, name, tally["rows"], tally["clicks"], tally["rare"])
            writer.write(name, part)


def _stats(dataset_id, mapping, kept, tally, min_count, max_rows, read, paths) -> dict:
    seconds, lines_read = read["timer"].seconds, read["lines"]["read"]
    rows = tally["rows"]
    return {"dataset_id": dataset_id, "domains": list(mapping.values()),
            "domain_mapping": {str(k): v for k, v in mapping.items()},
            "rows": rows, "clicks": tally["clicks"], "samples": sum(sum(r.values()) for r in rows.values()),
            "users": int(kept["user_id"].len()), "items": int(kept["item_id"].len()),
            "rare_user_rows": tally["rare"]["user_id"], "rare_item_rows": tally["rare"]["item_id"],
            "min_count": min_count,
            "split": {"method": "official train; official test halved by CRC-32 of sample_id (even: valid, odd: "
                                "test)"},
            "max_rows": max_rows, "lines_read": lines_read, "seconds": round(seconds, 1),
            "lines_per_second": round(lines_read / max(seconds, 1e-9)), "peak_rss_mb": round(rd.peak_rss_mb(), 1),
            "dropped_other_domains": {str(k): v for k, v in tally["dropped"].items()},
            "files": {s: str(p) for s, p in paths.items()}}


def _write_config(out: Path, dataset_id: str, mapping: dict[int, int], min_count: int) -> None:
    domains_out = list(mapping.values())
    block = rd.dataset_block(dataset_id=dataset_id, out_dir=out, domain_field="domain", domains=domains_out,
                             feature_cols=feature_cols(), label=LABEL,
                             roles={"user": "user_id", "item": "item_id", "author": "f207"}, domain_names="S{}",
                             config_paths=rd.config_paths_for(out, dataset_id))
    comment = ("AliCCP converted by `mdl-bench data aliccp` (official train; official test halved by CRC-32 of "
               f"sample_id; field 301 raw ids {list(mapping)} -> domains {domains_out};\nvalues seen < {min_count} "
               f"times in train -> -1; missing -> {rd.MISSING_INT}). Use it from a config folder's "
               "dataset_config.yaml;\nthe packaged config's `aliccp` block is this block for the default conversion.")
    (out / "dataset_config.yaml").write_text(rd.dataset_config_text(dataset_id, block, comment))


def _parse_domains(domains) -> list[int] | None:
    if not domains:
        return None
    try:
        values = [int(d) for d in domains]
    except (TypeError, ValueError):
        raise UserError(f"--domains must list raw field-301 ids (integers), got {domains!r}") from None
    if len(set(values)) != len(values):
        raise UserError(f"--domains lists a value twice ({domains!r}); list each once")
    return values


def _load_common(pair, max_rows, max_malformed, block_bytes, log) -> tuple[pl.DataFrame, int]:
    skeleton, common_path = pair
    needed = None
    if max_rows is not None:  # a quick cut: keep only the common features its skeleton lines use
        needed = set()
        with open(skeleton, "rb") as fh:
            for n, line in enumerate(fh):
                if n >= max_rows:
                    break
                parts = line.split(b",", 4)
                if len(parts) > 3:
                    needed.add(parts[3])
    bad = rawfiles.BadLines(common_path, max_malformed)
    common = read_common(common_path, bad, needed, block_bytes, log)
    bad.finish(log)
    log(f"  read {common_path.name}: {bad.lines:,} lines, {common.height:,} kept")
    return common, bad.lines


def _joined_frames(split_files: list, split_test: bool, max_rows, max_malformed: float, block_bytes: int, timer,
                   log, lines: dict):
    """``(frame, bad lines)`` per block of one split's skeleton, joined with its common features; at the end the
    split's malformed lines are checked, its raw lines added to ``lines["read"]`` and its reading speed logged."""
    common, n_common = _load_common(split_files, max_rows, max_malformed, block_bytes, log)
    bad = rawfiles.BadLines(split_files[0], max_malformed)
    t0 = timer.seconds
    for chunk in _skeleton_chunks(split_files[0], bad, max_rows, block_bytes, split_test=split_test):
        yield _join_common(chunk, common, bad), bad
    bad.finish(log)
    lines["read"] += n_common + bad.lines
    log(f"  read {split_files[0].name}: {bad.lines:,} lines, {bad.lines / max(timer.seconds - t0, 1e-9):,.0f} "
        f"lines/s ({timer.seconds:.0f}s)")


def _domain_filter(frame: pl.DataFrame, wanted: list[int] | None, bad: rawfiles.BadLines, dropped: dict) -> pl.DataFrame:
    missing = frame["domain"].is_null()
    if missing.any():
        lost = frame.filter(missing)
        shown = lost.select("__line").head(max(bad.wants_examples, 0))
        for (line_no,) in shown.iter_rows():
            bad.add(line_no, "no field 301 (domain)")
        bad.count += lost.height - shown.height
        frame = frame.filter(~missing)
    if wanted is not None:
        other = ~frame["domain"].is_in(wanted)
        if other.any():
            for value, n in frame.filter(other).group_by("domain").len().iter_rows():
                dropped[value] = dropped.get(value, 0) + n
            frame = frame.filter(~other)
    return frame


def _domain_mapping(domain_rows: dict[int, int], wanted: list[int] | None, dropped: dict[int, int]) -> dict[int, int]:
    """Raw field-301 id -> domain 1..K: ``wanted`` in its order, else every value of train, ascending."""
    if wanted is None:
        if not domain_rows:
            raise UserError("the AliCCP training file has no usable rows (none with field 301); check the file")
        wanted = sorted(domain_rows)
    for raw in wanted:
        if not domain_rows.get(raw):
            seen = {k: domain_rows.get(k, 0) + dropped.get(k, 0) for k in set(domain_rows) | set(dropped)}
            present = ", ".join(f"{k} ({v:,})" for k, v in sorted(seen.items())) or "none"
            raise UserError(f"domain 301={raw} has no training rows (field-301 values in train: {present}); pick "
                            f"from them with --domains")
    return {raw: k + 1 for k, raw in enumerate(wanted)}


def _tally(frame: pl.DataFrame, split: str, rows: dict, clicks: dict, rare: dict) -> None:
    for value, n in frame.group_by("domain").len().iter_rows():
        rows[split][str(value)] = rows[split].get(str(value), 0) + n
    clicks[split] += int(frame[LABEL].cast(pl.Int64).sum())
    for column in rare:
        rare[column] += int((frame[column] == rd.RARE_INT).sum())
