"""Inputs that used to pass silently: each ends as a one-line error naming the problem and the fix, or as a
correct result said in one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mdl_bench.benchmark.config import ConfigSet
from mdl_bench.benchmark.data import synth
from mdl_bench.benchmark.data.build import ensure_dataset, read_build_info
from mdl_bench.benchmark.suite import Suite
from mdl_bench.kernel.errors import UserError


@pytest.fixture
def tiny_home(tmp_path, monkeypatch):
    """``tiny_synth`` generated and built in a private $MDL_BENCH_HOME: its resolved params and the log lines."""
    monkeypatch.setenv("MDL_BENCH_HOME", str(tmp_path))
    params = ConfigSet().load("MMoE_test", {"verbose": 0})
    lines: list[str] = []
    ensure_dataset(params, log=lines.append)
    return params, lines


def test_a_generated_raw_file_cut_short_is_generated_again(tiny_home):
    params, lines = tiny_home
    train = Path(params["train_data"])
    whole = train.read_bytes()
    train.write_bytes(whole[: len(whole) // 2])  # a copy cut short, an edit, a full disk
    lines.clear()
    ensure_dataset(params, log=lines.append)
    assert train.read_bytes() == whole  # seeded: the same rows again, not training on what was left
    assert any(line.startswith(f"raw file {train} has {len(whole) // 2:,} bytes, its generator wrote {len(whole):,}; "
                               f"generating the synthetic data again") for line in lines), lines
    assert sum(read_build_info(params)["rows"]["train"].values()) == 6000


def test_raw_files_of_an_older_generator_are_checked_by_rows(tiny_home):
    params, lines = tiny_home
    raw = Path(params["train_data"]).parent
    meta = json.loads((raw / "synth_meta.json").read_text())
    del meta["bytes"]  # written before byte counts were recorded
    (raw / "synth_meta.json").write_text(json.dumps(meta))
    assert synth.raw_problem(meta, raw) is None
    text = (raw / "valid.csv").read_text().splitlines()
    (raw / "valid.csv").write_text("\n".join(text[:-10]) + "\n")
    assert synth.raw_problem(meta, raw) == f"raw file {raw / 'valid.csv'} has 1,990 rows, its generator wrote 2,000"


def test_a_deleted_built_file_is_named_and_rebuilt(tiny_home):
    params, lines = tiny_home
    built = Path(params["data_root"]) / params["dataset_id"] / "valid.parquet"
    built.unlink()
    lines.clear()
    ensure_dataset(params, log=lines.append)
    assert built.exists()
    assert lines[0] == f"Dataset tiny_synth: built file {built} is missing; rebuilding the dataset"
    assert not any("changed" in line for line in lines)


def test_a_header_that_names_a_column_twice_is_an_error(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "valid", "test"):
        (raw / f"{split}.csv").write_text("user_id,domain,item_id,user_id,click\nu1,1,i1,u9,1\nu2,2,i2,u8,0\n")
    params = {"dataset_id": "twice", "data_root": str(tmp_path / "data"), "data_format": "csv",
              "domain_field": "domain", "domains": [1, 2], "label_col": {"name": "click", "dtype": "float"},
              "feature_cols": [{"name": ["user_id", "item_id", "domain"], "dtype": "str", "type": "categorical"}],
              **{f"{s}_data": str(raw / f"{s}.csv") for s in ("train", "valid", "test")}}
    with pytest.raises(UserError) as info:
        ensure_dataset(params, log=lambda m: None)
    assert str(info.value) == (f"train_data file {raw / 'train.csv'}: the header names column 'user_id' twice "
                               f"(fields 1 and 4), so which one is meant is ambiguous; rename or drop one of them")
    assert not (tmp_path / "data" / "twice").exists()


def test_a_suite_that_lists_one_row_twice_is_an_error():
    suite = Suite({"name": "twice", "expids": ["MMoE_test", "SharedBottom_test",
                                               {"expid": "MMoE_test", "label": "MMoE again"}]})
    with pytest.raises(UserError) as info:
        suite.plan()
    assert str(info.value) == ("suite 'twice': rows 'MMoE' (MMoE_test) and 'MMoE again' (MMoE_test) resolve to one "
                               "config on dataset 'tiny_synth' (the same runs, shown twice); drop one, or make them "
                               "differ (`overrides`, `tuner_space`)")
    distinct = Suite({"name": "two", "expids": ["MMoE_test", {"expid": "MMoE_test", "label": "MMoE lr 1e-3",
                                                               "overrides": {"learning_rate": 1.0e-3}}]})
    assert len(distinct.plan().variants) == 2


def test_a_tuning_budget_that_leaves_no_search_trial_is_an_error():
    tight = Suite({"name": "tune", "tuner": {"budget": 4, "converged_epochs": 5, "first_rung": 2},
                   "tuner_space": {"learning_rate": {"low": 1.0e-4, "high": 1.0e-2, "log": True}},
                   "expids": [{"expid": "MMoE_test", "tuner_space": {"num_experts": [None, 2]}}]})
    with pytest.raises(UserError, match=r"^suite 'tune', expid MMoE_test: the tuner's budget of 4 epochs leaves no "
                                        r"room for a search trial after stage 2's reserve \(10 epochs for 2 trials\); "
                                        r"raise `budget` or drop own values$"):
        tight.plan()
    nothing_to_search = Suite({"name": "tune", "tuner": {"budget": 10}, "expids": ["MMoE_test"]}).plan()
    assert len(nothing_to_search.variants) == 1 and nothing_to_search.variants[0].trial.spec.stage == "sweep"


def test_a_generator_option_without_effect_is_an_error():
    with pytest.raises(UserError, match=r"^synthetic spec: `n_small_domains` \(5\) has no effect without `small_rho`; "
                                        r"set small_rho .* or drop n_small_domains$"):
        synth.make_spec("conflict_like", n_small_domains=5)
    with pytest.raises(UserError, match=r"`n_small_domains` must be between 1 and 4"):
        synth.make_spec("conflict_like", n_small_domains=5, small_rho=0.5)
    assert synth.make_spec("conflict_like", n_small_domains=3, small_rho=0.5).n_small_domains == 3
    # the shipped datasets' generator options all take effect
    for dataset, block in yaml.safe_load(Path(ConfigSet().dataset_files["tiny_synth"]).read_text()).items():
        if isinstance(block, dict) and block.get("synth"):
            options = dict(block["synth"])
            synth.make_spec(options.pop("preset"), **options)
