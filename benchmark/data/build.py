"""Turn a dataset config into FuxiCTR's built layout (``feature_map.json``, vocabularies, parquet splits).

Vocabularies, ``min_categr_count``, normalisers and ``feature_map.json`` come from FuxiCTR's own
``FeatureProcessor`` (so every model uses FuxiCTR's encoders and the built folder is what FuxiCTR expects).
Only the last step differs: FuxiCTR 2.3.10 encodes rows with a Python ``map`` inside Ray Data tasks (seconds of
Ray start-up, ~14 helper processes); here the same vocabularies are applied as vectorised Polars expressions in
this process. ``tests/test_build.py`` checks that both give identical ids.

Before anything is written the raw files are checked (missing file, missing column, a label that is not
0/1, a domain value the config does not list) and every problem is a one-line :class:`UserError`. The build
goes into a temporary folder that is renamed into place at the end, under a file lock, so a killed build
leaves nothing half-written and concurrent runs build a dataset once.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from mdl_bench.kernel.errors import UserError
from . import synth
from .read import (POLARS_DTYPES, check_header, check_split, diagnose, read_error, read_split, scan_csv,
                   wanted_columns)

BUILD_VERSION = 1  # bump when the encoding below changes, so old builds are rebuilt
SPLITS = ("train", "valid", "test")


def dataset_dir(params: dict) -> Path:
    return Path(params["data_root"]) / params["dataset_id"]


def block_size(params: dict) -> int:
    """Rows per parquet part (FuxiCTR's ``data_block_size``); 0 builds one file per split."""
    value = params.get("data_block_size") or 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"data_block_size must be 0 (one file per split) or a positive number of rows per part, "
                        f"got {value!r}; fix the dataset config")
    return value


def built_paths(params: dict) -> dict[str, str]:
    """Paths of the built splits, FuxiCTR's names: ``<split>.parquet``, or the folder ``<split>/`` of parts
    ``part-000000.parquet``... when ``data_block_size > 0``."""
    root = dataset_dir(params)
    if block_size(params):
        return {split: str(root / split) for split in SPLITS}
    return {split: str(root / f"{split}.parquet") for split in SPLITS}


@contextlib.contextmanager
def file_lock(path: Path, busy: str | None = None):
    """An exclusive advisory lock held for the ``with`` block (released if the process dies).

    ``busy``: do not wait for another holder; raise :class:`UserError` with this message instead."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (fcntl.LOCK_NB if busy else 0))
        except BlockingIOError:
            raise UserError(busy) from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def expand_feature_cols(feature_cols) -> list[dict]:
    """One dict per column (FuxiCTR allows ``name: [a, b]``), with ``active`` defaulting to True."""
    if not isinstance(feature_cols, list) or not feature_cols:
        raise UserError("dataset config needs `feature_cols`: a list of {name, dtype, type} blocks; add it")
    cols = []
    for block in feature_cols:
        if not isinstance(block, dict) or "name" not in block:
            raise UserError(f"each entry of `feature_cols` needs a `name`; got {block!r}")
        names = block["name"] if isinstance(block["name"], list) else [block["name"]]
        for name in names:
            col = dict(block, name=name)
            col.setdefault("active", True)
            if col.get("dtype") not in POLARS_DTYPES:
                raise UserError(f"feature column {name!r} has dtype {col.get('dtype')!r}; use one of str, int, float")
            if col.get("type") not in ("categorical", "numeric", "meta", "sequence"):
                raise UserError(f"feature column {name!r} has type {col.get('type')!r}; this package supports "
                                f"categorical, numeric, sequence and meta columns")
            if col.get("category_processor"):
                raise UserError(f"feature column {name!r} uses category_processor={col['category_processor']!r}, "
                                f"which FuxiCTR 2.3.10 cannot transform; bucket the column before building")
            cols.append(col)
    return cols


def label_spec(params: dict) -> dict:
    label = params.get("label_col")
    if isinstance(label, list):
        if len(label) != 1:
            raise UserError("`label_col` must name exactly one click label for CTR prediction; fix the dataset config")
        label = label[0]
    if not isinstance(label, dict) or "name" not in label:
        raise UserError("dataset config needs `label_col: {name: <column>, dtype: float}`; add it")
    return dict(label, dtype=label.get("dtype", "float"))


def domain_spec(params: dict) -> tuple[str, list]:
    """The domain column and its configured values (one tower per value, in this order)."""
    field = params.get("domain_field")
    if not field:
        raise UserError(f"dataset {params.get('dataset_id')!r} has no `domain_field`; add `domain_field: <column>` "
                        f"and `domains: [values...]` to its dataset config")
    domains = params.get("domains")
    if not isinstance(domains, list) or not domains:
        raise UserError(f"dataset {params.get('dataset_id')!r} has `domain_field: {field}` but no `domains` list; "
                        f"add `domains: [v1, v2, ...]` with the values of column {field!r}")
    if len(set(map(str, domains))) != len(domains):
        raise UserError(f"`domains` of dataset {params.get('dataset_id')!r} lists a value twice; list each once")
    return field, domains


def domain_names(params: dict) -> list[str]:
    """Display names of the domains: ``domain_names`` if given, else ``S<value>`` as in the paper's tables."""
    _, domains = domain_spec(params)
    names = params.get("domain_names")
    if names is None:
        return [f"S{v}" for v in domains]
    if not isinstance(names, list) or len(names) != len(domains):
        raise UserError("`domain_names` must be a list with one name per entry of `domains`; fix the dataset config")
    return [str(n) for n in names]


# The converter that writes a packaged real dataset's raw files where its dataset block reads them.
CONVERTERS = {"kuairand1k": "mdl-bench data kuairand --raw-dir DIR",
              "kuairand_pure": "mdl-bench data kuairand --release pure --raw-dir DIR",
              "kuairand27k": "mdl-bench data kuairand --release 27k --raw-dir DIR",
              "aliccp": "mdl-bench data aliccp --raw-dir DIR",
              "movielens1m": "mdl-bench data movielens --raw DIR"}


def _how_to_create(dataset_id: str) -> str:
    if dataset_id in CONVERTERS:
        return f", or create the files: `{CONVERTERS[dataset_id]}` (DIR: the downloaded raw files)"
    return ", or write train/valid/test CSV files there (see the documentation's 'Your own data')"


def _split_files(params: dict) -> dict[str, list[str]]:
    files = {}
    for split in SPLITS:
        path = params.get(f"{split}_data")
        if not path:
            raise UserError(f"dataset {params['dataset_id']!r} has no `{split}_data`; give a CSV file or folder for "
                            f"each of train_data, valid_data and test_data")
        path = str(path)
        matched = [path] if os.path.isfile(path) else sorted(glob.glob(os.path.join(path, "*.csv")))
        if not matched:
            raise UserError(f"{split}_data file {path} not found; check the path in dataset config "
                            f"{params['dataset_id']!r}{_how_to_create(params['dataset_id'])}")
        for f in matched:
            if not os.access(f, os.R_OK):
                raise UserError(f"{split}_data file {f} is not readable; fix its permissions")
        files[split] = matched
    return files


def _fingerprint(params: dict, files: dict[str, list[str]]) -> str:
    keys = ("feature_cols", "label_col", "min_categr_count", "domain_field", "domains", "group_id", "oracle_field",
            "data_block_size")
    stats = {s: [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in fs] for s, fs in files.items()}
    payload = json.dumps({"v": BUILD_VERSION, "params": {k: params.get(k) for k in keys}, "files": stats},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _vocab_expr(name: str, vocab: dict, dtype) -> pl.Expr:
    tokens = {k: v for k, v in vocab.items() if k not in ("__PAD__", "__OOV__")}
    oov = vocab["__OOV__"]
    if not tokens:
        return pl.lit(oov, dtype=pl.Int64).alias(name)
    keys = pl.Series(list(tokens.keys()), dtype=dtype)
    return pl.col(name).replace_strict(keys, pl.Series(list(tokens.values()), dtype=pl.Int64),
                                       default=oov, return_dtype=pl.Int64).alias(name)


def encode(processor, frame: pl.DataFrame) -> pl.DataFrame:
    """Apply a fitted FuxiCTR ``FeatureProcessor`` to a preprocessed frame, vectorised.

    Gives the same ids as ``FeatureProcessor.transform``; meta columns without ``remap`` keep their dtype
    (FuxiCTR would cast them to int64, which destroys a stored probability).
    """
    exprs, computed = [], {}
    fmap = processor.feature_map
    for name, spec in fmap.features.items():
        if name not in frame.columns:
            continue
        tokenizer = processor.processor_dict.get(name + "::tokenizer")
        if spec["type"] in ("categorical", "meta") and tokenizer is not None:
            exprs.append(_vocab_expr(name, tokenizer.vocab, frame.schema[name]))
        elif spec["type"] == "numeric":
            normalizer = processor.processor_dict.get(name + "::normalizer")
            values = frame[name].cast(pl.Float64).to_numpy()
            if normalizer is not None:
                values = normalizer.transform(values)
            computed[name] = pl.Series(name, np.asarray(values, dtype=np.float64))
        elif spec["type"] == "sequence":
            matrix = np.asarray(tokenizer.encode_sequence(frame[name].to_list()), dtype=np.int64)
            computed[name] = pl.Series(name, matrix).cast(pl.Array(pl.Int64, matrix.shape[1]))
        else:
            exprs.append(pl.col(name))
    out = frame.select(exprs + [pl.col(c).cast(pl.Float64) for c in fmap.labels])
    if computed:
        out = out.with_columns(list(computed.values()))
    order = [c for c in list(fmap.features) + list(fmap.labels) if c in out.columns]
    return out.select(order)


def _preprocess(processor, frame: pl.DataFrame, cols: list[dict]) -> pl.DataFrame:
    floats = [c["name"] for c in cols if c["dtype"] == "float" and c["name"] in frame.columns]
    if floats:  # NaN is missing too (FuxiCTR only fills nulls)
        frame = frame.with_columns([pl.col(c).fill_nan(None) for c in floats])
    return processor.preprocess(frame.lazy()).collect()


def _prepare_columns(params: dict) -> tuple[list[dict], dict, str, list]:
    cols = expand_feature_cols(params.get("feature_cols"))
    label = label_spec(params)
    field, domains = domain_spec(params)
    for col in cols:
        if col["name"] == field:
            if col["type"] != "categorical":
                raise UserError(f"domain_field {field!r} must be a categorical feature column; fix its `type`")
            col["min_categr_count"] = 1  # a rare domain must keep its own id
    if not any(c["name"] == field for c in cols):
        raise UserError(f"domain_field {field!r} is not among feature_cols; add it as a categorical column")
    return cols, label, field, domains


def _check_train_domains(train_rows: dict, field: str, domains: list) -> None:
    absent = [str(d) for d in domains if not train_rows.get(str(d))]
    if absent:
        raise UserError(f"train_data has no rows of domain {field}={absent[0]}; a domain needs training rows, so drop "
                        f"it from `domains` or add its data")


def _domain_counts(frame: pl.DataFrame, field: str) -> dict:
    counts = frame.group_by(pl.col(field).cast(pl.Utf8)).len()
    return dict(zip(counts[field].to_list(), counts["len"].to_list()))


def build(params: dict, files: dict[str, list[str]], fingerprint: str, log=logging.info) -> None:
    """Fit vocabularies on train, encode all splits, write the built folder atomically.

    With ``data_block_size > 0`` nothing holds a whole split: vocabularies are counted by Polars' streaming
    engine over a lazy scan, and rows are checked, encoded and written block by block as parquet parts."""
    from mdl_bench.model_zoo.core.fuxictr_api import FeatureProcessor

    cols, label, field, domains = _prepare_columns(params)
    block = block_size(params)
    t0 = time.time()
    frames = {}
    if not block:
        for split in SPLITS:
            frames[split] = read_split(files[split], cols, label, split)
            check_split(frames[split], label, field, domains, split, files[split][0])
        _check_train_domains(_domain_counts(frames["train"], field), field, domains)
    else:
        wanted = wanted_columns(cols, label)
        for split in SPLITS:
            for path in files[split]:
                check_header(path, wanted, split)
    root = Path(params["data_root"])
    root.mkdir(parents=True, exist_ok=True)
    # the pid in the name tells a killed build's folder from a live one (remove_build_leftovers)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".build-{params['dataset_id']}-{os.getpid()}-", dir=root))
    try:
        processor = FeatureProcessor(feature_cols=copy.deepcopy(cols), label_col=label,
                                     dataset_id=params["dataset_id"], data_root=str(tmp_root),
                                     group_id=params.get("group_id"))
        meta_cols = [c["name"] for c in cols if c["type"] == "meta" and c.get("active", True)]
        if not block:
            processed = {s: _preprocess(processor, f, cols) for s, f in frames.items()}
            meta = pl.concat([processed[s].select(meta_cols) for s in SPLITS]).lazy() if meta_cols else None
            processor.fit(processed["train"].lazy(), meta_ddf=meta, rebuild_dataset=True,
                          min_categr_count=params.get("min_categr_count", 1))
            rows = {}
            for split in SPLITS:
                encode(processor, processed[split]).write_parquet(Path(processor.data_dir) / f"{split}.parquet")
                rows[split] = _domain_counts(processed[split], field)
            parts = None
        else:
            rows, parts = _build_parts(processor, params, files, cols, label, field, domains, meta_cols, block)
        info = {"fingerprint": fingerprint, "build_version": BUILD_VERSION, "rows": rows,
                "seconds": round(time.time() - t0, 2), "sources": files}
        if parts is not None:
            info["parts"] = parts
        (Path(processor.data_dir) / "build_info.json").write_text(json.dumps(info, indent=2, sort_keys=True))
        final = dataset_dir(params)
        old = None
        if final.exists():
            old = root / f".old-{params['dataset_id']}-{os.getpid()}"
            os.replace(final, old)
        os.replace(processor.data_dir, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        log(f"Built dataset {params['dataset_id']} in {info['seconds']:.1f}s: "
            + ", ".join(f"{s} {sum(rows[s].values()):,} rows" for s in SPLITS)
            + (f" in parts of {block:,} rows" if block else "") + f" -> {final}")
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def _lazy_split(processor, files: list[str], cols: list[dict], label: dict) -> pl.LazyFrame:
    wanted = wanted_columns(cols, label)
    frame = pl.concat([scan_csv(path, wanted) for path in files])
    floats = [c["name"] for c in cols if c["dtype"] == "float" and c["name"] in wanted]
    if floats:
        frame = frame.with_columns([pl.col(c).fill_nan(None) for c in floats])
    return processor.preprocess(frame)


def _fit_processor(processor, params, files, cols, label, meta_cols) -> None:
    """Fit the processor on lazy scans of the raw files; a value that does not parse becomes a user error that
    names the file, line and column."""
    try:
        meta = (pl.concat([_lazy_split(processor, files[s], cols, label).select(meta_cols) for s in SPLITS])
                if meta_cols else None)
        processor.fit(_lazy_split(processor, files["train"], cols, label), meta_ddf=meta, rebuild_dataset=True,
                      min_categr_count=params.get("min_categr_count", 1))
    except UserError:
        raise
    except Exception as exc:  # a value that does not parse surfaces while the streaming engine counts
        wanted = wanted_columns(cols, label)
        for split in SPLITS:  # name the file, line and column; the streaming engine's error does not
            for path in files[split]:
                error = diagnose(split, path, wanted, cols)
                if error is not None:
                    raise error from None
        raise UserError(f"cannot read the raw files of dataset {params['dataset_id']!r} ({str(exc).splitlines()[0]}); "
                        f"fix the files or report this as a bug") from None


def _write_split(processor, split: str, paths: list[str], cols, label, field, domains, block: int
                 ) -> tuple[dict[str, int], int]:
    """Encode one split's raw files and write them as ``block``-row parts. Returns (rows per domain, parts)."""
    wanted = wanted_columns(cols, label)
    out_dir = Path(processor.data_dir) / split
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    pending: list[pl.DataFrame] = []
    pending_rows = written = 0

    def flush(final: bool) -> None:
        nonlocal pending, pending_rows, written
        while pending_rows >= block or (final and pending_rows):
            joined = pl.concat(pending) if len(pending) > 1 else pending[0]
            joined.head(block).write_parquet(out_dir / f"part-{written:06d}.parquet")
            written += 1
            rest = joined.slice(block)
            pending, pending_rows = ([rest], rest.height) if rest.height else ([], 0)

    for path in paths:
        offset = 0
        try:
            for frame in scan_csv(path, wanted).collect_batches(chunk_size=block):
                check_split(frame, label, field, domains, split, path, offset=offset)
                offset += frame.height
                processed = _preprocess(processor, frame, cols)
                for key, value in _domain_counts(processed, field).items():
                    counts[key] = counts.get(key, 0) + value
                pending.append(encode(processor, processed))
                pending_rows += frame.height
                flush(final=False)
        except UserError:
            raise
        except Exception as exc:
            raise read_error(split, path, wanted, cols, exc) from None
    flush(final=True)
    return counts, written


def _build_parts(processor, params, files, cols, label, field, domains, meta_cols, block):
    """Streamed build: fit on lazy scans, then encode and write ``block``-row parts. Returns (rows, part counts)."""
    _fit_processor(processor, params, files, cols, label, meta_cols)
    rows, parts = {}, {}
    for split in SPLITS:
        counts, written = _write_split(processor, split, files[split], cols, label, field, domains, block)
        if split == "train":
            _check_train_domains(counts, field, domains)
        rows[split], parts[split] = counts, written
    return rows, parts


def read_build_info(params: dict) -> dict | None:
    path = dataset_dir(params) / "build_info.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def remove_build_leftovers(root: Path, dataset_id: str, log=logging.info) -> list[str]:
    """Remove what killed builds of ``dataset_id`` left in ``root`` (``.build-<id>-<pid>-*`` folders, and
    ``.old-<id>-<pid>`` ones of a build killed while swapping folders), saying so in one line.

    Called under the dataset's lock, so no other build of this id is running; the pid is checked as well, and a
    folder of a live process is left alone. ``.build-<id>-XXXXXXXX`` (no pid: older versions) is a leftover too."""
    from mdl_bench.kernel.paths import pid_alive

    name = re.escape(dataset_id)
    patterns = (re.compile(rf"^\.build-{name}-(\d+)-[a-z0-9_]{{8}}$"), re.compile(rf"^\.old-{name}-(\d+)$"),
                re.compile(rf"^\.build-{name}-()[a-z0-9_]{{8}}$"))
    removed = []
    for entry in (root.iterdir() if root.is_dir() else []):
        match = next((m for p in patterns if (m := p.match(entry.name))), None)
        if match is None or not entry.is_dir():
            continue
        pid = int(match.group(1)) if match.group(1) else None
        if pid is not None and pid != os.getpid() and pid_alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry.name)
    if removed:
        log(f"Removed leftovers of a killed build of dataset {dataset_id} in {root}: {', '.join(sorted(removed))}")
    return removed


def ensure_dataset(params: dict, log=logging.info) -> dict[str, str]:
    """Make sure the dataset of ``params`` is generated (if synthetic) and built; return the parquet paths.

    Safe to call from several processes at once: the first builds, the others wait and reuse.
    """
    if not params.get("data_root"):
        raise UserError(f"dataset {params.get('dataset_id')!r} has no `data_root`; add one (e.g. "
                        f"${{MDL_BENCH_HOME}}/data)")
    domain_spec(params)
    fmt = params.get("data_format", "csv")
    if fmt == "parquet":
        paths = {s: str(params.get(f"{s}_data") or built_paths(params)[s]) for s in SPLITS}
        for split, path in paths.items():
            if not os.path.exists(path):
                raise UserError(f"{split}_data {path} not found; build the dataset first (data_format: csv) or fix "
                                f"the path")
        if not (dataset_dir(params) / "feature_map.json").exists():
            raise UserError(f"{dataset_dir(params)}/feature_map.json not found; the parquet files must come from a "
                            f"built dataset folder")
        return paths
    if fmt != "csv":
        raise UserError(f"data_format {fmt!r} is not supported; use csv (raw files, built on first use) or parquet")
    lock = Path(params["data_root"]) / f".{params['dataset_id']}.lock"
    with file_lock(lock):
        remove_build_leftovers(Path(params["data_root"]), params["dataset_id"], log)
        if params.get("synth") is not None:
            options = dict(params["synth"]) if isinstance(params["synth"], dict) else {}
            spec = synth.make_spec(options.pop("preset", "kuairand_like"), **options)
            raw_dir = Path(params["train_data"]).parent
            for split in SPLITS:
                if Path(params[f"{split}_data"]) != raw_dir / f"{split}.csv":
                    raise UserError(f"a synthetic dataset writes train.csv, valid.csv and test.csv into one folder; "
                                    f"point {split}_data at {raw_dir / (split + '.csv')}")
            if synth.ensure_raw(spec, raw_dir, log):
                log(f"Generated synthetic data ({spec.n_train + spec.n_valid + spec.n_test:,} rows, seed "
                    f"{spec.seed}) -> {raw_dir}")
        files = _split_files(params)
        fingerprint = _fingerprint(params, files)
        info = read_build_info(params)
        paths = built_paths(params)
        missing = [p for p in list(paths.values()) + [str(dataset_dir(params) / "feature_map.json")]
                   if not os.path.exists(p)]
        if not (info and info.get("fingerprint") == fingerprint and not missing):
            if info and info.get("fingerprint") != fingerprint:
                log(f"Dataset {params['dataset_id']} config or raw files changed since the last build; rebuilding")
            elif info:
                log(f"Dataset {params['dataset_id']}: built file {missing[0]} is missing; rebuilding the dataset")
            build(params, files, fingerprint, log=log)
    return paths


def load_feature_map(params: dict):
    """The FuxiCTR ``FeatureMap`` of a built dataset (``params`` name it: ``dataset_id``, ``data_root``)."""
    from mdl_bench.model_zoo.core.fuxictr_api import FeatureMap

    data_dir = dataset_dir(params)
    feature_map = FeatureMap(params["dataset_id"], str(data_dir))
    feature_map.load(str(data_dir / "feature_map.json"), params)
    return feature_map
