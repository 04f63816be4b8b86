"""Raw files in KuaiRand-1K's and AliCCP's published formats, at their real sizes, with random content.

For rehearsing the converters, the build and training at full size without the (large, licensed) downloads.
The files have the real names, column sets, value encodings and - at ``fraction=1`` - the real row counts; the
values are random draws, with a weak click signal (user, item and domain effects) so that models have something
to fit. Nothing here is meant to reproduce the real data's statistics beyond sizes and formats.

Every file is written in blocks of ``block_rows`` rows (numpy draws -> a Polars frame -> appended CSV text), so
the memory is bounded by one block plus the per-user / per-index tables (1,000 users; AliCCP's common-feature
indices map to users by a formula, not a table).

Sizes at ``fraction=1`` (the figures the generator aims at; REFERENCE facts where known, else chosen here):

* KuaiRand-1K: 11,648,743 log rows in tabs 0, 1, 2, 4, 6 (2.41M / 7.76M / 0.90M / 0.40M / 0.18M) plus 0.5 %
  in other tabs, split over the two standard log files by their days (04-08..04-21, 04-22..05-08); 1,000 users;
  4,369,953 videos in both video files (every video has a basic and a statistics line);
* AliCCP: 42.3M train and 43.0M test skeleton lines (85.3M), field 301 in three ids with shares 32.2 : 0.64 :
  52.4; one common-feature line per ~58 skeleton lines (about 730k per file) with ~650 feature items each.
"""
from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from mdl_bench.kernel.errors import UserError
from . import aliccp, kuairand

# ============================================================================================ KuaiRand-1K
KR_TABS = {0: 2_410_000, 1: 7_760_000, 2: 900_000, 4: 400_000, 6: 178_743}  # sums to 11,648,743
KR_OTHER_TABS = (3, 5, 7, 8, 9, 10, 11, 12, 13, 14)
KR_OTHER_SHARE = 0.005
KR_USERS = 1_000
KR_VIDEOS = 4_369_953
KR_DAYS = ((dt.date(2022, 4, 8), dt.date(2022, 4, 21)), (dt.date(2022, 4, 22), dt.date(2022, 5, 8)))

DEGREES = ["full_active", "high_active", "middle_active", "UNKNOWN"]
RANGES = {
    "follow_user_num_range": ["0", "(0,10]", "(10,50]", "(50,100]", "(100,150]", "(150,250]", "(250,500]", "500+"],
    "fans_user_num_range": ["0", "[1,10)", "[10,100)", "[100,1k)", "[1k,5k)", "[5k,1w)", "[1w,10w)"],
    "friend_user_num_range": ["0", "[1,5)", "[5,30)", "[30,60)", "[60,120)", "[120,250)", "250+"],
    "register_days_range": ["15-30", "31-60", "61-90", "91-180", "181-365", "366-730", "730+"],
}
# cardinality of each onehot_feat column (chosen: a few binary, a few wide)
ONEHOT_CARD = [2, 7, 50, 1471, 15, 34, 3, 118, 454, 7, 5, 5, 2, 2, 2, 2, 2, 2]
UPLOAD_TYPES = ["ShortImport", "LongImport", "Web", "PictureSet", "LongPicture", "LipsSync", "ShortCamera",
                "LongCamera", "Kmovie", "FollowShoot", "Photo"]
MISSING_SHARE = 0.02  # cells written as -124 / NaN / empty, KuaiRand's three spellings of missing


def _scaled(n: int, fraction: float) -> int:
    return max(1, int(round(n * fraction)))


def _blocks(total: int, block_rows: int):
    start = 0
    while start < total:
        yield start, min(block_rows, total - start)
        start += block_rows


def _append_csv(path: Path, frame: pl.DataFrame, header: bool, **options) -> int:
    with open(path, "ab") as fh:
        frame.write_csv(fh, include_header=header, **options)
        return fh.tell()


def _with_missing(rng, values: np.ndarray, code) -> np.ndarray:
    out = values.astype(object) if isinstance(code, str) else values.copy()
    out[rng.random(len(values)) < MISSING_SHARE] = code
    return out


def _video_ids(rng, n: int, videos: int) -> np.ndarray:
    # a power of a uniform: a popular head of low ids and a long tail seen once or never
    return np.minimum((videos * rng.random(n) ** 2.5).astype(np.int64), videos - 1)


def _kuairand_logs(out: Path, rng, fraction: float, videos: int, block_rows: int, user_bias: np.ndarray) -> int:
    tabs = {t: _scaled(n, fraction) for t, n in KR_TABS.items()}
    other = _scaled(sum(tabs.values()) * KR_OTHER_SHARE, 1.0)
    tab_values = np.array(list(tabs) + list(KR_OTHER_TABS))
    weights = np.array(list(tabs.values()) + [other / len(KR_OTHER_TABS)] * len(KR_OTHER_TABS), dtype=float)
    total = int(round(weights.sum()))
    spans = [(a, b, (b - a).days + 1) for a, b in KR_DAYS]
    all_days = sum(s[2] for s in spans)
    tab_offset = 0.4 * np.sin(np.arange(tab_values.max() + 1))
    written = 0
    for (first, last, days), name in zip(spans, kuairand.RELEASES["1k"].logs):
        path = out / name
        path.unlink(missing_ok=True)
        rows = int(round(total * days / all_days)) if name != kuairand.RELEASES["1k"].logs[-1] else total - written
        header = True
        dates = np.array([int((first + dt.timedelta(days=d)).strftime("%Y%m%d")) for d in range(days)])
        epoch0 = int(dt.datetime(first.year, first.month, first.day, tzinfo=dt.timezone.utc).timestamp() * 1000)
        for _, n in _blocks(rows, block_rows):
            day = rng.integers(0, days, n)
            minute = rng.integers(0, 24 * 60, n)
            user = rng.integers(0, KR_USERS, n)
            video = _video_ids(rng, n, videos)
            tab = rng.choice(tab_values, n, p=weights / weights.sum())
            logit = user_bias[user] + tab_offset[tab] - 0.6 * ((video * 2654435761) % 7 == 0) - 0.7
            click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
            play = rng.integers(0, 60_000, n) * click
            frame = pl.DataFrame({
                "user_id": user, "video_id": video, "date": dates[day], "hourmin": (minute // 60) * 100 + minute % 60,
                "time_ms": epoch0 + day * 86_400_000 + minute * 60_000 + rng.integers(0, 60_000, n),
                "is_click": click, "is_like": (rng.random(n) < 0.02).astype(np.int8) * click,
                "is_follow": (rng.random(n) < 0.004).astype(np.int8) * click,
                "is_comment": (rng.random(n) < 0.003).astype(np.int8) * click,
                "is_forward": (rng.random(n) < 0.001).astype(np.int8) * click,
                "is_hate": (rng.random(n) < 0.0005).astype(np.int8),
                "long_view": (play > 30_000).astype(np.int8), "play_time_ms": play,
                "duration_ms": rng.integers(5_000, 300_000, n), "profile_stay_time": rng.integers(0, 30, n) * click,
                "comment_stay_time": rng.integers(0, 30, n) * click,
                "is_profile_enter": (rng.random(n) < 0.05).astype(np.int8) * click,
                "is_rand": np.zeros(n, dtype=np.int8), "tab": tab})
            _append_csv(path, frame.select(kuairand.LOG_COLUMNS), header)
            header = False
        written += rows
    return written


def _kuairand_users(out: Path, rng) -> None:
    n = KR_USERS
    counts = {c: np.floor(rng.lognormal(3, 2, n)).astype(np.int64) for c in kuairand.USER_COUNT}
    columns = {"user_id": np.arange(n), "user_active_degree": rng.choice(DEGREES, n),
               "is_lowactive_period": _with_missing(rng, rng.integers(0, 2, n), -124),
               "is_live_streamer": _with_missing(rng, rng.integers(0, 2, n), -124),
               "is_video_author": rng.integers(0, 2, n)}
    for c in kuairand.USER_COUNT:
        columns[c] = counts[c]
    for c, labels in RANGES.items():
        columns[c] = rng.choice(labels, n)
    for i, card in enumerate(ONEHOT_CARD):
        columns[f"onehot_feat{i}"] = _with_missing(rng, rng.integers(0, card, n), -124)
    frame = pl.DataFrame({k: (v.tolist() if v.dtype == object else v) for k, v in columns.items()}, strict=False)
    path = out / kuairand.RELEASES["1k"].user
    path.unlink(missing_ok=True)
    _append_csv(path, frame.select(["user_id"] + kuairand.USER_FEATURES), True)


def _kuairand_videos(out: Path, rng, videos: int, block_rows: int) -> None:
    basic_path = out / kuairand.RELEASES["1k"].basic[0]
    stat_path = out / kuairand.RELEASES["1k"].stats[0]
    basic_path.unlink(missing_ok=True)
    stat_path.unlink(missing_ok=True)
    header = True
    upload = [str(dt.date(2018, 1, 1) + dt.timedelta(days=d)) for d in range(1590)]
    for start, n in _blocks(videos, block_rows):
        ids = np.arange(start, start + n)
        duration = np.round(rng.lognormal(10, 1, n), 1).astype(str).astype(object)
        duration[rng.random(n) < MISSING_SHARE] = ""
        tags = rng.integers(0, 69, (n, 2))
        tag = np.where(rng.random(n) < 0.3, np.char.add(np.char.add(tags[:, 0].astype(str), ","),
                                                         tags[:, 1].astype(str)), tags[:, 0].astype(str))
        basic = pl.DataFrame({
            "video_id": ids, "author_id": (ids * 0.2).astype(np.int64) + rng.integers(0, 1000, n),
            "video_type": np.where(rng.random(n) < 0.03, "AD", "NORMAL"),
            "upload_dt": np.array(upload)[rng.integers(0, len(upload), n)],
            "upload_type": rng.choice(UPLOAD_TYPES, n), "visible_status": rng.integers(0, 8, n),
            "video_duration": duration.tolist(), "server_width": rng.choice([540, 576, 720, 1080], n),
            "server_height": rng.choice([960, 1024, 1280, 1920], n),
            "music_id": rng.integers(0, 3_000_000, n) + 989_000_000, "music_type": rng.choice([4, 7, 8, 9, 11], n),
            "tag": tag}, strict=False)
        _append_csv(basic_path, basic.select(["video_id"] + kuairand.BASIC_FEATURES), header)
        stats = {"video_id": ids}
        scale = rng.lognormal(3, 2, n)
        for j, c in enumerate(kuairand.STAT_FEATURES):
            values = scale * rng.lognormal(-0.05 * j, 0.5, n)
            stats[c] = np.where(rng.random(n) < MISSING_SHARE / 2, np.nan, values)
        _append_csv(stat_path, pl.DataFrame(stats).select(["video_id"] + kuairand.STAT_FEATURES), header,
                    float_precision=6)
        header = False


def write_kuairand(out, fraction: float = 1.0, seed: int = 2024, block_rows: int = 500_000,
                   log: Callable[[str], None] = print) -> dict:
    """KuaiRand-1K's five files under ``out`` (``fraction`` of the real row counts; the 1,000 users stay)."""
    out = _out_dir(out, fraction)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    videos = _scaled(KR_VIDEOS, fraction)
    user_bias = rng.normal(0, 0.5, KR_USERS)
    _kuairand_users(out, rng)
    rows = _kuairand_logs(out, rng, fraction, videos, block_rows, user_bias)
    log(f"  logs: {rows:,} rows ({time.perf_counter() - started:.0f}s)")
    _kuairand_videos(out, rng, videos, block_rows)
    return _summary(out, "KuaiRand-1K", fraction, {"log rows": rows, "users": KR_USERS, "videos": videos},
                    started, log)


# ================================================================================================= AliCCP
ALI_SKELETON = {"train": 42_300_000, "test": 43_016_519}  # 85,316,519 lines in all
ALI_LINES_PER_INDEX = 58
ALI_DOMAINS = (9_351_665, 9_351_666, 9_351_667)  # field-301 feature ids; shares below
ALI_DOMAIN_SHARE = np.array([32.2, 0.64, 52.4]) / (32.2 + 0.64 + 52.4)
ALI_USERS = 400_000
# feature-id ranges per field (disjoint blocks, as AliCCP's ids are global) and items per line (mean)
ALI_CARD = {"101": 400_000, "121": 98, "122": 14, "124": 3, "125": 8, "126": 4, "127": 4, "128": 3, "129": 5,
            "109_14": 6_000, "110_14": 200_000, "127_14": 80_000, "150_14": 100_000,
            "205": 4_000_000, "206": 8_000, "207": 300_000, "210": 100_000, "216": 80_000,
            "508": 5_000, "509": 200_000, "702": 80_000, "853": 100_000}
ALI_ITEMS = {"109_14": 40, "110_14": 200, "127_14": 160, "150_14": 240, "210": 3, "853": 3}
ALI_SKELETON_FIELDS = ["205", "206", "207", "210", "216", "508", "509", "702", "853"]
ALI_COMMON_FIELDS = ["101"] + aliccp.USER_FIELDS


def _field_base() -> dict[str, int]:
    base, at = {}, 1
    for field, card in ALI_CARD.items():
        base[field] = at
        at += card + 1000
    return base


def _feature_items(rng, lines: np.ndarray, field: str, base: int, ids: np.ndarray | None = None) -> pl.DataFrame:
    """``(line, item)`` rows: ``field\\x02id\\x03value`` for each line (several items for multi-valued fields)."""
    count = rng.poisson(ALI_ITEMS[field], len(lines)) + 1 if field in ALI_ITEMS else np.ones(len(lines), np.int64)
    owner = np.repeat(lines, count)
    if ids is None:
        ids = np.minimum((ALI_CARD[field] * rng.random(len(owner)) ** 2).astype(np.int64), ALI_CARD[field] - 1)
    value = np.round(rng.lognormal(0, 1, len(owner)), 5) if field in ALI_ITEMS else np.ones(len(owner))
    return pl.DataFrame({"line": owner, "id": ids + base, "w": value}).select(
        "line", pl.format(f"{field}\x02{{}}\x03{{}}", "id", "w").alias("item"))


def _feature_lists(frames: list[pl.DataFrame]) -> pl.DataFrame:
    items = pl.concat(frames).sort("line", maintain_order=True)
    return items.group_by("line", maintain_order=True).agg(pl.len().alias("num"), pl.col("item").str.join("\x01"))


def _index_name(index: np.ndarray, split: str) -> np.ndarray:
    # AliCCP's common_feature_index is a 16-hex-digit string; a keyed mix keeps train and test apart
    salt = 0x9E3779B97F4A7C15 if split == "train" else 0xC2B2AE3D27D4EB4F
    mixed = (index.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)) ^ np.uint64(salt)
    return np.char.mod("%016x", mixed)


def _aliccp_common(path: Path, rng, split: str, indices: int, users: int, block_rows: int, base) -> None:
    path.unlink(missing_ok=True)
    for start, n in _blocks(indices, block_rows):
        index = np.arange(start, start + n)
        frames = [_feature_items(rng, index, "101", base["101"], ids=(index * 7919) % users)]
        frames += [_feature_items(rng, index, f, base[f]) for f in aliccp.USER_FIELDS]
        lists = _feature_lists(frames)
        frame = pl.DataFrame({"cidx": _index_name(index, split)}).with_columns(lists["num"], lists["item"])
        _append_csv(path, frame, False, quote_style="never")


def _aliccp_skeleton(path: Path, rng, split: str, lines: int, indices: int, first_id: int, block_rows: int,
                     base) -> None:
    path.unlink(missing_ok=True)
    item_bias = rng.normal(0, 0.7, 1024)
    for start, n in _blocks(lines, block_rows):
        line = np.arange(n)
        index = np.sort(rng.integers(0, indices, n))  # lines of one index are adjacent, as in the real file
        domain = rng.choice(len(ALI_DOMAINS), n, p=ALI_DOMAIN_SHARE)
        frames = [_feature_items(rng, line, f, base[f]) for f in ALI_SKELETON_FIELDS]
        item = frames[0]["item"].str.extract(r"\x02(\d+)\x03").cast(pl.Int64).to_numpy()
        frames.append(pl.DataFrame({"line": line, "id": np.array(ALI_DOMAINS)[domain]}).select(
            "line", pl.format("301\x02{}\x031.0", "id").alias("item")))
        lists = _feature_lists(frames)
        logit = -3.4 + item_bias[item % 1024] + 0.3 * (domain == 1) + 0.4 * ((index * 31) % 5 == 0)
        click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
        buy = ((rng.random(n) < 0.006) & (click == 1)).astype(np.int8)
        frame = pl.DataFrame({"sid": np.arange(first_id + start, first_id + start + n), "click": click, "buy": buy,
                              "cidx": _index_name(index, split)}).with_columns(lists["num"], lists["item"])
        _append_csv(path, frame, False, quote_style="never")


def write_aliccp(out, fraction: float = 0.01, seed: int = 2024, block_rows: int = 200_000,
                 log: Callable[[str], None] = print) -> dict:
    """AliCCP's four files under ``out`` (``fraction`` of the real line counts)."""
    out = _out_dir(out, fraction)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    base = _field_base()
    users = _scaled(ALI_USERS, fraction)
    counts, first_id = {}, 1
    for split, (skeleton_name, common_name) in aliccp.FILES.items():
        lines = _scaled(ALI_SKELETON[split], fraction)
        indices = max(1, lines // ALI_LINES_PER_INDEX)
        _aliccp_common(out / common_name, rng, split, indices, users, max(1, block_rows // 40), base)
        log(f"  {common_name}: {indices:,} lines ({time.perf_counter() - started:.0f}s)")
        _aliccp_skeleton(out / skeleton_name, rng, split, lines, indices, first_id, block_rows, base)
        log(f"  {skeleton_name}: {lines:,} lines ({time.perf_counter() - started:.0f}s)")
        counts[f"{split} skeleton lines"], counts[f"{split} common lines"] = lines, indices
        first_id += lines
    return _summary(out, "AliCCP", fraction, counts, started, log)


# ================================================================================================= shared
def _out_dir(out, fraction: float) -> Path:
    if not 0 < fraction <= 1:
        raise UserError(f"--fraction must be in (0, 1], got {fraction}")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _summary(out: Path, name: str, fraction: float, counts: dict, started: float, log) -> dict:
    seconds = time.perf_counter() - started
    files = {p.name: p.stat().st_size for p in sorted(out.glob("*.csv"))}
    log(f"Wrote {name} at fraction {fraction:g} to {out} in {seconds:.0f}s: "
        + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + f"; {sum(files.values()) / 1e9:.2f} GB")
    return {"dataset": name, "fraction": fraction, "counts": counts, "bytes": files, "seconds": round(seconds, 1)}


WRITERS = {"kuairand": write_kuairand, "aliccp": write_aliccp}
