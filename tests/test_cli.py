"""The ``mdl-bench`` command as a user runs it: the end-to-end run, and one-line errors for bad input."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from mdl_bench.benchmark.cli import main
from mdl_bench.benchmark.config import ConfigSet
from mdl_bench.kernel.paths import packaged_config_dir


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, pattern):
    import re
    assert code == 2
    lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]


def test_models_lists_crocodile(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "Crocodile" in out


def test_run_expid_end_to_end_prints_domain_table_and_writes_nothing_here(tiny, capsys, tmp_path, monkeypatch,
                                                                          bench_home):
    monkeypatch.chdir(tmp_path)
    # 5 epochs of the tiny data (the expid's cap is 3): the tuned recipe's batch norm needs a few more steps there;
    # no early stop: on the tiny validation split a noisy first epoch can stop a seed's run before it learns
    code, out, _ = run_cli(capsys, "run-expid", "--expid", "Crocodile_test", "--epochs", "5", "--set", "verbose=0",
                           "--set", "early_stop_patience=100")
    assert code == 0
    table = out[out.index("Test results"):]
    for token in ("S0", "S1", "S2", "S4", "S6", "Overall", "AUC", "gAUC", "logloss", "oracle AUC", "oracle gAUC"):
        assert token in table
    assert os.listdir(tmp_path) == []  # nothing written into the current directory
    # named by the resolved config and seed, as suite runs are
    assert list((bench_home / "checkpoints" / "tiny_synth").glob("Crocodile_test__s2024__*.result.json"))
    # a short training run beats the constant predictor (the train click rate) on the test split
    import polars as pl
    train_ctr = pl.read_parquet(tiny.paths["train"])["click"].mean()
    y = pl.read_parquet(tiny.paths["test"])["click"].to_numpy()
    constant = -np.mean(y * np.log(train_ctr) + (1 - y) * np.log(1 - train_ctr))
    overall = [l for l in table.splitlines() if l.startswith("Overall")][0].split()
    auc, logloss = float(overall[2]), float(overall[5])
    assert logloss < constant and auc > 0.6


def user_config(tmp_path, edit_models=None, edit_datasets=None):
    folder = tmp_path / "cfg"
    shutil.copytree(packaged_config_dir(), folder, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    for name, edit in (("model_config.yaml", edit_models), ("dataset_config.yaml", edit_datasets)):
        if edit:
            data = yaml.safe_load((folder / name).read_text())
            edit(data)
            (folder / name).write_text(yaml.safe_dump(data))
    return str(folder)


def test_unknown_expid(capsys):
    code, _, err = run_cli(capsys, "run-expid", "--expid", "Crocodile_tset")
    assert_one_line_error(code, err, r"unknown expid 'Crocodile_tset' \(did you mean Crocodile_test")


def test_unknown_model(capsys, tmp_path):
    cfg = user_config(tmp_path, edit_models=lambda d: d["Crocodile_test"].update(model="Crocodyle"))
    code, _, err = run_cli(capsys, "run-expid", "--config", cfg, "--expid", "Crocodile_test")
    assert_one_line_error(code, err, r"unknown model 'Crocodyle' \(did you mean Crocodile\?\)")


def test_config_key_the_model_does_not_take(capsys):
    code, _, err = run_cli(capsys, "run-expid", "--expid", "Crocodile_test", "--set", "expert_hiden_units=[8]")
    assert_one_line_error(code, err, r"config key 'expert_hiden_units' .* not a parameter of model Crocodile "
                                     r"\(did you mean expert_hidden_units")


def test_dataset_without_domain_field(capsys, tmp_path):
    cfg = user_config(tmp_path, edit_datasets=lambda d: d["tiny_synth"].pop("domain_field"))
    code, _, err = run_cli(capsys, "run-expid", "--config", cfg, "--expid", "Crocodile_test")
    assert_one_line_error(code, err, r"dataset 'tiny_synth' has no `domain_field`")


def test_domain_value_not_listed(tiny, capsys, tmp_path):
    code, _, err = run_cli(capsys, "run-expid", "--expid", "Crocodile_test", "--set", "domains=[0, 1, 2, 4]",
                           "--set", f"data_root={tmp_path}")
    assert_one_line_error(code, err, r"domain=6, which `domains` \(0, 1, 2, 4\) does not list")
    assert not (tmp_path / "tiny_synth").exists()


def write_raw_dataset(tmp_path, label_of_row_3="1"):
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = "user_id,item_id,domain,click\n" + "".join(
        f"{i % 7},{i % 11},{i % 2},{label_of_row_3 if i == 3 else i % 2}\n" for i in range(40))
    for split in ("train", "valid", "test"):
        (raw / f"{split}.csv").write_text(rows)

    def edit(d):
        d["toy"] = dict(data_root=str(tmp_path / "data"), data_format="csv", train_data=str(raw / "train.csv"),
                        valid_data=str(raw / "valid.csv"), test_data=str(raw / "test.csv"), domain_field="domain",
                        domains=[0, 1], label_col={"name": "click", "dtype": "float"}, group_id="group_id",
                        roles={"user": "user_id", "item": "item_id"},
                        feature_cols=[{"name": ["user_id", "item_id", "domain"], "dtype": "int",
                                       "type": "categorical"},
                                      {"name": "group_id", "dtype": "int", "type": "meta",
                                       "preprocess": "copy_from(user_id)"}])
    return edit


def test_missing_data_file(capsys, tmp_path):
    edit = write_raw_dataset(tmp_path)
    os.remove(tmp_path / "raw" / "valid.csv")
    cfg = user_config(tmp_path, edit_datasets=edit)
    code, _, err = run_cli(capsys, "run-expid", "--config", cfg, "--expid", "Crocodile_test",
                           "--set", "dataset_id=toy", "--set", "prior_fields=[user_id, item_id, domain]")
    assert_one_line_error(code, err, r"valid_data file .*valid.csv not found")


@pytest.mark.parametrize("label", ["nan", "3"])
def test_nan_or_non_binary_label(capsys, tmp_path, label):
    cfg = user_config(tmp_path, edit_datasets=write_raw_dataset(tmp_path, label))
    code, _, err = run_cli(capsys, "run-expid", "--config", cfg, "--expid", "Crocodile_test", "--set",
                           "dataset_id=toy")
    assert_one_line_error(code, err, r"1 rows have a label 'click' that is missing, NaN or not 0/1 \(lines 5\)")
    assert not (tmp_path / "data" / "toy").exists()


def test_config_loader_agrees_with_fuxictr(bench_home):
    """The same merge as FuxiCTR's loader; then the roles are resolved (FuxiCTR has none)."""
    from fuxictr.utils import load_config
    from mdl_bench.benchmark.data.roles import dataset_defaults, resolve_fields

    config = ConfigSet()
    for expid in ("Crocodile_default", "Crocodile_test", "Crocodile_ablation_ME_pg_B"):
        ours = config.load(expid)
        theirs = load_config(str(packaged_config_dir()), expid)
        assert theirs["prior_fields"] == ["user", "item", "domain"] and ours["prior_fields"] != theirs["prior_fields"]
        theirs = resolve_fields(dataset_defaults(theirs), expid)
        assert set(theirs) == set(ours)
        for key, value in theirs.items():
            if isinstance(value, str) and "${MDL_BENCH_HOME}" in value:
                value = value.replace("${MDL_BENCH_HOME}", str(bench_home))
            assert ours[key] == value, key


def test_console_script_is_installed(tmp_path):
    env = dict(os.environ, MDL_BENCH_HOME=str(tmp_path))
    exe = shutil.which("mdl-bench") or os.path.join(os.path.dirname(sys.executable), "mdl-bench")
    ok = subprocess.run([exe, "models"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert ok.returncode == 0 and "Crocodile" in ok.stdout
    bad = subprocess.run([exe, "run-expid", "--expid", "nope"], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: unknown expid 'nope'")
    assert len(bad.stderr.strip().splitlines()) == 1
