"""MovieLens-1M from GroupLens's raw files to a multi-domain CTR dataset (the MDL literature's protocol).

Raw files (``ml-1m.zip`` from https://grouplens.org/datasets/movielens/1m/, unpacked), ``::``-separated, latin-1::

    ratings.dat   UserID::MovieID::Rating::Timestamp
    users.dat     UserID::Gender::Age::Occupation::Zip-code
    movies.dat    MovieID::Title::Genres            (genres |-separated)

The protocol (as in HAMUR, M3oE and Scenario-Wise-Rec):

* **domains** by the user's age code: {1, 18} -> 0, {25} -> 1, {35, 45, 50, 56} -> 2 (labels ``under25``,
  ``25to34``, ``35plus``); every user is in exactly one domain;
* **label**: rating > 3;
* **features**: ``user_id``, ``movie_id``, ``gender``, ``age``, ``occupation``, ``zip`` (text: some codes hold
  letters or a dash), ``genre`` (the first genre) and ``genres`` (all of a movie's genres, a sequence feature);
  the title and the timestamp are not features;
* **split**: ``random`` (default) draws each rating into train/valid/test 80/10/10 from a seeded hash of its line
  (the public MDL libraries' protocol: the test set changes with the seed); ``time`` cuts the ratings at two
  global timestamps, the earliest 80 % train, the next 10 % valid, the latest 10 % test (ratings of one second
  stay together, so the shares are close to, not exactly, 80/10/10);
* **values**: as the other converters, an id seen fewer than ``min_count`` times in train (``user_id``,
  ``movie_id``, ``zip``) becomes ``-1`` / ``__rare__``; ``group_id`` (gAUC's group) is the user id before that.

A line that does not split into the file's fields, a value that does not parse, an age code outside the seven,
or a rating of a user or movie that the other files lack is a malformed line, counted per file and fatal above
``--max-malformed`` (the first ones named with their line numbers).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from mdl_bench.kernel.errors import UserError
from . import rawfiles, realdata as rd

DATASET_ID = "movielens1m"
HINT = ("download ml-1m.zip from https://grouplens.org/datasets/movielens/1m/ and unpack it; pass the folder "
        "holding ratings.dat, users.dat and movies.dat (or the ml-1m folder above them)")
AGE_DOMAIN = {1: 0, 18: 0, 25: 1, 35: 2, 45: 2, 50: 2, 56: 2}
DOMAIN_NAMES = ["under25", "25to34", "35plus"]
LABEL = "label"
MAX_GENRES = 6  # the most genres one ML-1M movie has
DEFAULT_SEED = 2024
SPLITS_RANDOM = (0.8, 0.9)  # cumulative shares of train, train + valid
# file: (columns, integer columns)
LAYOUT = {"ratings.dat": (["user_id", "movie_id", "rating", "timestamp"], ["user_id", "movie_id", "rating",
                                                                           "timestamp"]),
          "users.dat": (["user_id", "gender", "age", "occupation", "zip"], ["user_id", "age", "occupation"]),
          "movies.dat": (["movie_id", "title", "genres"], ["movie_id"])}
RARE_COLUMNS = {"user_id": rd.RARE_INT, "movie_id": rd.RARE_INT, "zip": rd.RARE_STR}
COLUMNS = ["user_id", "movie_id", "gender", "age", "occupation", "zip", "genre", "genres", "domain", "group_id",
           LABEL]


def feature_cols() -> list[dict]:
    return [rd.feature_block(["user_id"], "int", "user"), rd.feature_block(["movie_id"], "int", "item"),
            rd.feature_block(["gender"], "str", "user"), rd.feature_block(["age", "occupation"], "int", "user"),
            rd.feature_block(["zip"], "str", "user"), rd.feature_block(["genre"], "str", "item"),
            {"name": "genres", "active": True, "dtype": "str", "type": "sequence", "splitter": "|",
             "max_len": MAX_GENRES, "source": "item"},
            rd.feature_block(["domain"], "int", "context")]


def raw_folder(raw_dir) -> Path:
    """The folder holding the three files: ``raw_dir`` itself or its ``ml-1m`` subfolder (as the zip unpacks)."""
    root = Path(raw_dir).expanduser()
    return root / "ml-1m" if not (root / "ratings.dat").is_file() and (root / "ml-1m").is_dir() else root


def read_dat(path: Path, bad: rawfiles.BadLines) -> pl.DataFrame:
    """One ``::``-separated latin-1 file as a frame of its columns (integers typed) and ``__line``; malformed lines
    are counted in ``bad`` and left out."""
    columns, integers = LAYOUT[path.name]
    lines = path.read_bytes().decode("latin-1").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    parts, numbers = [], []
    for number, line in enumerate(lines, start=1):
        fields = line.rstrip("\r").split("::")
        if len(fields) != len(columns):
            bad.add(number, f"{len(fields)} fields, expected {len(columns)} ({'::'.join(columns)})")
            continue
        parts.append(fields)
        numbers.append(number)
    bad.seen(len(lines))
    frame = pl.DataFrame(parts or None, schema={c: pl.Utf8 for c in columns}, orient="row")
    frame = frame.with_columns(pl.Series("__line", numbers, dtype=pl.Int64))
    typed = frame.with_columns([pl.col(c).str.strip_chars().cast(pl.Int64, strict=False) for c in integers])
    broken = pl.any_horizontal([typed[c].is_null() for c in integers])
    for (line, *values), (_, *parsed) in zip(frame.filter(broken).select("__line", *integers).iter_rows(),
                                             typed.filter(broken).select("__line", *integers).iter_rows()):
        column, value = next((c, v) for c, v, p in zip(integers, values, parsed) if p is None)
        bad.add(line, f"{column} {value!r} is not an integer")
    return typed.filter(~broken)


def drop_lines(frame: pl.DataFrame, keep: pl.Series, bad: rawfiles.BadLines, reason: Callable[[dict], str]):
    """``frame`` without the rows where ``keep`` is false, each counted in ``bad`` with ``reason(row)``."""
    for row in frame.filter(~keep).iter_rows(named=True):
        bad.add(row["__line"], reason(row))
    return frame.filter(keep)


def read_tables(folder: Path, max_malformed: float, log) -> pl.DataFrame:
    """The ratings joined with their user and movie (one row per rating, ``__line`` its line in ratings.dat)."""
    paths = {name: rawfiles.find_raw_file(folder, name, "MovieLens-1M", HINT) for name in LAYOUT}
    bads = {name: rawfiles.BadLines(path, max_malformed) for name, path in paths.items()}
    users = read_dat(paths["users.dat"], bads["users.dat"])
    users = drop_lines(users, users["age"].is_in(list(AGE_DOMAIN)), bads["users.dat"],
                       lambda r: f"age {r['age']} is not one of MovieLens's codes {sorted(AGE_DOMAIN)}")
    users = drop_lines(users, ~users["user_id"].is_duplicated(), bads["users.dat"],
                       lambda r: f"user {r['user_id']} is listed twice")
    movies = read_dat(paths["movies.dat"], bads["movies.dat"])
    movies = drop_lines(movies, ~movies["movie_id"].is_duplicated(), bads["movies.dat"],
                        lambda r: f"movie {r['movie_id']} is listed twice")
    ratings = read_dat(paths["ratings.dat"], bads["ratings.dat"])
    ratings = drop_lines(ratings, ratings["rating"].is_between(1, 5), bads["ratings.dat"],
                         lambda r: f"rating {r['rating']} is not 1..5")
    ratings = drop_lines(ratings, ratings["user_id"].is_in(users["user_id"].implode()), bads["ratings.dat"],
                         lambda r: f"user {r['user_id']} is not in users.dat")
    ratings = drop_lines(ratings, ratings["movie_id"].is_in(movies["movie_id"].implode()), bads["ratings.dat"],
                         lambda r: f"movie {r['movie_id']} is not in movies.dat")
    for name in ("users.dat", "movies.dat", "ratings.dat"):  # a bad user or movie explains bad ratings
        bads[name].finish(log)
    if ratings.height == 0:
        raise UserError(f"{paths['ratings.dat']} has no usable rating; {HINT}")
    genres = pl.col("genres").str.strip_chars()
    movies = movies.select("movie_id", genres.str.split("|").list.first().alias("genre"), genres.alias("genres"))
    users = users.select("user_id", pl.col("gender").str.strip_chars(), "age", "occupation",
                         pl.col("zip").str.strip_chars())
    return ratings.join(users, on="user_id", how="left").join(movies, on="movie_id", how="left")


def split_codes(frame: pl.DataFrame, split: str, seed: int) -> np.ndarray:
    """0 / 1 / 2 (train / valid / test) per rating: by a seeded hash of its line (``random``) or at the global
    timestamps below which 80 % and 90 % of the ratings fall (``time``)."""
    if split == "random":
        u = rd.splitmix_uniform(frame["__line"].to_numpy(), seed)
        return np.searchsorted(np.array(SPLITS_RANDOM), u, side="right")
    stamps = frame["timestamp"].to_numpy()
    ordered = np.sort(stamps)
    cuts = [ordered[min(int(share * len(ordered)), len(ordered) - 1)] for share in SPLITS_RANDOM]
    return np.searchsorted(np.array(cuts), stamps, side="right")


def convert(raw_dir, out_dir=None, *, split: str = "random", seed: int | None = None, min_count: int = 10,
            max_malformed: float = rawfiles.DEFAULT_MAX_MALFORMED, dataset_id: str = DATASET_ID,
            log: Callable[[str], None] = print) -> dict:
    """Convert the raw files in ``raw_dir`` into ``train/valid/test.csv``, ``dataset_config.yaml`` and
    ``stats.json`` in ``out_dir`` (default ``$MDL_BENCH_HOME/raw/<dataset_id>``, the packaged block's path)."""
    if split not in ("random", "time"):
        raise UserError(f"--split must be random or time, got {split!r}")
    if split == "time" and seed is not None:
        raise UserError(f"--seed {seed} has no effect with --split time (the cut is by timestamp); drop --seed or "
                        f"use --split random")
    seed = DEFAULT_SEED if seed is None else seed
    rd.check_range("--seed", seed, 0, 2 ** 32 - 1)
    rd.check_range("--min-count", min_count, 1)
    rd.check_range("--max-malformed", max_malformed, 0, 1, high_open=True)
    timer = rd.Timer()
    folder = raw_folder(raw_dir)
    out = rd.check_out_dir(out_dir or rd.default_out(dataset_id), log)
    log(f"Converting MovieLens-1M from {folder} -> {out} ({split} split"
        + (f", seed {seed})" if split == "random" else ")"))
    frame = read_tables(folder, max_malformed, log)
    frame = frame.with_columns(pl.col("age").replace_strict(AGE_DOMAIN).alias("domain"),
                               (pl.col("rating") > 3).cast(pl.Int64).alias(LABEL),
                               pl.col("user_id").alias("group_id"),
                               pl.Series("__split", split_codes(frame, split, seed)))
    train = frame.filter(pl.col("__split") == 0)
    kept = {c: train[c].value_counts().filter(pl.col("count") >= min_count)[c] for c in RARE_COLUMNS}
    frame = frame.with_columns([rd.replace_rare(c, kept[c], default) for c, default in RARE_COLUMNS.items()])
    rows, clicks = {}, {}
    with rd.ConversionFiles(out) as temporary:
        writer = temporary.open_writer(COLUMNS)
        for code, name in enumerate(rd.SPLITS):
            part = frame.filter(pl.col("__split") == code).sort("__line")
            writer.write(name, part)
            rows[name] = {str(d): n for d, n in part.group_by("domain").len().sort("domain").iter_rows()}
            clicks[name] = int(part[LABEL].sum())
        paths = temporary.close()
    missing = [str(d) for d in range(len(DOMAIN_NAMES)) if not rows["train"].get(str(d))]
    if missing:
        raise UserError(f"the ratings have no training row of domain {missing[0]} ({DOMAIN_NAMES[int(missing[0])]}); "
                        f"every age group needs ratings: check users.dat and ratings.dat ({HINT})")
    stats = {"dataset_id": dataset_id, "domains": list(range(len(DOMAIN_NAMES))), "domain_names": DOMAIN_NAMES,
             "rows": rows, "clicks": clicks, "samples": frame.height,
             "users": int(kept["user_id"].len()), "items": int(kept["movie_id"].len()),
             "rare_user_rows": int((frame["user_id"] == rd.RARE_INT).sum()),
             "rare_item_rows": int((frame["movie_id"] == rd.RARE_INT).sum()), "min_count": min_count,
             "split": {"method": split, "seed": seed if split == "random" else None,
                       "text": (f"random 80/10/10 by line, seed {seed}" if split == "random"
                                else "global timestamp cut at 80 % / 90 % of the ratings")},
             "seconds": round(timer.seconds, 1), "files": {s: str(p) for s, p in paths.items()}}
    block = rd.dataset_block(dataset_id=dataset_id, out_dir=out, domain_field="domain",
                             domains=stats["domains"], feature_cols=feature_cols(), label=LABEL,
                             roles={"user": "user_id", "item": "movie_id"}, domain_names=DOMAIN_NAMES,
                             config_paths=rd.config_paths_for(out, dataset_id))
    comment = (f"MovieLens-1M converted by `mdl-bench data movielens` ({stats['split']['text']}; domains by age "
               f"{{1, 18}} / {{25}} / {{35, 45, 50, 56}};\nlabel rating > 3; ids seen < {min_count} times in train "
               f"-> -1 / __rare__). Use it from a config folder's dataset_config.yaml;\nthe packaged config's "
               f"`movielens1m` block is this block for the default conversion.")
    (out / "dataset_config.yaml").write_text(rd.dataset_config_text(dataset_id, block, comment))
    rd.write_json(out / "stats.json", stats)
    rd.print_table1(stats, log)
    log(f"Wrote {out}/{{train,valid,test}}.csv and {out / 'dataset_config.yaml'} in {stats['seconds']:.1f}s")
    return stats
