"""KuaiRand (1K, Pure, 27K) from its published CSV files to a multi-domain CTR dataset (paper section 4.1).

Raw files (https://kuairand.com; a release is one suffix, ``1k`` by default)::

    log_standard_4_08_to_4_21_<r>.csv   log_standard_4_22_to_5_08_<r>.csv    (27K: _part1, _part2 of each)
    user_features_<r>.csv   video_features_basic_<r>.csv   video_features_statistic_<r>.csv   (27K: _part1..3)

What the conversion does, in the paper's terms:

* **rows**: both standard logs (the random-exposure log is not used; the paper's 11,648,743 rows are the
  standard logs' rows of the five tabs); label ``is_click``;
* **domains**: the ``tab`` values with most rows (five, chosen from the data: 0, 1, 2, 4, 6 on KuaiRand-1K),
  or ``domains=`` given; a named tab without rows is refused;
* **features**: ``user_id``, ``video_id``, ``tab``, the user file's 30 features and the video files' 11 + 51 = 62
  (the paper's 30 user-side and 62 item-side features). The 3.1 GB statistics file is read in blocks and only
  the videos of the kept rows are held. A statistics column whose name a user feature already has
  (``follow_user_num``) is renamed ``video_<name>``;
* **dropped log columns**: the post-exposure feedback (``is_like, is_follow, is_comment, is_forward, is_hate,
  long_view, play_time_ms, profile_stay_time, comment_stay_time, is_profile_enter``: known only after the
  click, i.e. label leakage), and ``date, hourmin, time_ms`` (used for the split only), ``duration_ms`` (the
  video file's ``video_duration``), ``is_rand`` (a logging-policy flag);
* **values**: ``-124``, ``NaN`` and empty cells are missing (written ``-2`` / ``__missing__``); counts and
  float statistics become log-scale buckets, ``floor(8 * log2(1 + x))`` (chosen because the paper treats every
  feature as a category with a frequency threshold, and the daily averages are nearly unique floats); a
  value seen fewer than ``min_count`` = 10 times in the training rows becomes the default (``-1`` /
  ``__rare__``);
* **split by time** (default): the last ``test_days`` = 3 days of the logs are test, the ``valid_days`` = 3
  before them valid, the rest train. On KuaiRand-1K (2022-04-08 .. 2022-05-08) that is train 04-08 .. 05-02
  (25 days), valid 05-03 .. 05-05, test 05-06 .. 05-08 - about 80/10/10 of the days, with every test day after
  every training day. ``split="random"`` draws each row into train/valid/test (80/10/10 by default) from a
  seeded hash of its position, independent of block sizes.

Memory: the logs pass through once as text into a Parquet spool (5 small columns), then twice from it; the
user table and the kept videos' features are held (the video features as small integers). The written CSV
files are built by FuxiCTR's FeatureProcessor on first use (``mdl-bench run-expid --expid Crocodile_kuairand``).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from mdl_bench.kernel.errors import UserError
from . import rawfiles, realdata as rd

LOG_COLUMNS = ["user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow", "is_comment",
               "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms", "profile_stay_time",
               "comment_stay_time", "is_profile_enter", "is_rand", "tab"]
LEAKAGE_COLUMNS = ["is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view", "play_time_ms",
                   "profile_stay_time", "comment_stay_time", "is_profile_enter"]
LOG_KINDS = {"user_id": "key", "video_id": "key", "date": "key", "is_click": "label", "tab": "key"}

USER_STR = ["user_active_degree", "follow_user_num_range", "fans_user_num_range", "friend_user_num_range",
            "register_days_range"]
USER_INT = ["is_lowactive_period", "is_live_streamer", "is_video_author"] + [f"onehot_feat{i}" for i in range(18)]
USER_COUNT = ["follow_user_num", "fans_user_num", "friend_user_num", "register_days"]  # -> log buckets
USER_FEATURES = ["user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
                 "follow_user_num", "follow_user_num_range", "fans_user_num", "fans_user_num_range",
                 "friend_user_num", "friend_user_num_range", "register_days", "register_days_range"] + \
                [f"onehot_feat{i}" for i in range(18)]

BASIC_STR = ["video_type", "upload_dt", "upload_type", "tag"]
BASIC_INT = ["author_id", "visible_status", "server_width", "server_height", "music_id", "music_type"]
BASIC_COUNT = ["video_duration"]
BASIC_FEATURES = ["author_id", "video_type", "upload_dt", "upload_type", "visible_status", "video_duration",
                  "server_width", "server_height", "music_id", "music_type", "tag"]
STAT_FEATURES = [
    "counts", "show_cnt", "show_user_num", "play_cnt", "play_user_num", "play_duration", "complete_play_cnt",
    "complete_play_user_num", "valid_play_cnt", "valid_play_user_num", "long_time_play_cnt",
    "long_time_play_user_num", "short_time_play_cnt", "short_time_play_user_num", "play_progress",
    "comment_stay_duration", "like_cnt", "like_user_num", "click_like_cnt", "double_click_cnt", "cancel_like_cnt",
    "cancel_like_user_num", "comment_cnt", "comment_user_num", "direct_comment_cnt", "reply_comment_cnt",
    "delete_comment_cnt", "delete_comment_user_num", "comment_like_cnt", "comment_like_user_num", "follow_cnt",
    "follow_user_num", "cancel_follow_cnt", "cancel_follow_user_num", "share_cnt", "share_user_num",
    "download_cnt", "download_user_num", "report_cnt", "report_user_num", "reduce_similar_cnt",
    "reduce_similar_user_num", "collect_cnt", "collect_user_num", "cancel_collect_cnt", "cancel_collect_user_num",
    "direct_comment_user_num", "reply_comment_user_num", "share_all_cnt", "share_all_user_num",
    "outsite_share_all_cnt"]
STAT_RENAMED = {c: f"video_{c}" for c in STAT_FEATURES if c in USER_FEATURES}  # follow_user_num
VIDEO_FEATURES = BASIC_FEATURES + [STAT_RENAMED.get(c, c) for c in STAT_FEATURES]
USER_KEY, VIDEO_KEY, DOMAIN, LABEL = "user_id", "video_id", "tab", "is_click"


@dataclass(frozen=True)
class Release:
    name: str
    dataset_id: str
    logs: tuple
    user: str
    basic: tuple
    stats: tuple


RELEASES = {
    "1k": Release("KuaiRand-1K", "kuairand1k",
                  ("log_standard_4_08_to_4_21_1k.csv", "log_standard_4_22_to_5_08_1k.csv"),
                  "user_features_1k.csv", ("video_features_basic_1k.csv",), ("video_features_statistic_1k.csv",)),
    "pure": Release("KuaiRand-Pure", "kuairand_pure",
                    ("log_standard_4_08_to_4_21_pure.csv", "log_standard_4_22_to_5_08_pure.csv"),
                    "user_features_pure.csv", ("video_features_basic_pure.csv",),
                    ("video_features_statistic_pure.csv",)),
    "27k": Release("KuaiRand-27K", "kuairand27k",
                   ("log_standard_4_08_to_4_21_27k_part1.csv", "log_standard_4_08_to_4_21_27k_part2.csv",
                    "log_standard_4_22_to_5_08_27k_part1.csv", "log_standard_4_22_to_5_08_27k_part2.csv"),
                   "user_features_27k.csv", ("video_features_basic_27k.csv",),
                   ("video_features_statistic_27k_part1.csv", "video_features_statistic_27k_part2.csv",
                    "video_features_statistic_27k_part3.csv")),
}


def feature_cols() -> list[dict]:
    """The ``feature_cols`` of the written dataset (the packaged ``kuairand1k`` block lists the same)."""
    user_int = [c for c in USER_FEATURES if c not in USER_STR]
    video_str = [c for c in VIDEO_FEATURES if c in BASIC_STR]
    video_int = [c for c in VIDEO_FEATURES if c not in BASIC_STR]
    return [rd.feature_block([USER_KEY], "int", "user"), rd.feature_block([VIDEO_KEY], "int", "item"),
            rd.feature_block([DOMAIN], "int", "context"),
            rd.feature_block(user_int, "int", "user"), rd.feature_block(USER_STR, "str", "user"),
            rd.feature_block(video_int, "int", "item"), rd.feature_block(video_str, "str", "item")]


def output_columns() -> list[str]:
    return [LABEL, DOMAIN, USER_KEY, VIDEO_KEY] + USER_FEATURES + VIDEO_FEATURES + ["group_id"]


# ============================================================================================== the files
def _files(raw_dir, release: Release) -> dict[str, list[Path]]:
    hint = (f"download {release.name} from https://kuairand.com, unpack it and pass its folder with --raw-dir "
            f"(--release picks 1k, pure or 27k)")
    find = lambda name: rawfiles.find_raw_file(raw_dir, name, release.name, hint)  # noqa: E731
    return {"logs": [find(n) for n in release.logs], "user": [find(release.user)],
            "basic": [find(n) for n in release.basic], "stats": [find(n) for n in release.stats]}


def _headers(paths: list[Path], key: str) -> list[list[str] | None]:
    """Per file: ``None`` when it starts with its own header line, else the first file's header (a headerless
    ``_partN`` continuation)."""
    out, first = [], None
    for path in paths:
        names = rawfiles.read_header(path)
        if key in names:
            out.append(None)
            first = first or names
        elif first is not None:
            out.append(first)
        else:
            out.append(None)  # no header at all: read_csv_blocks refuses it with the layout message
    return out


def _read_all(paths, kinds, max_malformed, what, expected, block_bytes, key, log) -> pl.DataFrame:
    frames = []
    for path, header in zip(paths, _headers(paths, key)):
        bad = rawfiles.BadLines(path, max_malformed)
        for frame in rawfiles.read_csv_blocks(path, kinds, bad, header=header, block_bytes=block_bytes, what=what,
                                        expected=expected):
            frames.append(frame)
        bad.finish(log)
    return pl.concat(frames) if frames else pl.DataFrame(schema={c: pl.Int64 for c in kinds})


# ============================================================================================= conversion
def convert(raw_dir, out_dir=None, *, release: str = "1k", domains=None, num_domains: int = 5, split: str = "time",
            valid_days: int = 3, test_days: int = 3, valid_frac: float = 0.1, test_frac: float = 0.1,
            seed: int = 2024, min_count: int = 10, max_malformed: float = rawfiles.DEFAULT_MAX_MALFORMED,
            dataset_id: str | None = None, block_bytes: int = 32 << 20, log: Callable[[str], None] = print) -> dict:
    """Convert one KuaiRand release; write ``train/valid/test.csv``, ``dataset_config.yaml``, ``stats.json``.

    Returns the statistics (table 1 plus the split) that it prints.
    """
    _check_options(release, split, min_count, max_malformed, num_domains, valid_days, test_days, valid_frac,
                   test_frac)
    rel = RELEASES[release]
    dataset_id = dataset_id or rel.dataset_id
    timer = rd.Timer()
    files = _files(raw_dir, rel)
    out = rd.check_out_dir(out_dir or rd.default_out(dataset_id), log)
    log(f"Converting {rel.name} from {Path(raw_dir).expanduser()} -> {out}")
    _check_log_headers(files["logs"])
    read = {"max_malformed": max_malformed, "block_bytes": block_bytes, "log": log}
    with rd.ConversionFiles(out) as temporary:
        spool = temporary.spool
        tab_rows, dates = _spool_logs(files["logs"], spool, timer, **read)
        if not spool.rows:
            raise UserError(f"the {rel.name} logs in {raw_dir} have no valid rows; check the files")
        chosen = _choose_domains(tab_rows, domains, num_domains)
        log("  tabs by rows: " + ", ".join(f"{t}: {n:,}" for t, n in sorted(tab_rows.items(), key=lambda kv: -kv[1]))
            + f"; domains: {', '.join(map(str, chosen))}")
        assign, split_info = _splitter(split, dates, valid_days, test_days, valid_frac, test_frac, seed)
        log(f"  split: {split_info['text']}")
        counts = _count_rows(spool, chosen, assign, split_info)
        users, videos, kept_users, kept_videos = _feature_tables(files, counts, min_count, timer, **read)
        rare_rows = _write_joined(spool, temporary.open_writer(output_columns()), chosen, assign, users, videos,
                                  kept_users, kept_videos)
        paths = temporary.close()
    stats = {"dataset_id": dataset_id, "release": rel.name, "domains": chosen, "rows": counts["rows"],
             "clicks": counts["clicks"], "samples": sum(sum(r.values()) for r in counts["rows"].values()),
             "users": int(kept_users.len()), "items": int(kept_videos.len()), "rare_user_rows": rare_rows[0],
             "rare_item_rows": rare_rows[1], "min_count": min_count, "split": split_info,
             "tab_rows": {str(k): v for k, v in tab_rows.items()}, "seconds": round(timer.seconds, 1),
             "peak_rss_mb": round(rd.peak_rss_mb(), 1), "files": {s: str(p) for s, p in paths.items()}}
    _write_config(out, dataset_id, rel, chosen, stats)
    rd.write_json(out / "stats.json", stats)
    rd.print_table1(stats, log)
    log(f"Wrote {out}/{{train,valid,test}}.csv and {out / 'dataset_config.yaml'} in {timer.seconds:.0f}s "
        f"(peak memory {stats['peak_rss_mb']:.0f} MB)")
    return stats


def _check_options(release, split, min_count, max_malformed, num_domains, valid_days, test_days, valid_frac,
                   test_frac) -> None:
    if release not in RELEASES:
        raise UserError(f"unknown KuaiRand release {release!r}; use one of {', '.join(RELEASES)}")
    if split not in ("time", "random"):
        raise UserError(f"--split {split!r} is not known; use time (by date) or random")
    if min_count < 1:
        raise UserError(f"--min-count must be at least 1, got {min_count}")
    rd.check_range("--max-malformed", max_malformed, 0, 1)
    rd.check_range("--num-domains", num_domains, 1)
    if split == "time":  # an evaluation split of no days would be empty
        rd.check_range("--valid-days", valid_days, 1)
        rd.check_range("--test-days", test_days, 1)
    else:
        rd.check_range("--valid-frac", valid_frac, 0, 1, high_open=True)
        rd.check_range("--test-frac", test_frac, 0, 1, high_open=True)
        rd.check_range("--valid-frac + --test-frac", valid_frac + test_frac, 0, 1, high_open=True)


def _check_log_headers(paths: list[Path]) -> None:
    expected_log = "a KuaiRand log file: " + ", ".join(LOG_COLUMNS)
    for path, header in zip(paths, _headers(paths, USER_KEY)):
        names = header or rawfiles.read_header(path)
        missing = [c for c in LOG_KINDS if c not in names]
        if missing:
            raise UserError(f"{path} has no column {missing[0]!r} (its header: {', '.join(names[:12])}), so it is "
                            f"not a KuaiRand log file ({expected_log}); check --raw-dir and the file")


def _spool_logs(paths, spool, timer, *, max_malformed, block_bytes, log) -> tuple[dict[int, int], list]:
    """Pass A: the logs' five used columns into the spool; returns the rows per tab and the date range."""
    tab_rows: dict[int, int] = {}
    dates = [None, None]
    for path, header in zip(paths, _headers(paths, USER_KEY)):
        bad = rawfiles.BadLines(path, max_malformed)
        for frame in rawfiles.read_csv_blocks(path, LOG_KINDS, bad, header=header, block_bytes=block_bytes,
                                              what="a KuaiRand log file", expected=", ".join(LOG_COLUMNS)):
            frame = frame.with_columns(pl.col("tab").cast(pl.Int32), pl.col("is_click").cast(pl.Int8),
                                       pl.col("date").cast(pl.Int32))
            for tab, n in frame.group_by("tab").len().iter_rows():
                tab_rows[tab] = tab_rows.get(tab, 0) + n
            lo, hi = frame["date"].min(), frame["date"].max()
            dates = [lo if dates[0] is None else min(dates[0], lo), hi if dates[1] is None else max(dates[1], hi)]
            spool.append(frame)
        bad.finish(log)
        log(f"  read {path.name}: {bad.lines:,} lines ({timer.seconds:.0f}s)")
    return tab_rows, dates


def _count_rows(spool, chosen: list[int], assign, split_info: dict) -> dict:
    """Pass B: rows and clicks per split and domain, training counts of users and videos, every kept video."""
    rows = {s: {} for s in rd.SPLITS}
    clicks = {s: 0 for s in rd.SPLITS}
    user_train, video_train, video_all = rd.ValueCounter(), rd.ValueCounter(), rd.ValueCounter()
    offset = 0
    for frame in spool:
        frame, offset = _select(frame, chosen, assign, offset)
        for s_code, tab, n, c in frame.group_by("split", "tab").agg(pl.len(), pl.col(LABEL).cast(pl.Int64)
                                                                    .sum()).iter_rows():
            name = rd.SPLITS[s_code]
            rows[name][str(tab)] = rows[name].get(str(tab), 0) + n
            clicks[name] += c
        train = frame.filter(pl.col("split") == 0)
        user_train.add(train[USER_KEY])
        video_train.add(train[VIDEO_KEY])
        video_all.add(frame[VIDEO_KEY])
    for tab in chosen:
        if not rows["train"].get(str(tab)):
            raise UserError(f"domain tab={tab} has no training rows with this split ({split_info['text']}); drop "
                            f"it from --domains or use --split random")
    return {"rows": rows, "clicks": clicks, "user_train": user_train, "video_train": video_train,
            "video_all": video_all}


def _feature_tables(files, counts: dict, min_count: int, timer, *, max_malformed, block_bytes, log):
    """The user table and the kept videos' basic and statistic features, rare values replaced; the kept ids."""
    users = _read_users(files["user"], max_malformed, block_bytes, log)
    videos = _read_videos(files["basic"], files["stats"], counts["video_all"].counts()["value"], max_malformed,
                          block_bytes, log)
    log(f"  features: {users.height:,} users, {videos.height:,} videos ({timer.seconds:.0f}s)")
    user_train, video_train = counts["user_train"], counts["video_train"]
    kept_users, kept_videos = user_train.kept(min_count), video_train.kept(min_count)
    users = _replace_rare_in_table(users, "__user", user_train.counts(), min_count, USER_FEATURES, log)
    videos = _replace_rare_in_table(videos, "__video", video_train.counts(), min_count, VIDEO_FEATURES, log)
    return users, videos, kept_users, kept_videos


def _write_joined(spool, writer, chosen, assign, users, videos, kept_users, kept_videos) -> tuple[int, int]:
    """Pass C: each spooled block joined with the user and video features, written to its split; returns the
    rows whose user / video id became the rare default."""
    rare_user_rows = rare_item_rows = 0
    offset = 0
    for frame in spool:
        frame, offset = _select(frame, chosen, assign, offset)
        frame = frame.with_columns(pl.col(USER_KEY).alias("__user"), pl.col(VIDEO_KEY).alias("__video"),
                                   pl.col(USER_KEY).alias("group_id"))
        frame = frame.with_columns(rd.replace_rare(USER_KEY, kept_users, rd.RARE_INT),
                                   rd.replace_rare(VIDEO_KEY, kept_videos, rd.RARE_INT))
        rare_user_rows += int((frame[USER_KEY] == rd.RARE_INT).sum())
        rare_item_rows += int((frame[VIDEO_KEY] == rd.RARE_INT).sum())
        frame = frame.join(users, on="__user", how="left").join(videos, on="__video", how="left")
        for code, name in enumerate(rd.SPLITS):
            writer.write(name, frame.filter(pl.col("split") == code))
    return rare_user_rows, rare_item_rows


def _choose_domains(tab_rows: dict[int, int], domains, num_domains: int) -> list[int]:
    ranked = sorted(tab_rows, key=lambda t: (-tab_rows[t], t))
    if domains:
        try:
            chosen = [int(d) for d in domains]
        except (TypeError, ValueError):
            raise UserError(f"--domains must list tab values (integers), got {domains!r}") from None
        if len(set(chosen)) != len(chosen):
            raise UserError(f"--domains lists a tab twice ({domains!r}); list each once")
        for tab in chosen:
            if not tab_rows.get(tab):
                raise UserError(f"domain tab={tab} has no rows in the logs (tabs with rows: "
                                f"{', '.join(f'{t} ({tab_rows[t]:,})' for t in ranked[:8])}); pick from them with "
                                f"--domains")
    else:
        if num_domains < 1:
            raise UserError(f"--num-domains must be at least 1, got {num_domains}")
        if len(ranked) < num_domains:
            raise UserError(f"the logs have {len(ranked)} tabs with rows, fewer than --num-domains {num_domains}; "
                            f"lower it or list the tabs with --domains")
        chosen = ranked[:num_domains]
    return sorted(chosen)  # ascending, as FuxiCTR numbers integer categories (tower order = table order)


def _as_date(value: int) -> dt.date:
    try:
        return dt.datetime.strptime(str(int(value)), "%Y%m%d").date()
    except ValueError:
        raise UserError(f"log column date has value {value}, not a YYYYMMDD date; check the log files") from None


def _splitter(split, dates, valid_days, test_days, valid_frac, test_frac, seed):
    """``assign(frame, offset) -> Int8 split codes`` (0 train, 1 valid, 2 test) and a description."""
    if split == "time":
        if valid_days < 1 or test_days < 1:
            raise UserError("--valid-days and --test-days must be at least 1")
        first, last = _as_date(dates[0]), _as_date(dates[1])
        test_start = last - dt.timedelta(days=test_days - 1)
        valid_start = test_start - dt.timedelta(days=valid_days)
        if valid_start <= first:
            raise UserError(f"the logs span {first} to {last} ({(last - first).days + 1} days), too few for "
                            f"{valid_days} valid and {test_days} test days plus training days; lower --valid-days/"
                            f"--test-days or use --split random")
        v, t = int(valid_start.strftime("%Y%m%d")), int(test_start.strftime("%Y%m%d"))
        day = dt.timedelta(days=1)
        text = (f"by date: train {first} .. {valid_start - day}, valid {valid_start} .. {test_start - day}, "
                f"test {test_start} .. {last}")

        def assign(frame, offset):
            date = pl.col("date")
            return frame.select(pl.when(date >= t).then(2).when(date >= v).then(1).otherwise(0)
                                .cast(pl.Int8).alias("split"))["split"]

        info = {"method": "time", "train": [str(first), str(valid_start - day)],
                "valid": [str(valid_start), str(test_start - day)], "test": [str(test_start), str(last)]}
    else:
        if not (0 < valid_frac < 1 and 0 < test_frac < 1 and valid_frac + test_frac < 1):
            raise UserError("--valid-frac and --test-frac must be in (0, 1) and sum to less than 1")
        cut_valid, cut_test = 1.0 - valid_frac - test_frac, 1.0 - test_frac
        text = (f"random (seed {seed}): train {cut_valid:.0%}, valid {valid_frac:.0%}, test {test_frac:.0%} of the "
                f"rows")

        def assign(frame, offset):
            u = rd.splitmix_uniform(np.arange(offset, offset + frame.height), seed)
            return pl.Series("split", np.where(u < cut_valid, 0, np.where(u < cut_test, 1, 2)).astype(np.int8))

        info = {"method": "random", "seed": seed, "fractions": [cut_valid, valid_frac, test_frac]}
    info["text"] = text
    return assign, info


def _select(frame: pl.DataFrame, chosen: list[int], assign, offset: int) -> tuple[pl.DataFrame, int]:
    """The rows of the chosen tabs with their split code; ``offset`` counts every spooled row (random split)."""
    frame = frame.with_columns(assign(frame, offset))
    return frame.filter(pl.col("tab").is_in(chosen)), offset + frame.height


def _dedupe(frame: pl.DataFrame, key: str, what: str, log) -> pl.DataFrame:
    unique = frame.unique(subset=[key], keep="first", maintain_order=True)
    if unique.height != frame.height:
        log(f"  warning: {frame.height - unique.height:,} repeated {key} lines in the {what} file(s); kept the "
            f"first of each")
    return unique


def _read_users(paths, max_malformed, block_bytes, log) -> pl.DataFrame:
    kinds = {USER_KEY: "key"}
    kinds.update({c: ("str" if c in USER_STR else "int") for c in USER_FEATURES})
    users = _read_all(paths, kinds, max_malformed, "a KuaiRand user features", USER_KEY + ", " + ", ".join(
        USER_FEATURES), block_bytes, USER_KEY, log)
    if users.height == 0:
        _no_rows(paths, "a KuaiRand user features")
    users = _dedupe(users, USER_KEY, "user features", log)
    return users.with_columns([_bucket(c) for c in USER_COUNT]).rename({USER_KEY: "__user"})


def _bucket(column: str) -> pl.Expr:
    """``floor(8 * log2(1 + x))`` for ``x >= 0``: 8 buckets per doubling keep resolution where heavy-tailed
    counts are dense. A negative value (none in KuaiRand but -124) goes below the -1/-2 codes."""
    x = pl.col(column).cast(pl.Float64)
    b = (8 * (1.0 + x.abs()).log(2)).floor().cast(pl.Int64)
    return pl.when(x >= 0).then(b).otherwise(-3 - b).alias(column)


def _no_rows(paths, what: str) -> None:
    names = ", ".join(str(p) for p in paths)
    raise UserError(f"{names} has no data rows (a header only?), so it is not {what} file; download the "
                    f"release again and pass its folder with --raw-dir")


def _read_videos(basic_paths, stat_paths, wanted: pl.Series, max_malformed, block_bytes, log) -> pl.DataFrame:
    """Basic and statistic features of the ``wanted`` videos, joined on ``video_id`` (missing where absent)."""
    wanted_frame = pl.DataFrame({"__video": wanted.cast(pl.Int64)})

    def keep(frame):
        return frame.rename({VIDEO_KEY: "__video"}).join(wanted_frame, on="__video", how="semi")

    def read(paths, kinds, what, bucketed):
        frames = []
        for path, header in zip(paths, _headers(paths, VIDEO_KEY)):
            bad = rawfiles.BadLines(path, max_malformed)
            for frame in rawfiles.read_csv_blocks(path, kinds, bad, header=header, block_bytes=block_bytes, what=what,
                                            expected=VIDEO_KEY + ", " + ", ".join(c for c in kinds if c != VIDEO_KEY)):
                frame = keep(frame).with_columns([_bucket(c) for c in bucketed])
                # statistics are small buckets: Int16 keeps 4.4M videos x 51 columns under half a GB
                frames.append(frame.with_columns([pl.col(c).cast(pl.Int16) for c in bucketed]))
            bad.finish(log)
        if not frames:  # a header and no rows: every video's features would be missing (and columns absent)
            _no_rows(paths, what)
        return _dedupe(pl.concat(frames), "__video", what, log)

    basic_kinds = {VIDEO_KEY: "key"}
    basic_kinds.update({c: ("str" if c in BASIC_STR else ("float" if c in BASIC_COUNT else "int"))
                        for c in BASIC_FEATURES})
    basic = read(basic_paths, basic_kinds, "a KuaiRand video_features_basic", BASIC_COUNT)
    stat_kinds = {VIDEO_KEY: "key"}
    stat_kinds.update({c: "float" for c in STAT_FEATURES})
    stats = read(stat_paths, stat_kinds, "a KuaiRand video_features_statistic", STAT_FEATURES).rename(STAT_RENAMED)
    videos = wanted_frame.join(basic, on="__video", how="left").join(stats, on="__video", how="left")
    return videos


def _replace_rare_in_table(table: pl.DataFrame, key: str, train_counts: pl.DataFrame, min_count: int,
                           features: list[str], log) -> pl.DataFrame:
    """Replace, in a user/video table, each feature value whose training rows add up to < ``min_count``.

    A value's count is the number of training rows of the entities (users or videos) that have it.
    """
    weights = train_counts.rename({"value": key, "count": "__rows"})
    table = table.join(weights, on=key, how="left").with_columns(pl.col("__rows").fill_null(0))
    replaced = []
    for column in features:
        counts = table.group_by(column).agg(pl.col("__rows").sum())
        kept = counts.filter(pl.col("__rows") >= min_count)[column].drop_nulls()
        dtype = table.schema[column]
        default = rd.RARE_STR if dtype == pl.Utf8 else rd.RARE_INT
        if dtype != pl.Utf8 and table[column].is_in([rd.RARE_INT, rd.MISSING_INT]).any():
            log(f"  warning: column {column} has real values {rd.RARE_INT}/{rd.MISSING_INT}, the codes of rare/missing")
        replaced.append(pl.when(pl.col(column).is_null() | pl.col(column).is_in(kept.implode())).then(pl.col(column))
                        .otherwise(pl.lit(default)).cast(dtype).alias(column))
    return table.with_columns(replaced).drop("__rows")


def _write_config(out: Path, dataset_id: str, rel: Release, chosen: list[int], stats: dict) -> None:
    block = rd.dataset_block(dataset_id=dataset_id, out_dir=out, domain_field=DOMAIN, domains=chosen,
                             feature_cols=feature_cols(), label=LABEL,
                             roles={"user": "user_id", "item": "video_id", "author": "author_id"}, domain_names="S{}",
                             config_paths=rd.config_paths_for(out, dataset_id))
    comment = (f"{rel.name} converted by `mdl-bench data kuairand` ({stats['split']['text']}; values seen < "
               f"{stats['min_count']} times in train -> -1 / __rare__; missing -> {rd.MISSING_INT} / "
               f"{rd.MISSING_STR}).\nUse it from a config folder's dataset_config.yaml (`mdl-bench run-expid --config "
               f"DIR ...`);\nthe packaged config's `kuairand1k` block is this block for the default conversion.")
    (out / "dataset_config.yaml").write_text(rd.dataset_config_text(dataset_id, block, comment))
