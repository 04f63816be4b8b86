"""Building a dataset: same ids as FuxiCTR's own transform, reuse and rebuild, and clear errors on bad raw data."""
import json
import os
import pickle

import numpy as np
import polars as pl
import pytest
import yaml

from mdl_bench.benchmark.data.build import ensure_dataset, dataset_dir
from mdl_bench.kernel.errors import UserError

HEADER = "user_id,item_id,domain,price,click\n"


def write_csv(path, rows):
    path.write_text(HEADER + "".join(rows))
    return str(path)


def good_rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return [f"u{rng.integers(0, 20)},{rng.integers(0, 30)},{rng.choice([1, 2, 3])},{rng.random():.3f},"
            f"{rng.integers(0, 2)}\n" for _ in range(n)]


def params_for(tmp_path, **over):
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    for split, n in (("train", 300), ("valid", 60), ("test", 60)):
        if not (raw / f"{split}.csv").exists():
            write_csv(raw / f"{split}.csv", good_rows(n, seed=len(split)))
    params = dict(
        dataset_id="toy", data_root=str(tmp_path / "data"), data_format="csv",
        train_data=str(raw / "train.csv"), valid_data=str(raw / "valid.csv"), test_data=str(raw / "test.csv"),
        domain_field="domain", domains=[1, 2, 3], group_id="group_id", min_categr_count=2,
        feature_cols=[{"name": "user_id", "dtype": "str", "type": "categorical"},
                      {"name": ["item_id", "domain"], "dtype": "int", "type": "categorical"},
                      {"name": "price", "dtype": "float", "type": "numeric", "normalizer": "StandardScaler"},
                      {"name": "group_id", "dtype": "str", "type": "meta", "preprocess": "copy_from(user_id)"}],
        label_col={"name": "click", "dtype": "float"})
    params.update(over)
    return params


def test_ids_equal_fuxictr_transform(tmp_path):
    params = params_for(tmp_path)
    paths = ensure_dataset(params, log=lambda m: None)
    root = dataset_dir(params)
    assert (root / "feature_map.json").exists() and (root / "feature_vocab.json").exists()
    with open(root / "feature_processor.pkl", "rb") as fh:
        processor = pickle.load(fh)
    for split in ("train", "test"):
        raw = pl.read_csv(params[f"{split}_data"], schema_overrides={"user_id": pl.Utf8})
        raw = processor.preprocess(raw.lazy()).collect()
        expected = processor.transform({c: raw[c].to_numpy() for c in raw.columns})
        built = pl.read_parquet(paths[split])
        for name in ("user_id", "item_id", "domain", "group_id"):
            np.testing.assert_array_equal(built[name].to_numpy(), np.asarray(expected[name]), err_msg=name)
        np.testing.assert_allclose(built["price"].to_numpy(), expected["price"])


def test_reuse_then_rebuild_when_config_changes(tmp_path):
    params = params_for(tmp_path)
    messages = []
    ensure_dataset(params, log=messages.append)
    stamp = os.stat(dataset_dir(params) / "train.parquet").st_mtime_ns
    ensure_dataset(params, log=messages.append)
    assert os.stat(dataset_dir(params) / "train.parquet").st_mtime_ns == stamp  # reused
    ensure_dataset(params_for(tmp_path, min_categr_count=1), log=messages.append)
    assert any("rebuilding" in m for m in messages)


def expect_error(tmp_path, pattern, **over):
    params = params_for(tmp_path, **over)
    with pytest.raises(UserError, match=pattern) as info:
        ensure_dataset(params, log=lambda m: None)
    assert "\n" not in str(info.value)
    assert not dataset_dir(params).exists()  # nothing half-written
    leftovers = [p for p in os.listdir(params["data_root"]) if not p.startswith(".toy.lock")] \
        if os.path.isdir(params["data_root"]) else []
    assert leftovers == []


def test_missing_file(tmp_path):
    expect_error(tmp_path, r"valid_data file .*nope.csv not found", valid_data=str(tmp_path / "nope.csv"))


def test_missing_column(tmp_path):
    cols = params_for(tmp_path)["feature_cols"] + [{"name": "age", "dtype": "int", "type": "categorical"}]
    expect_error(tmp_path, r"has no column 'age'", feature_cols=cols)


@pytest.mark.parametrize("label", ["nan", "2", ""])
def test_bad_label(tmp_path, label):
    (tmp_path / "raw").mkdir()
    write_csv(tmp_path / "raw" / "train.csv", good_rows(10) + [f"u1,3,1,0.5,{label}\n"] + good_rows(5))
    expect_error(tmp_path, r"1 rows have a label 'click' that is missing, NaN or not 0/1 \(lines 12\)")


def test_unknown_domain_value(tmp_path):
    (tmp_path / "raw").mkdir()
    write_csv(tmp_path / "raw" / "test.csv", good_rows(10) + ["u1,3,7,0.5,1\n"])
    expect_error(tmp_path, r"domain=7, which `domains` \(1, 2, 3\) does not list .*add the value to `domains`")


def test_config_without_domain_field(tmp_path):
    expect_error(tmp_path, r"has no `domain_field`; add", domain_field=None)


@pytest.mark.parametrize("block", [0, 4])
def test_unparsable_value_names_column_value_line_and_dtype(tmp_path, block):
    (tmp_path / "raw").mkdir()
    write_csv(tmp_path / "raw" / "train.csv", good_rows(10) + ["u1,abc,1,0.5,1\n"])
    expect_error(tmp_path, r"train_data file .*train.csv line 12: column 'item_id' is declared dtype: int but holds "
                           r"'abc'; declare `dtype: str` for 'item_id' in feature_cols", data_block_size=block)


def test_numeric_column_with_a_word_for_missing(tmp_path):
    (tmp_path / "raw").mkdir()
    write_csv(tmp_path / "raw" / "valid.csv", good_rows(5) + ["u1,3,1,NA,1\n", "u2,3,1,NA,0\n"])
    expect_error(tmp_path, r"valid_data file .*valid.csv line 7: column 'price' is declared dtype: float but holds "
                           r"'NA'; 2 rows do not parse; a numeric column needs numbers: write a missing value as an "
                           r"empty cell")


@pytest.mark.parametrize("content, pattern", [
    (b"\x1f\x8b\x08\x00rest",
     r"is not a CSV file: it is gzip-compressed; unpack it with gunzip, or point test_data at a CSV file"),
    (b"PAR1\x00\x00", r"is not a CSV file: it is a Parquet file"),
    (b"", r"is empty or starts with a blank line; expected a CSV header line"),
    (HEADER.encode() + b"u1,3,1,0.5,1,extra,fields\n", r"is not a well-formed CSV file"),
    (HEADER.replace(",", ";").encode() + b"u1;3;1;0.5;1\n", r"looks ';'-separated .*convert the file to commas"),
    (HEADER.encode() + "Zürich,3,1,0.5,1\n".encode("latin-1"), r"is not UTF-8 text .*convert it to UTF-8"),
])
def test_not_a_csv_only_when_it_is_not_one(tmp_path, content, pattern):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "test.csv").write_bytes(content)
    expect_error(tmp_path, r"test_data file .*test.csv " + pattern if b"," in content or b";" in content else pattern)


def zip_rows(n, numeric_until, seed=0):
    """Rows whose zip code is numeric for the first ``numeric_until`` rows and a Canadian postal code after."""
    rng = np.random.default_rng(seed)
    return [f"u{rng.integers(0, 20)},{rng.integers(0, 30)},{rng.choice([1, 2, 3])},{rng.random():.3f},"
            f"{rng.integers(0, 2)},{rng.integers(10000, 10010) if i < numeric_until else 'M4J2K'}\n"
            for i in range(n)]


@pytest.mark.parametrize("block", [0, 400])
def test_str_column_numeric_for_its_first_thousand_rows_builds_and_trains(tmp_path, block):
    """A ``dtype: str`` column is read as text everywhere (header check, reads, streamed vocabulary counting):
    no step infers a type from its first rows."""
    from mdl_bench.benchmark.runner import run_expid

    raw = tmp_path / "raw"
    raw.mkdir()
    for split, n, until in (("train", 1500, 1200), ("valid", 200, 150), ("test", 200, 150)):
        (raw / f"{split}.csv").write_text(HEADER.strip() + ",zip_code\n" + "".join(zip_rows(n, until, len(split))))
    params = params_for(tmp_path, data_block_size=block)
    cols = params["feature_cols"] + [{"name": "zip_code", "dtype": "str", "type": "categorical"}]
    (tmp_path / "dataset_config.yaml").write_text(yaml.safe_dump({"zips": dict(params, feature_cols=cols,
                                                                               dataset_id="zips")}))
    (tmp_path / "model_config.yaml").write_text(yaml.safe_dump({"zips_test": dict(
        model="SharedBottom", dataset_id="zips", model_root=str(tmp_path / "models"), epochs=1, batch_size=256,
        learning_rate=1.0e-2, embedding_dim=4, bottom_hidden_units=[8], tower_hidden_units=[4], verbose=0)}))
    result = run_expid("zips_test", tmp_path, quiet=True)
    vocab = json.loads((dataset_dir(dict(params, dataset_id="zips")) / "feature_vocab.json").read_text())
    assert "M4J2K" in vocab["zip_code"] and "10003" in vocab["zip_code"]
    assert 0.0 <= result.test["AUC"] <= 1.0


def test_nan_feature_becomes_missing(tmp_path):
    (tmp_path / "raw").mkdir()
    write_csv(tmp_path / "raw" / "train.csv", good_rows(50) + ["u1,3,1,nan,1\n", "u1,3,1,,0\n"])
    params = params_for(tmp_path)
    paths = ensure_dataset(params, log=lambda m: None)
    price = pl.read_parquet(paths["train"])["price"].to_numpy()
    assert np.isfinite(price).all()
    assert price[-1] == price[-2]  # NaN and empty are the same missing value


def test_parts_build_gives_the_same_rows_as_one_file(tmp_path):
    """``data_block_size``: vocabularies counted by the streaming engine, rows encoded block by block."""
    whole = ensure_dataset(params_for(tmp_path), log=lambda m: None)
    parted_params = params_for(tmp_path, dataset_id="toy_parts", data_block_size=70)
    parted = ensure_dataset(parted_params, log=lambda m: None)
    assert (dataset_dir(parted_params) / "feature_vocab.json").read_text() == \
        (dataset_dir(params_for(tmp_path)) / "feature_vocab.json").read_text()
    for split, rows in (("train", 300), ("valid", 60), ("test", 60)):
        parts = sorted(os.listdir(parted[split]))
        assert parts == [f"part-{i:06d}.parquet" for i in range(-(-rows // 70))]
        sizes = [pl.read_parquet(os.path.join(parted[split], p)).height for p in parts]
        assert sizes[:-1] == [70] * (len(sizes) - 1) and sum(sizes) == rows
        one = pl.read_parquet(whole[split])
        many = pl.read_parquet([os.path.join(parted[split], p) for p in parts])
        for name in ("user_id", "item_id", "domain", "group_id", "click"):
            np.testing.assert_array_equal(many[name].to_numpy(), one[name].to_numpy(), err_msg=name)
        np.testing.assert_allclose(many["price"].to_numpy(), one["price"].to_numpy(), rtol=1e-12)


def test_parts_build_reports_the_line_of_a_bad_value_in_a_later_block(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = good_rows(300)
    rows[203] = "u1,3,2,0.5,7\n"  # line 205 of the file (after the header)
    write_csv(raw / "train.csv", rows)
    with pytest.raises(UserError, match=r"1 rows have a label 'click'.*lines 205\)"):
        ensure_dataset(params_for(tmp_path, data_block_size=50), log=lambda m: None)


@pytest.mark.parametrize("value", [-1, 2.5, "many"])
def test_bad_data_block_size(tmp_path, value):
    with pytest.raises(UserError, match="data_block_size must be 0"):
        ensure_dataset(params_for(tmp_path, data_block_size=value), log=lambda m: None)


@pytest.mark.parametrize("block", [0, 3])
def test_public_csv_layouts_build_as_declared(tmp_path, block):
    """MovieLens/Avazu-like text: ZIP+4 and hex ids, a multi-valued ``sequence``, a quoted field with a comma,
    words for missing in a ``str`` column, an empty numeric cell, CRLF line ends and a BOM."""
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = ['u1,10001,Action|Comedy,"American President, The",1,0.5,1', "u2,98107-2117,Drama,Heat,1,,0",
            "u3,1fbe01fe,,Heat,2,0.25,1", "u1,NA,Action,unknown,2,0.75,0", "u2,10001,Comedy|Drama,Heat,1,0.1,1"]
    text = "\ufeffuser_id,zip,genres,title,domain,price,click\r\n" + "\r\n".join(rows) + "\r\n"
    for split in ("train", "valid", "test"):
        (raw / f"{split}.csv").write_text(text, encoding="utf-8", newline="")
    params = params_for(tmp_path, domains=[1, 2], group_id=None, min_categr_count=1, data_block_size=block,
                        feature_cols=[{"name": ["user_id", "zip", "title", "domain"], "dtype": "str",
                                       "type": "categorical"},
                                      {"name": "genres", "dtype": "str", "type": "sequence", "splitter": "|",
                                       "max_len": 2},
                                      {"name": "price", "dtype": "float", "type": "numeric"}])
    ensure_dataset(params, log=lambda m: None)
    vocab = json.loads((dataset_dir(params) / "feature_vocab.json").read_text())
    assert {"10001", "98107-2117", "1fbe01fe", "NA"} <= set(vocab["zip"])
    assert {"American President, The", "unknown"} <= set(vocab["title"])
    assert {"Action", "Comedy", "Drama"} <= set(vocab["genres"]) and "Action|Comedy" not in vocab["genres"]
