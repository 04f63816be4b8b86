"""Real-dataset converters on small hand-written files in each raw format.

Every fixture line below is written out by hand (helpers only fill the columns a test does not look at, with
fixed values), so the expected rows, joins, rare-value replacements and splits can be read off the fixture.
"""
from __future__ import annotations

import re
import shutil
import zlib
from pathlib import Path

import polars as pl
import pytest
import yaml

from mdl_bench.benchmark.cli import main
from mdl_bench.benchmark.data import aliccp, kuairand, rawfiles, realdata
from mdl_bench.kernel.errors import UserError
from mdl_bench.kernel.paths import packaged_config_dir


def read(path: Path) -> pl.DataFrame:
    return pl.read_csv(path, infer_schema_length=0)  # all text: "" (missing) vs "-1" (rare) stay visible


def row(frame: pl.DataFrame, **where) -> dict:
    hits = frame.filter(pl.all_horizontal([pl.col(k) == str(v) for k, v in where.items()]))
    assert hits.height == 1, (where, hits)
    return hits.row(0, named=True)


def quiet():
    lines = []
    return lines, lines.append


# ================================================================================================ KuaiRand
def log_line(user, video, date, click, tab):
    # hourmin, time_ms, then the post-exposure columns with non-zero values: none of them may reach the output
    return (f"{user},{video},{date},1200,1650000000000,{click},1,1,1,1,1,1,93700,17200,5,7,1,0,{tab}")


LOG_1 = [  # 2022-04-10 .. 04-20: all training days
    log_line(1, 10, 20220410, 1, 1), log_line(1, 10, 20220411, 0, 1), log_line(2, 10, 20220412, 1, 1),
    log_line(2, 11, 20220413, 0, 1), log_line(3, 11, 20220414, 1, 0), log_line(1, 12, 20220415, 0, 0),
    log_line(2, 10, 20220416, 1, 0), log_line(4, 11, 20220417, 0, 4), log_line(1, 10, 20220418, 1, 4),
    log_line(3, 11, 20220419, 0, 4), log_line(1, 13, 20220420, 1, 9),
    "1,10,20220420",  # line 13: 3 fields
    "2,11,20220420,1200,1650000000000,x,1,1,1,1,1,1,93700,17200,5,7,1,0,1",  # line 14: click "x"
]
LOG_2 = [  # 04-22 .. 05-08: train up to 05-04, valid 05-05/06, test 05-07/08 (2 + 2 days)
    log_line(1, 10, 20220501, 1, 1), log_line(2, 11, 20220502, 0, 1), log_line(3, 10, 20220503, 1, 0),
    log_line(1, 11, 20220504, 0, 4),
    log_line(1, 10, 20220505, 1, 1), log_line(2, 14, 20220506, 0, 0), log_line(3, 11, 20220506, 1, 4),
    log_line(1, 11, 20220507, 0, 1), log_line(2, 10, 20220508, 1, 0), log_line(3, 10, 20220508, 1, 4),
    log_line(1, 10, 20220508, 0, 5),  # tab 5: test rows only
]


def user_line(user, degree, live, fans, feat0):
    # user_id, user_active_degree, is_lowactive_period, is_live_streamer, is_video_author, follow_user_num,
    # follow_user_num_range, fans_user_num, fans_user_num_range, friend_user_num, friend_user_num_range,
    # register_days, register_days_range, onehot_feat0..17
    return (f'{user},{degree},0,{live},1,5,"(0,10]",{fans},"[1,10)",0,0,3624,730+,{feat0},'
            + ",".join(["2"] * 17))


USERS = [user_line(1, "full_active", -124, 0, 1), user_line(2, "high_active", 0, 5, 1),
         user_line(3, "middle_active", 0, "NaN", 0), user_line(5, "full_active", 0, 1, 1),
         "7,full_active"]  # line 6: 2 fields


def basic_line(video, vtype, duration, tag):
    # video_id, author_id, video_type, upload_dt, upload_type, visible_status, video_duration, server_width,
    # server_height, music_id, music_type, tag
    return f'{video},{video + 100},{vtype},2020-07-08,ShortImport,1,{duration},720,1280,989206467,4,"{tag}"'


BASIC = [basic_line(10, "NORMAL", "17200.0", "12,65"), basic_line(11, "NORMAL", "", "12"),
         basic_line(12, "AD", "5000.0", "7"), basic_line(14, "NORMAL", "9000.0", "12")]


def stat_line(video, show_cnt, follow_user_num):
    values = ["1.0"] * len(kuairand.STAT_FEATURES)
    values[kuairand.STAT_FEATURES.index("show_cnt")] = show_cnt
    values[kuairand.STAT_FEATURES.index("follow_user_num")] = follow_user_num
    return ",".join([str(video)] + values)


STATS = [stat_line(10, "75.212", "3.0"), stat_line(11, "NaN", "0.0"), stat_line(12, "-124", "0.0"),
         stat_line(14, "2.0", "0.0")]


def write_kuairand(folder: Path, suffix: str = "1k") -> Path:
    folder.mkdir(parents=True, exist_ok=True)

    def put(name, header, lines):
        (folder / name).write_text("\n".join([",".join(header)] + lines) + "\n")

    put(f"log_standard_4_08_to_4_21_{suffix}.csv", kuairand.LOG_COLUMNS, LOG_1)
    put(f"log_standard_4_22_to_5_08_{suffix}.csv", kuairand.LOG_COLUMNS, LOG_2)
    put(f"user_features_{suffix}.csv", ["user_id"] + kuairand.USER_FEATURES, USERS)
    put(f"video_features_basic_{suffix}.csv", ["video_id"] + kuairand.BASIC_FEATURES, BASIC)
    put(f"video_features_statistic_{suffix}.csv", ["video_id"] + kuairand.STAT_FEATURES, STATS)
    return folder


def convert_kuairand(tmp_path, **options):
    raw = write_kuairand(tmp_path / "raw")
    lines, log = quiet()
    options = {"num_domains": 3, "valid_days": 2, "test_days": 2, "min_count": 4, "max_malformed": 0.5, **options}
    stats = kuairand.convert(raw, tmp_path / "out", log=log, **options)
    return stats, {s: read(tmp_path / "out" / f"{s}.csv") for s in realdata.SPLITS}, "\n".join(lines)


def test_kuairand_rows_joins_rare_values_missing_values_and_time_split(tmp_path):
    stats, out, text = convert_kuairand(tmp_path)
    # domains: the three tabs with most rows (1: 8, 0: 6, 4: 6; 5 and 9 have one row each), ascending
    assert stats["domains"] == [0, 1, 4]
    assert stats["split"]["train"] == ["2022-04-10", "2022-05-04"]
    assert stats["split"]["valid"] == ["2022-05-05", "2022-05-06"]
    assert stats["split"]["test"] == ["2022-05-07", "2022-05-08"]
    assert {s: f.height for s, f in out.items()} == {"train": 14, "valid": 3, "test": 3}
    assert stats["rows"]["train"] == {"0": 4, "1": 6, "4": 4}
    for frame in out.values():
        assert frame.columns == kuairand.output_columns()
        assert not set(kuairand.LEAKAGE_COLUMNS + ["date", "hourmin", "time_ms", "duration_ms"]) & set(frame.columns)
        assert set(frame["tab"]) <= {"0", "1", "4"}
    train, valid, test = out["train"], out["valid"], out["test"]
    # users: training rows u1 6, u2 4, u3 3, u4 1 -> with min_count 4, u3 and u4 become -1; group_id keeps them
    assert sorted(set(train["user_id"])) == ["-1", "1", "2"] and sorted(set(train["group_id"])) == ["1", "2", "3", "4"]
    # videos: v10 7, v11 6, v12 1 (rare); v14 only in valid (never in train: rare too)
    assert sorted(set(train["video_id"])) == ["-1", "10", "11"]
    r = row(valid, group_id=2, tab=0)  # u2 x v14 on 05-06
    assert r["video_id"] == "-1" and r["user_id"] == "2" and r["user_active_degree"] == "high_active"
    assert r["is_click"] == "0" and r["author_id"] == "-1"  # author 114 has no training rows: rare
    # user features joined by user id; middle_active (u3, 3 training rows) and onehot_feat0=0 (u3) are rare
    r = row(train, group_id=3, tab=4)
    assert r["user_active_degree"] == "__rare__" and r["onehot_feat0"] == "-1"
    assert r["fans_user_num"] == "-2"  # NaN -> missing
    r = row(train, group_id=1, tab=1, is_click=0)
    assert r["user_active_degree"] == "full_active" and r["is_live_streamer"] == "-2"  # -124 -> missing
    assert r["follow_user_num_range"] == "(0,10]"  # a quoted field with a comma survives
    # a user without a feature line: every user feature missing, ids still there
    r = row(train, group_id=4)
    assert r["user_id"] == "-1" and all(r[c] in ("-2", "__missing__") for c in kuairand.USER_FEATURES)
    # video features: both files joined by video id, statistics as log buckets (8 per doubling)
    r = row(train, group_id=1, tab=0)  # u1 x v12 (AD, 1 training row -> rare)
    assert r["video_id"] == "-1" and r["video_type"] == "__rare__"
    r = row(test, group_id=2, tab=0)  # u2 x v10
    assert r["video_duration"] == "112" and r["show_cnt"] == "50" and r["tag"] == "12,65"
    assert r["video_follow_user_num"] == "16"  # the statistics' follow_user_num, renamed
    assert r["follow_user_num"] == "20"  # the user's (5 -> floor(8 log2 6))
    r = row(valid, group_id=3, tab=4)  # u3 x v11: duration empty, show_cnt NaN
    assert r["video_duration"] == "-2" and r["show_cnt"] == "-2"
    # malformed lines: counted with their line numbers, skipped, not fatal under the threshold
    assert re.search(r"log_standard_4_08_to_4_21_1k.csv: skipped 2 malformed of 13 lines; first: line 13 "
                     r"\(3 fields, expected 19\), 14 \(is_click='x'\)", text), text
    assert re.search(r"user_features_1k.csv: skipped 1 malformed of 5 lines; first: line 6", text)
    # table 1
    assert "#Sample 20   #User 2   #Item 2" in text
    assert stats["rare_user_rows"] == 5 + 1 and stats["rare_item_rows"] == 1 + 1


def test_kuairand_writes_a_config_block_like_the_packaged_one(tmp_path, bench_home):
    stats, _, _ = convert_kuairand(tmp_path)
    block = yaml.safe_load((tmp_path / "out" / "dataset_config.yaml").read_text())["kuairand1k"]
    packaged = yaml.safe_load((packaged_config_dir() / "dataset_config.yaml").read_text())["kuairand1k"]
    assert block["feature_cols"] == packaged["feature_cols"] and block["label_col"] == packaged["label_col"]
    assert block["domains"] == [0, 1, 4] and block["domain_field"] == "tab" and block["group_id"] == "group_id"
    assert block["train_data"] == str(tmp_path / "out" / "train.csv")
    # the default --out is the folder the packaged block reads
    lines, log = quiet()
    kuairand.convert(tmp_path / "raw", None, num_domains=3, valid_days=2, test_days=2, max_malformed=0.5, log=log)
    default = yaml.safe_load((bench_home / "raw" / "kuairand1k" / "dataset_config.yaml").read_text())["kuairand1k"]
    assert default["train_data"] == packaged["train_data"] == "${MDL_BENCH_HOME}/raw/kuairand1k/train.csv"


def test_kuairand_random_split_is_seeded_and_covers_every_row(tmp_path):
    _, first, _ = convert_kuairand(tmp_path / "a", split="random", seed=3, valid_frac=0.2, test_frac=0.2,
                                   domains=[0, 1, 4])
    _, again, _ = convert_kuairand(tmp_path / "b", split="random", seed=3, valid_frac=0.2, test_frac=0.2,
                                   domains=[0, 1, 4])
    _, other, _ = convert_kuairand(tmp_path / "c", split="random", seed=4, valid_frac=0.2, test_frac=0.2,
                                   domains=[0, 1, 4])
    assert all(first[s].equals(again[s]) for s in realdata.SPLITS)
    assert sum(f.height for f in first.values()) == 20  # every kept row lands in exactly one split
    assert any(not first[s].equals(other[s]) for s in realdata.SPLITS)


def test_kuairand_pure_and_27k_file_names(tmp_path):
    raw = write_kuairand(tmp_path / "pure", "pure")
    lines, log = quiet()
    stats = kuairand.convert(raw, tmp_path / "out_pure", release="pure", num_domains=3, valid_days=2, test_days=2,
                             min_count=4, max_malformed=0.5, log=log)
    assert stats["dataset_id"] == "kuairand_pure" and stats["samples"] == 20
    # 27K: logs and statistics come in parts; a later part may have no header line of its own
    raw27 = tmp_path / "27k"
    raw27.mkdir()
    header = ",".join(kuairand.LOG_COLUMNS)
    for name, head, body in (("4_08_to_4_21_27k_part1", True, LOG_1[:6]), ("4_08_to_4_21_27k_part2", False, LOG_1[6:]),
                             ("4_22_to_5_08_27k_part1", True, LOG_2[:5]), ("4_22_to_5_08_27k_part2", True, LOG_2[5:])):
        (raw27 / f"log_standard_{name}.csv").write_text("\n".join(([header] if head else []) + body) + "\n")
    stat_header = ",".join(["video_id"] + kuairand.STAT_FEATURES)
    for part, body in ((1, STATS[:2]), (2, STATS[2:3]), (3, STATS[3:])):
        (raw27 / f"video_features_statistic_27k_part{part}.csv").write_text("\n".join([stat_header] + body) + "\n")
    src = write_kuairand(tmp_path / "tmp27", "27k")
    for name in ("user_features_27k.csv", "video_features_basic_27k.csv"):
        shutil.copy(src / name, raw27 / name)
    stats27 = kuairand.convert(raw27, tmp_path / "out27", release="27k", num_domains=3, valid_days=2, test_days=2,
                               min_count=4, max_malformed=0.5, log=log)
    assert stats27["dataset_id"] == "kuairand27k" and stats27["rows"] == stats["rows"]
    pure = read(tmp_path / "out_pure" / "train.csv")
    assert read(tmp_path / "out27" / "train.csv").equals(pure)


@pytest.mark.parametrize("edit, options, pattern", [
    (lambda raw: (raw / "video_features_statistic_1k.csv").unlink(), {},
     r"KuaiRand-1K file video_features_statistic_1k.csv not found in .*; download KuaiRand-1K"),
    (lambda raw: (raw / "log_standard_4_22_to_5_08_1k.csv").write_text("user_id,video_id,date,is_click\n1,2,3,0\n"),
     {}, r"log_standard_4_22_to_5_08_1k.csv has no column 'tab' .* not a KuaiRand log file"),
    (lambda raw: (raw / "user_features_1k.csv").write_text("user_id,user_active_degree\n1,full_active\n"), {},
     r"user_features_1k.csv has no column 'is_lowactive_period'"),
    (None, {"domains": [0, 7]}, r"domain tab=7 has no rows in the logs \(tabs with rows: 1 \(8\), 0 \(6\), 4 \(6\)"),
    (None, {"domains": [0, 5]}, r"domain tab=5 has no training rows with this split \(by date: train 2022-04-10"),
    (None, {"max_malformed": 0.1}, r"log_standard_4_08_to_4_21_1k.csv: 2 of 13 lines are malformed \(15\.38%, more "
                                   r"than --max-malformed 0.1\); first: line 13 \(3 fields, expected 19\)"),
    (None, {"valid_days": 20, "test_days": 10}, r"the logs span 2022-04-10 to 2022-05-08 \(29 days\), too few"),
    # header-only side files are refused in one line
    (lambda raw: (raw / "video_features_basic_1k.csv").write_text(",".join(["video_id"] + kuairand.BASIC_FEATURES)
                                                                  + "\n"), {},
     r"video_features_basic_1k.csv has no data rows \(a header only\?\), so it is not a KuaiRand "
     r"video_features_basic file"),
    (lambda raw: (raw / "video_features_statistic_1k.csv").write_text(
        ",".join(["video_id"] + kuairand.STAT_FEATURES)), {}, r"video_features_statistic_1k.csv has no data rows"),
    (lambda raw: (raw / "user_features_1k.csv").write_text(",".join(["user_id"] + kuairand.USER_FEATURES) + "\n"),
     {}, r"user_features_1k.csv has no data rows"),
])
def test_kuairand_refusals(tmp_path, edit, options, pattern):
    raw = write_kuairand(tmp_path / "raw")
    if edit:
        edit(raw)
    lines, log = quiet()
    options = {"num_domains": 3, "valid_days": 2, "test_days": 2, "max_malformed": 0.5, **options}
    with pytest.raises(UserError, match=pattern) as info:
        kuairand.convert(raw, tmp_path / "out", log=log, **options)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "train.csv").exists()
    assert not list((tmp_path / "out").glob(".*")) if (tmp_path / "out").exists() else True  # no spool, no partial


# ================================================================================================== AliCCP
def items(*pairs):
    return "\x01".join(f"{field}\x02{fid}\x03{value}" for field, fid, value in pairs)


def user_items(user, extra=()):
    base = [("101", user, "1.0")] + [(f, 9000 + i, "1.0") for i, f in enumerate(
        ["121", "122", "124", "125", "126", "127", "128"])]
    return base + list(extra)


# c1: 109_14 has three items - the largest value (3.0) wins; 127_14 ties - the first wins; 129 present
C1_EXTRA = [("129", 51, "1.0"), ("109_14", 61, "1.0"), ("109_14", 62, "3.0"), ("109_14", 63, "2.0"),
            ("127_14", 71, "2.0"), ("127_14", 72, "2.0")]
COMMON_TRAIN = [
    f"c1,12,{items(*user_items(1001, C1_EXTRA))}",
    f"c2,9,{items(*user_items(1002, [('129', 51, '1.0'), ('109_14', 61, '5.0')]))}",
    f"c3,8,{items(*user_items(1003, [('999', 5, '1.0')]))}",  # no 129, no 109_14: missing; field 999 ignored
    "c4,1",  # line 4: 2 fields
]


def skeleton(sid, click, cidx, item, domain, extra=()):
    its = [("205", item, "1.0"), ("206", item % 3 + 300, "1.0"), ("207", 400, "1.0"), ("216", 500, "1.0"),
           ("508", 600, "2.5"), ("301", domain, "1.0")] + list(extra)
    return f"{sid},{click},0,{cidx},{len(its)},{items(*its)}"


SKELETON_TRAIN = [
    skeleton(1, 1, "c1", 20, 555), skeleton(2, 0, "c1", 20, 555), skeleton(3, 0, "c2", 21, 333),
    skeleton(4, 1, "c2", 20, 777), skeleton(5, 0, "c3", 22, 777, [("210", 700, "1.0"), ("210", 701, "4.0")]),
    skeleton(6, 0, "c1", 21, 555),
    "7,0,0,c1,1",  # line 7: 5 fields
    skeleton(8, 7, "c1", 20, 555),  # line 8: click 7
    f"9,0,0,c1,1,{items(('205', 'abc', '1.0'), ('301', 555, '1.0'))}",  # line 9: id not an integer
    skeleton(10, 1, "c9", 20, 555),  # line 10: unknown common_feature_index
    f"11,0,0,c2,1,{items(('205', 20, '1.0'))}",  # line 11: no field 301
    skeleton(12, 1, "c2", 21, 555),
]
COMMON_TEST = [f"t1,8,{items(*user_items(1001))}", f"t2,8,{items(*user_items(1004))}"]
SKELETON_TEST = [skeleton(100 + i, i % 2, "t1" if i % 3 else "t2", 20 + i % 4, (555, 333, 777)[i % 3])
                 for i in range(12)]


def write_aliccp(folder: Path, layout: str = "flat") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in (("common_features_train.csv", COMMON_TRAIN), ("sample_skeleton_train.csv", SKELETON_TRAIN),
                        ("common_features_test.csv", COMMON_TEST), ("sample_skeleton_test.csv", SKELETON_TEST)):
        sub = folder / (name.split("_")[-1][:-4] if layout == "split" else "")
        sub.mkdir(exist_ok=True)
        (sub / name).write_text("\n".join(lines) + "\n")
    return folder


def convert_aliccp(tmp_path, **options):
    raw = write_aliccp(tmp_path / "raw", options.pop("layout", "flat"))
    lines, log = quiet()
    options = {"min_count": 2, "max_malformed": 0.5, **options}
    stats = aliccp.convert(raw, tmp_path / "out", log=log, **options)
    return stats, {s: read(tmp_path / "out" / f"{s}.csv") for s in realdata.SPLITS}, "\n".join(lines)


def reference_fields(feature_list: str) -> dict:
    """Plain-Python reading of one feature list: per wanted field, the item with the largest value (first on
    ties) - the rule the vectorised parser implements."""
    best = {}
    for item in feature_list.split("\x01"):
        field, rest = item.split("\x02")
        fid, value = rest.split("\x03")
        if field in aliccp.FIELDS and (field not in best or float(value) > best[field][1]):
            best[field] = (int(fid), float(value))
    return {f: v[0] for f, v in best.items()}


def test_aliccp_parser_matches_a_plain_python_reading():
    lines = [ln.encode() for ln in COMMON_TRAIN[:3]]
    bad = rawfiles.BadLines("x", 1.0)
    frame = aliccp.parse_block(lines, [1, 2, 3], 3, bad, "__c")
    for (line, got) in zip(COMMON_TRAIN[:3], frame.iter_rows(named=True)):
        want = reference_fields(line.split(",", 2)[2])
        assert {f: got[f"__c{j}"] for j, f in enumerate(aliccp.FIELDS) if got[f"__c{j}"] is not None} == want
    assert frame.row(0, named=True)[f"__c{aliccp.FIELDS.index('109_14')}"] == 62  # largest value
    assert frame.row(0, named=True)[f"__c{aliccp.FIELDS.index('127_14')}"] == 71  # tie: first


def test_aliccp_rows_joins_rare_values_domains_and_halved_test(tmp_path):
    stats, out, text = convert_aliccp(tmp_path)
    train, valid, test = out["train"], out["valid"], out["test"]
    for frame in out.values():
        assert frame.columns == aliccp.output_columns()
    # raw field-301 ids in ascending order -> domains 1..3
    assert stats["domain_mapping"] == {"333": 1, "555": 2, "777": 3} and stats["domains"] == [1, 2, 3]
    assert train.height == 7 and stats["rows"]["train"] == {"1": 1, "2": 4, "3": 2}
    # the official test file halved by CRC-32 of sample_id (even -> valid, odd -> test)
    want_valid = [str(100 + i) for i in range(12) if zlib.crc32(str(100 + i).encode()) % 2 == 0]
    assert valid.height == len(want_valid) and test.height == 12 - len(want_valid)
    # joins: user fields from the common features of each line's index; rare values (min_count 2) -> -1
    r = row(train, group_id=1001, click=1, domain=2)  # sample 1, c1
    assert r["user_id"] == "1001" and r["f121"] == "9000" and r["f129"] == "51"
    assert r["f109_14"] == "62" and r["f127_14"] == "71"  # the largest value; on a tie the first item
    r = row(train, group_id=1003)  # sample 5, c3: user seen once -> -1; 129 absent -> missing
    assert r["user_id"] == "-1" and r["f129"] == "-2" and r["f109_14"] == "-2"
    assert r["f210"] == "-1" and r["domain"] == "3"  # 701 (value 4.0) chosen, seen once -> rare
    assert set(train["f207"]) == {"400"} and set(train["f508"]) == {"600"}
    # malformed lines: counted with line numbers and reasons, skipped
    assert re.search(r"sample_skeleton_train.csv: skipped 5 malformed of 12 lines; first: line 7 \(5 comma-separated "
                     r"fields, expected 6\), 8 \(click is not 0 or 1\), 9 \(an item of a wanted field is not",
                     text), text
    assert "common_features_train.csv: skipped 1 malformed of 4 lines; first: line 4 (2 comma-separated" in text
    assert "10 (common_feature_index c9 not in the common features file), 11 (no field 301 (domain))" in text
    assert stats["samples"] == 7 + 12 and "#Sample 19" in text and "lines/s" in text and "peak memory" in text


def test_aliccp_rare_counts_come_from_training_rows_only(tmp_path):
    stats, out, _ = convert_aliccp(tmp_path)
    # item 20: training rows 1, 2, 4 -> kept; item 23 appears only in the test file -> -1 there
    assert "20" in set(out["train"]["item_id"])
    held_out = pl.concat([out["valid"], out["test"]])
    assert set(held_out.filter(pl.col("group_id") == "1004")["user_id"]) == {"-1"}  # user only in test
    assert "23" not in set(held_out["item_id"])
    assert stats["users"] == 2 and stats["items"] == 2  # users 1001, 1002; items 20, 21 (>= 2 training rows)


def test_aliccp_domain_override_max_rows_and_split_folders(tmp_path):
    stats, out, text = convert_aliccp(tmp_path, domains=[555, 333], layout="split")
    assert stats["domain_mapping"] == {"555": 1, "333": 2}
    assert set(out["train"]["domain"]) == {"1", "2"} and stats["dropped_other_domains"]["777"] > 0
    stats, out, _ = convert_aliccp(tmp_path / "cut", max_rows=3)
    assert out["train"].height == 3 and stats["domain_mapping"] == {"333": 1, "555": 2}
    assert out["valid"].height + out["test"].height == 2 and stats["dropped_other_domains"] == {"777": 1}


@pytest.mark.parametrize("edit, options, pattern", [
    (lambda raw: (raw / "common_features_test.csv").unlink(), {},
     r"AliCCP file common_features_test.csv not found in .*; download Ali-CCP"),
    (lambda raw: (raw / "sample_skeleton_train.csv").write_text("user_id,video_id,tab\n1,2,3\n"), {},
     r"sample_skeleton_train.csv line 1 is not an AliCCP sample skeleton line"),
    (lambda raw: (raw / "common_features_train.csv").write_text(SKELETON_TRAIN[0] + "\n"), {},
     r"common_features_train.csv line 1 is not an AliCCP common features line"),
    (None, {"domains": [555, 999]}, r"domain 301=999 has no training rows \(field-301 values in train: 333 \(1\), "
                                    r"555 \(4\), 777 \(2\)\); pick from them with --domains"),
    (None, {"max_malformed": 0.3}, r"sample_skeleton_train.csv: 5 of 12 lines are malformed"),
])
def test_aliccp_refusals(tmp_path, edit, options, pattern):
    raw = write_aliccp(tmp_path / "raw")
    if edit:
        edit(raw)
    lines, log = quiet()
    with pytest.raises(UserError, match=pattern) as info:
        aliccp.convert(raw, tmp_path / "out", log=log, **{"min_count": 2, "max_malformed": 0.5, **options})
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "train.csv").exists()


# ============================================================================================== CLI, e2e
def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "kuairand", "--raw-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --raw-dir") and "is not a folder" in err
    write_aliccp(tmp_path / "ali")
    assert main(["data", "aliccp", "--raw-dir", str(tmp_path / "ali"), "--out", str(tmp_path / "o"),
                 "--domains", "555,x"]) == 2
    assert "--domains must list raw field-301 ids" in capsys.readouterr().err


def test_converted_fixtures_build_and_train_with_run_expid(tmp_path, capsys):
    """Both written datasets go through FuxiCTR's build and one epoch of Crocodile from a user config folder."""
    write_kuairand(tmp_path / "kr")
    write_aliccp(tmp_path / "ali")
    assert main(["data", "kuairand", "--raw-dir", str(tmp_path / "kr"), "--out", str(tmp_path / "kr_out"),
                 "--num-domains", "3", "--valid-days", "2", "--test-days", "2", "--min-count", "2",
                 "--max-malformed", "0.5"]) == 0
    assert main(["data", "aliccp", "--raw-dir", str(tmp_path / "ali"), "--out", str(tmp_path / "ali_out"),
                 "--min-count", "1", "--max-malformed", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "Table 1 statistics of kuairand1k" in out and "Table 1 statistics of aliccp" in out
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    shutil.copy(packaged_config_dir() / "model_config.yaml", cfg / "model_config.yaml")
    blocks = {}
    for sub in ("kr_out", "ali_out"):
        blocks.update(yaml.safe_load((tmp_path / sub / "dataset_config.yaml").read_text()))
    (cfg / "dataset_config.yaml").write_text(yaml.safe_dump(blocks))
    for dataset, priors in (("kuairand1k", "[user_id, video_id, tab]"), ("aliccp", "[user_id, item_id, domain]")):
        code = main(["run-expid", "--config", str(cfg), "--expid", "Crocodile_test", "--set", f"dataset_id={dataset}",
                     "--set", f"prior_fields={priors}", "--set", "verbose=0", "--epochs", "1",
                     "--batch-size", "8", "--model-root", str(tmp_path / "ckpt"),
                     "--data-root", str(tmp_path / "data")])
        assert code == 0
        text = capsys.readouterr().out
        assert f"on {dataset}" in text and "Overall" in text
        assert (tmp_path / "data" / dataset / "feature_map.json").exists()


def test_real_data_suites_plan_every_method_on_their_dataset():
    from mdl_bench.benchmark.suite import load_suite

    for name, dataset in (("main_kuairand", "kuairand1k"), ("main_aliccp", "aliccp")):
        plan = load_suite(name).plan()  # strict: models, keys, domains checked without the data
        assert {v.dataset_id for v in plan.variants} == {dataset} and len(plan.variants) == 13
        assert {v.group for v in plan.variants} == {"Single Domain", "MTL (SE)", "MTL (ME)", "MDL", "Crocodile"}
        assert len(plan.runs) == 13 * 6
        assert {v.label for v in plan.variants} >= {"Crocodile (tuned)", "Crocodile (paper)"}
        fields = {v.model: v.params.get("prior_fields") or v.params.get("ppnet_prior_fields") for v in plan.variants}
        assert fields["Crocodile"][:2] == fields["PEPNet"][:2] == (
            ["user_id", "video_id"] if dataset == "kuairand1k" else ["user_id", "item_id"])
