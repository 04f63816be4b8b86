"""The rehearsal writer (``mdl-bench data rehearse``): its files have the published layouts the converters read,
the sizes it promises, and the converters accept them."""
from __future__ import annotations

import polars as pl
import pytest

from mdl_bench.benchmark.cli import main
from mdl_bench.benchmark.data import aliccp, kuairand, realdata, rehearse
from mdl_bench.kernel.errors import UserError

from test_realdata import quiet, reference_fields


@pytest.fixture(scope="module")
def kuairand_raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("kr")
    stats = rehearse.write_kuairand(out, fraction=0.0005, block_rows=2_000, log=lambda _: None)
    return out, stats


@pytest.fixture(scope="module")
def aliccp_raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("ali")
    stats = rehearse.write_aliccp(out, fraction=0.0001, block_rows=2_000, log=lambda _: None)
    return out, stats


def header(path) -> list[str]:
    return path.open().readline().rstrip("\n").split(",")


def test_kuairand_files_have_the_published_names_and_headers(kuairand_raw):
    out, stats = kuairand_raw
    release = kuairand.RELEASES["1k"]
    for name in release.logs:
        assert header(out / name) == kuairand.LOG_COLUMNS
    assert header(out / release.user) == ["user_id"] + kuairand.USER_FEATURES
    assert header(out / release.basic[0]) == ["video_id"] + kuairand.BASIC_FEATURES
    assert header(out / release.stats[0]) == ["video_id"] + kuairand.STAT_FEATURES
    logs = pl.concat([pl.read_csv(out / n) for n in release.logs])
    assert logs.height == stats["counts"]["log rows"] == round(sum(rehearse.KR_TABS.values()) * 0.0005 * 1.005)
    assert logs["date"].min() == 20220408 and logs["date"].max() == 20220508
    assert set(rehearse.KR_TABS) <= set(logs["tab"].unique().to_list())
    assert logs["user_id"].max() < rehearse.KR_USERS
    videos = stats["counts"]["videos"]
    assert logs["video_id"].max() < videos
    assert pl.read_csv(out / release.basic[0], infer_schema_length=0).height == videos
    stat = pl.read_csv(out / release.stats[0], infer_schema_length=0)
    assert stat.height == videos and (stat["show_cnt"] == "NaN").any()  # KuaiRand's spelling of missing
    users = pl.read_csv(out / release.user, infer_schema_length=0)
    assert users.height == 1000 and (users["onehot_feat3"] == "-124").any()
    assert users["follow_user_num_range"].str.contains(",").any()  # "(0,10]": a quoted field


def test_kuairand_converter_accepts_them(kuairand_raw, tmp_path):
    raw, written = kuairand_raw
    lines, log = quiet()
    stats = kuairand.convert(raw, tmp_path / "out", log=log, min_count=2, max_malformed=0.0)
    assert stats["domains"] == [0, 1, 2, 4, 6]
    assert stats["samples"] == sum(stats["tab_rows"][str(t)] for t in (0, 1, 2, 4, 6))
    assert "malformed" not in "\n".join(lines)
    train = pl.read_csv(tmp_path / "out" / "train.csv", infer_schema_length=0)
    assert train.columns == kuairand.output_columns()
    assert train["show_cnt"].null_count() < train.height  # the statistics joined


def test_aliccp_lines_have_the_published_layout(aliccp_raw):
    out, stats = aliccp_raw
    for split, (skeleton_name, common_name) in aliccp.FILES.items():
        skeleton = (out / skeleton_name).read_bytes().decode().splitlines()
        common = (out / common_name).read_bytes().decode().splitlines()
        assert len(skeleton) == stats["counts"][f"{split} skeleton lines"]
        assert len(common) == stats["counts"][f"{split} common lines"]
        sid, click, buy, cidx, num, flist = skeleton[0].split(",")
        assert click in "01" and buy in "01" and len(cidx) == 16 and int(num) == len(flist.split("\x01"))
        assert set(reference_fields(flist)) == set(rehearse.ALI_SKELETON_FIELDS) | {"301"}
        cidx_c, num_c, flist_c = common[0].split(",")
        assert int(num_c) == len(flist_c.split("\x01")) > 100  # hundreds of items per common line
        assert set(reference_fields(flist_c)) == set(rehearse.ALI_COMMON_FIELDS)
        assert {ln.split(",")[3] for ln in skeleton} <= {ln.split(",", 1)[0] for ln in common}


def test_aliccp_converter_accepts_them(aliccp_raw, tmp_path):
    raw, written = aliccp_raw
    lines, log = quiet()
    stats = aliccp.convert(raw, tmp_path / "out", log=log, max_malformed=0.0)
    assert stats["domain_mapping"] == {str(d): k + 1 for k, d in enumerate(rehearse.ALI_DOMAINS)}
    assert stats["samples"] == written["counts"]["train skeleton lines"] + written["counts"]["test skeleton lines"]
    test = pl.read_csv(tmp_path / "out" / "test.csv")
    assert test.columns == aliccp.output_columns() and test["f150_14"].null_count() == 0


def test_cli_writes_a_fraction_and_refuses_a_bad_one(tmp_path, capsys):
    assert main(["data", "rehearse", "kuairand", "--out", str(tmp_path / "kr"), "--fraction", "0.0002"]) == 0
    assert "Wrote KuaiRand-1K at fraction 0.0002" in capsys.readouterr().out
    with pytest.raises(UserError, match="--fraction"):
        rehearse.write_aliccp(tmp_path / "ali", fraction=1.5)
    assert set(realdata.SPLITS) == {"train", "valid", "test"}
