"""Inputs that cannot lie. Every bad input ends in one ``error:`` line (exit 2), is refused before anything
runs, and writes or loses nothing; a run's files are its own; leftovers of killed processes are cleaned up."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mdl_bench.benchmark import schema
from mdl_bench.benchmark.cli import main
from mdl_bench.benchmark.config import ConfigSet
from mdl_bench.kernel.errors import UserError, show_value
from mdl_bench.kernel.paths import packaged_config_dir
from mdl_bench.model_zoo import get_model


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code, err, pattern) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]
    assert lines[0].isprintable() and len(lines[0]) < 600, lines[0]
    return lines[0]


def tree(folder: Path) -> dict:
    """Every file under ``folder`` with its size and modification time: equal before and after = nothing written."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh, empty $MDL_BENCH_HOME for one test."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("MDL_BENCH_HOME", str(folder))
    return folder


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` made read-only for this process: a read-only bind mount as root (permission bits do not stop
    root), else mode 0555. Skips where neither is possible."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
    if mounted:
        mounted = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True).returncode == 0
        if not mounted:
            subprocess.run(["umount", str(folder)], capture_output=True)
    if not mounted:
        pytest.skip("root without mount rights: no way to make a read-only folder here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


# ================================================================== 1. one typed schema, checked before anything runs
@pytest.mark.parametrize("argv, pattern", [
    (["--set", "learning_rate=0"], r"'learning_rate' = 0 \(from --set\): expected a number > 0"),
    (["--set", "learning_rate=nan"], r"'learning_rate' = 'nan' \(from --set\): expected a number > 0"),
    (["--set", "batch_size=abc"], r"'batch_size' = 'abc' \(from --set\): expected an integer >= 1"),
    (["--batch-size", "0"], r"'batch_size' = 0 \(from --batch-size\): expected an integer >= 1"),
    (["--set", "epochs=abc"], r"'epochs' = 'abc' \(from --set\): expected an integer >= 1"),
    (["--epochs", "0"], r"'epochs' = 0 \(from --epochs\): expected an integer >= 1"),
    (["--epochs", "-1"], r"'epochs' = -1 \(from --epochs\): expected an integer >= 1"),
    (["--set", "epochs=true"], r"'epochs' = True .*expected an integer >= 1 \(a boolean is not a number here\)"),
    (["--set", "embedding_dim=-2"], r"'embedding_dim' = -2 \(from --set\): expected an integer >= 1"),
    (["--set", "embedding_dim=0"], r"'embedding_dim' = 0 \(from --set\): expected an integer >= 1"),
    (["--set", "expert_hidden_units=abc"], r"'expert_hidden_units' = 'abc' .*expected a list of integers >= 1"),
    (["--set", "expert_hidden_units=[16, 0]"], r"'expert_hidden_units' = \[16, 0\] .*integers >= 1 \(item 1\)"),
    (["--set", "tower_hidden_units=[8.5]"], r"'tower_hidden_units' = \[8.5\] .*expected a list of integers >= 1"),
    (["--set", "net_dropout=1.5"], r"'net_dropout' = 1.5 \(from --set\): expected a number in \[0, 1\)"),
    (["--set", "net_dropout=1"], r"'net_dropout' = 1 \(from --set\): expected a number in \[0, 1\)"),
    (["--set", "cov_alpha=abc"], r"'cov_alpha' = 'abc' \(from --set\): expected a number >= 0"),
    (["--set", "num_embeddings=0"], r"'num_embeddings' = 0 .*expected an integer >= 1 or null"),
    (["--set", "batch_norm=1"], r"'batch_norm' = 1 \(from --set\): expected true or false"),
    (["--set", "gating=3"], r"'gating' = 3 \(from --set\): expected text"),
    (["--set", "prior_fields=user_id"], r"'prior_fields' = 'user_id' .*expected a list of strings"),
    (["--set", "monitor_mode=maximum"], r"'monitor_mode' = 'maximum' .*expected one of min, max"),
    (["--set", "seed=-1"], r"'seed' = -1 .*expected an integer in \[0, 4294967295\] or null"),
    (["--gpu", "-2"], r"'gpu' = -2 \(from --gpu\): expected an integer >= -1"),
    (["--set", "embedding_regularizer=l3(1)"], r"'embedding_regularizer' = 'l3\(1\)' .*l1\(x\), l2\(x\)"),
    (["--set", "aux_options=[1]"], r"'aux_options' = \[1\] .*expected a mapping or null"),
    (["--set", "shuffle_buffer=0"], r"'shuffle_buffer' = 0 .*expected an integer >= 1"),
])
def test_a_bad_value_is_one_line_naming_key_value_type_and_source_and_nothing_is_written(home, capsys, argv,
                                                                                        pattern):
    code, _, err = run_cli(capsys, "run-expid", "--expid", "Crocodile_test", *argv)
    one_error_line(code, err, r"config key " + pattern + r".*; fix the value")
    assert tree(home) == {}  # refused before the data, the log or a checkpoint


def user_config(tmp_path, edit_models=None, edit_datasets=None) -> Path:
    """The packaged configs copied and edited (test_cli's helper)."""
    from test_cli import user_config as copied

    return Path(copied(tmp_path, edit_models, edit_datasets))


def test_a_bad_value_in_a_config_file_names_that_file(home, tmp_path, capsys):
    cfg = user_config(tmp_path, edit_models=lambda d: d["Crocodile_test"].update(epochs="two"),
                      edit_datasets=lambda d: d["tiny_synth"].update(min_categr_count=-1))
    code, _, err = run_cli(capsys, "run-expid", "--config", cfg, "--expid", "Crocodile_test")
    one_error_line(code, err, rf"'epochs' = 'two' \(from {re.escape(str(cfg))}/model_config.yaml\)")
    code, _, err = run_cli(capsys, "run-expid", "--config", cfg, "--expid", "Crocodile_test", "--set", "epochs=1")
    one_error_line(code, err, rf"'min_categr_count' = -1 \(from {re.escape(str(cfg))}/dataset_config.yaml\): "
                              r"expected an integer >= 0")
    assert tree(home) == {}


def test_a_suite_checks_every_run_before_the_first_starts(home, tmp_path, capsys):
    suite = tmp_path / "bad.yaml"
    suite.write_text(yaml.safe_dump({"name": "bad", "seeds": [1], "store": "bad.sqlite", "overrides": {"epochs": 1},
                                     "expids": ["SharedBottom_test",  # valid: must not run before the bad row is seen
                                                {"expid": "MMoE_test", "overrides": {"epochs": "two"}}]}))
    code, _, err = run_cli(capsys, "run", "--suite", suite)
    one_error_line(code, err, r"suite 'bad' .*expid MMoE_test: config key 'epochs' = 'two' \(from the row's "
                              r"`overrides`\): expected an integer >= 1")
    suite.write_text(suite.read_text().replace("epochs: two", "epochs: 1"))
    code, _, err = run_cli(capsys, "run", "--suite", suite, "--set", "batch_size=abc")
    one_error_line(code, err, r"'batch_size' = 'abc' \(from --set\)")
    code, _, err = run_cli(capsys, "leaderboard", "--suite", suite, "--set", "learning_rate=-1")  # readers too
    one_error_line(code, err, r"'learning_rate' = -1 \(from --set\): expected a number > 0")
    assert tree(home) == {} and sorted(os.listdir(tmp_path)) == ["bad.yaml", "home"]  # no store, no run


def test_scientific_notation_is_a_float_everywhere(home):
    """YAML 1.1 reads ``1e-3`` as text: the schema makes it the float it means (files, --set, suites alike)."""
    config = ConfigSet()
    params = config.load("Crocodile_test", {"learning_rate": "1e-3", "cov_alpha": "2E-5", "embedding_dim": "8",
                                            "embedding_regularizer": "1e-6", "epochs": 2.0})
    out = schema.validate(params, get_model("Crocodile"))
    assert out["learning_rate"] == 0.001 and out["cov_alpha"] == 2e-5 and out["embedding_regularizer"] == 1e-6
    assert out["embedding_dim"] == 8 and isinstance(out["embedding_dim"], int)
    assert out["epochs"] == 2 and isinstance(out["epochs"], int)


def test_1e3_trains_and_each_run_has_its_own_files(tiny, home, capsys):
    """The issue's wrong results: a second run of one expid with other --set values trained nothing and reported
    the first one's metrics. Now each resolved config has its own checkpoint, log and result."""
    base = ["run-expid", "--expid", "SharedBottom_test", "--set", "verbose=0", "--epochs", "1"]
    code, out1, _ = run_cli(capsys, *base, "--set", "embedding_dim=8")
    assert code == 0
    # what a run of the second config killed mid-write would have left: removed when that run starts again
    from mdl_bench.benchmark.resolved import resolve_run

    second = resolve_run("SharedBottom_test", None, {"verbose": 0, "epochs": 1, "learning_rate": 0.001}, {}, name_by_config=True).model_id
    run_dir = home / "checkpoints" / "tiny_synth"
    leftovers = [run_dir / f"{second}.model.tmp-{dead_pid()}", run_dir / f".{second}.result.json.{dead_pid()}.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    code, out2, _ = run_cli(capsys, *base, "--set", "learning_rate=1e-3")
    assert code == 0 and not any(p.exists() for p in leftovers)
    assert "Removed leftovers of a killed run of " + second in (run_dir / f"{second}.log").read_text()
    results = sorted((home / "checkpoints" / "tiny_synth").glob("*.result.json"))
    assert len(results) == 2 and len(list((home / "checkpoints" / "tiny_synth").glob("*.model"))) == 2
    stored = [json.loads(p.read_text()) for p in results]
    assert sorted(r["params"]["learning_rate"] for r in stored) == [0.001, 0.01]
    assert stored[0]["test"]["AUC"] != stored[1]["test"]["AUC"]
    for result, path in zip(stored, results):
        assert path.name == result["params"]["model_id"] + ".result.json"
        assert re.fullmatch(r"SharedBottom_test__s2024__[0-9a-f]{8}", result["params"]["model_id"])
        assert Path(result["checkpoint"]).name == result["params"]["model_id"] + ".model"
    assert not list((home / "checkpoints" / "tiny_synth").glob(".*tmp"))  # the atomic write left no temporary


def test_a_config_file_value_in_scientific_notation_is_a_float(home, tmp_path):
    from mdl_bench.benchmark.runner import resolve

    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "model_config.yaml").write_text("My_test:\n  model: SharedBottom\n  dataset_id: tiny_synth\n"
                                           "  learning_rate: 1e-3\n  embedding_regularizer: 1e-6\n"
                                           "  batch_size: 1e3\n  epochs: 1\n")
    params, _, _ = resolve("My_test", cfg)
    assert (params["learning_rate"], params["embedding_regularizer"], params["batch_size"]) == (0.001, 1e-6, 1000)
    assert isinstance(params["batch_size"], int)


def test_valid_configs_resolve_exactly_as_before(home):
    """The schema keeps every valid value as given (an int where a float is declared stays an int), so config
    hashes of valid configs do not move: every packaged expid validates to itself."""
    config = ConfigSet()
    for expid in config.expids:
        params = config.load(expid)
        out = schema.validate(params, get_model(params["model"]))
        assert json.dumps(out, sort_keys=True, default=str) == json.dumps(params, sort_keys=True, default=str), expid


def test_quick_suite_hashes_are_unchanged_by_the_schema(home, monkeypatch):
    from mdl_bench.benchmark.suite import load_suite

    with_schema = [v.config_hash for v in load_suite("quick").plan().variants]
    monkeypatch.setattr(schema, "validate", lambda params, *a, **k: dict(params))
    assert [v.config_hash for v in load_suite("quick").plan().variants] == with_schema
    # and a stored suite run's file name is the name run-expid gives that config
    assert load_suite("quick").plan().runs[0].model_id.startswith("SingleDomain_default__s2024__")


def test_every_model_key_has_a_schema_entry():
    """Derived from the signatures: a key without an annotation is taken as it is, all others are typed."""
    from mdl_bench.model_zoo import registry

    for name, cls in registry().items():
        types = schema.key_types(cls)
        for key in ("learning_rate", "embedding_dim", "epochs", "batch_size", "gpu"):
            assert key in types, (name, key)
        widths = [k for k in types if k.endswith("hidden_units")]
        for key in widths:
            with pytest.raises(UserError, match=rf"'{key}' = \[0\]"):
                schema.check_value(key, [0], *types[key], None)


# ================================================================== 2. a run's checkpoint and result are its own
def test_a_second_process_of_the_same_run_is_refused_while_the_first_runs(tiny, home, capsys):
    from mdl_bench.benchmark.cli import run_origins, run_overrides
    from mdl_bench.benchmark.resolved import resolve_run
    from mdl_bench.benchmark.data.build import file_lock

    args = type("Args", (), {"set": ["learning_rate=0.02"], "gpu": None, "seed": None, "epochs": None,
                             "batch_size": None, "model_root": None, "data_root": None})()
    model_id = resolve_run("SharedBottom_test", None, run_overrides(args), run_origins(args), name_by_config=True).model_id
    other = resolve_run("SharedBottom_test", None, {"learning_rate": 0.05}, {}, name_by_config=True).model_id
    assert model_id != other  # another --set value: other files, so neither can see the other's
    run_dir = home / "checkpoints" / "tiny_synth"
    with file_lock(run_dir / f"{model_id}.log"):  # as a live run holds it
        before = tree(home)
        code, _, err = run_cli(capsys, "run-expid", "--expid", "SharedBottom_test", "--set", "learning_rate=0.02")
        one_error_line(code, err, rf"run {model_id} is already running in another process .*; wait for it")
        assert tree(home) == before


def test_a_fit_that_wrote_no_checkpoint_is_never_reported(tiny, home, capsys, monkeypatch):
    """FuxiCTR's fit ends by loading the checkpoint file: a run whose fit wrote none must not report whatever file
    was there (an older run's)."""
    from mdl_bench.model_zoo.base import MultiDomainModel

    monkeypatch.setattr(MultiDomainModel, "save_weights", lambda self, path: None)
    monkeypatch.setattr(MultiDomainModel, "load_weights", lambda self, path: None)
    code, _, err = run_cli(capsys, "run-expid", "--expid", "SharedBottom_test", "--set", "verbose=0", "--epochs", "1")
    one_error_line(code, err, r"trained but wrote no checkpoint")
    assert not list(home.rglob("*.result.json"))


# ================================================================== 3. every path written is checked up front
def _good_store(folder: Path) -> Path:
    """``folder/suite.yaml`` (suite ``ro``, one row) and its store ``folder/fake.sqlite`` holding one fake run."""
    from test_suite import filled_store

    data = {"name": "ro", "seeds": [1], "store": "fake.sqlite", "expids": ["SharedBottom_test"]}
    return filled_store(folder, data, lambda row, seed: {"AUC": 0.6, "gAUC": 0.55, "logloss": 0.6})[1]


@pytest.mark.parametrize("case", ["store_is_folder", "store_in_read_only_folder", "home_is_file",
                                  "home_read_only", "leaderboard_out_folder", "leaderboard_out_read_only",
                                  "synth_out_file", "synth_out_read_only", "aliccp_out_read_only",
                                  "analyze_out_file", "suite_model_root_read_only"])
def test_a_path_that_cannot_be_written_is_one_line_up_front(home, tmp_path, capsys, monkeypatch, case):
    stack = contextlib.ExitStack()
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "keep.txt").write_text("kept")
    _good_store(tmp_path)
    argv, pattern = {
        "store_is_folder": (["run", "--suite", "quick", "--store", ro], r"results store .*ro is a folder"),
        "store_in_read_only_folder": (["run", "--suite", "quick", "--store", ro / "r.sqlite"],
                                      r"results store .*r.sqlite: its folder .*ro is not writable"),
        "home_is_file": (["run-expid", "--expid", "SharedBottom_test"],
                         r"MDL_BENCH_HOME=.*home.txt is a file, not a folder; point MDL_BENCH_HOME at a folder"),
        "home_read_only": (["run-expid", "--expid", "SharedBottom_test"],
                           r"model_root .*ro/checkpoints/tiny_synth \(under MDL_BENCH_HOME=.*ro\) is not writable"),
        "leaderboard_out_folder": (["leaderboard", "--suite", tmp_path / "suite.yaml", "--out", ro],
                                   r"--out .*ro is a folder, not a file"),
        "leaderboard_out_read_only": (["leaderboard", "--suite", tmp_path / "suite.yaml", "--out", ro / "b.md"],
                                      r"--out .*b.md: its folder .*ro is not writable"),
        "synth_out_file": (["data", "synth", "--out", ro / "keep.txt", "--n-train", 50],
                           r"--out .*keep.txt is a file, not a folder"),
        "synth_out_read_only": (["data", "synth", "--out", ro / "new", "--n-train", 50],
                                r"--out .*ro/new is not writable \(.*ro, the folder it would be created in\)"),
        "aliccp_out_read_only": (["data", "aliccp", "--raw-dir", tmp_path, "--out", ro / "a"], None),
        "suite_model_root_read_only": (["run", "--suite", tmp_path / "suite.yaml", "--store", tmp_path / "new.sqlite",
                                        "--set", f"model_root={ro / 'cp'}"],
                                       r"model_root .*ro/cp/tiny_synth is not writable"),
        "analyze_out_file": (["analyze", "--checkpoint", tmp_path / "x.model", "--expid", "SharedBottom_test",
                              "--out", ro / "keep.txt"], r"--out .*keep.txt is a file, not a folder"),
    }[case]
    if case == "home_is_file":
        (tmp_path / "home.txt").write_text("x")
        monkeypatch.setenv("MDL_BENCH_HOME", str(tmp_path / "home.txt"))
    if case == "home_read_only":
        monkeypatch.setenv("MDL_BENCH_HOME", str(ro))
    if case == "analyze_out_file":
        import torch

        torch.save({"w": torch.zeros(1)}, tmp_path / "x.model")
    if case == "aliccp_out_read_only":  # good raw files: --out is refused before they are read
        from test_realdata import write_aliccp

        argv[argv.index("--raw-dir") + 1] = write_aliccp(tmp_path / "raw")
        pattern = r"--out .*ro/a is not writable"
    if "read_only" in case:
        stack.enter_context(read_only(ro))
    with stack:
        before, home_before = tree(ro), tree(home)
        code, _, err = run_cli(capsys, *argv)
        one_error_line(code, err, pattern)
        assert tree(ro) == before and tree(home) == home_before and not (tmp_path / "new.sqlite").exists()


def test_a_store_on_a_read_only_folder_can_still_be_read(home, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    _good_store(ro)
    for leftover in ro.glob("fake.sqlite-*"):  # a store copied without its WAL files: SQLite cannot add them there
        leftover.unlink()
    with read_only(ro):
        before = tree(ro)
        code, out, err = run_cli(capsys, "runs", "--store", ro / "fake.sqlite")
        assert code == 0 and "SharedBottom_test" in out and "0.6000" in out, err
        code, out, err = run_cli(capsys, "leaderboard", "--suite", ro / "suite.yaml")
        assert code == 0 and "Shared Bottom" in out and "0.6000" in out, err
        code, out, err = run_cli(capsys, "run", "--suite", ro / "suite.yaml", "--dry-run")
        assert code == 0 and "1 runs (1 stored already, 0 to run)" in out, err
        code, _, err = run_cli(capsys, "run", "--suite", ro / "suite.yaml", "--set", "epochs=1")
        one_error_line(code, err, r"results store .*fake.sqlite: its folder .* is not writable.*`runs` and "
                                  r"`leaderboard` can still read a read-only store")
        assert tree(ro) == before


# ================================================================== 4. empty split, missing device, no input
def toy_dataset(tmp_path, empty: str | None) -> Path:
    """test_cli's 40-row dataset ``toy``, with the ``empty`` split cut to its header."""
    from test_cli import write_raw_dataset

    edit = write_raw_dataset(tmp_path)
    if empty:
        path = tmp_path / "raw" / f"{empty}.csv"
        path.write_text(path.read_text().splitlines()[0] + "\n")
    return user_config(tmp_path, edit_datasets=edit)


@pytest.mark.parametrize("case, argv, pattern", [
    ("empty_test", [], r"the test split of dataset 'toy' has no rows \(test_data .*test.csv\)"),
    ("empty_valid", [], r"the valid split of dataset 'toy' has no rows"),
    ("gpu", ["--gpu", "5"], r"gpu 5 was asked for, but this machine has (no usable CUDA GPU|\d+ GPU)"),
    ("gpu_set", ["--set", "gpu=5"], r"gpu 5 was asked for"),
    ("no_input", ["--set", "embedding_dim=0"], r"'embedding_dim' = 0 .*expected an integer >= 1"),
    ("no_input_dropout", ["--set", "net_dropout=1.0"], r"'net_dropout' = 1.0 .*expected a number in \[0, 1\)"),
    ("only_domain", ["--set", "feature_cols=[{name: domain, dtype: int, type: categorical}]", "--set", "roles={}"],
     r"dataset 'toy' gives the model no input feature besides the domain field 'domain'"),
])
def test_a_run_that_would_report_nothing_real_is_refused(home, tmp_path, capsys, case, argv, pattern):
    cfg = toy_dataset(tmp_path, case[len("empty_"):] if case.startswith("empty_") else None)
    code, _, err = run_cli(capsys, "run-expid", "--config", cfg, "--expid", "SharedBottom_test",
                           "--set", "dataset_id=toy", *argv)
    one_error_line(code, err, pattern)
    assert not list(home.rglob("*.model")) and not list(home.rglob("*.result.json"))


# ================================================================== 5. leftovers of killed processes
def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # gone, and (for the test's short life) not reused


def test_leftovers_of_a_killed_build_are_removed_and_a_live_build_is_left_alone(tiny, home):
    from mdl_bench.benchmark.data.build import ensure_dataset

    root = Path(tiny.params["data_root"])
    dead, live = dead_pid(), os.getppid()
    killed = [root / f".build-tiny_synth-{dead}-abcd1234", root / f".old-tiny_synth-{dead}",
              root / ".build-tiny_synth-wxyz5678"]  # (no pid: an older version's name)
    alive = [root / f".build-tiny_synth-{live}-abcd1234", root / f".build-other-{dead}-abcd1234"]
    for folder in killed + alive:
        (folder / "tiny_synth").mkdir(parents=True)
        (folder / "tiny_synth" / "train.parquet").write_bytes(b"x" * 100)
    lines = []
    ensure_dataset(dict(tiny.params), log=lines.append)
    assert not any(f.exists() for f in killed) and all(f.exists() for f in alive)
    assert [line for line in lines if line.startswith("Removed leftovers")] == [
        f"Removed leftovers of a killed build of dataset tiny_synth in {root}: "
        + ", ".join(sorted(f.name for f in killed))]
    for folder in alive:
        shutil.rmtree(folder)


def test_leftovers_of_a_killed_data_generation_are_removed(tmp_path, capsys):
    from mdl_bench.benchmark.data import synth

    dead, live = dead_pid(), os.getppid()
    for pid in (dead, live):
        (tmp_path / f"raw.tmp-{pid}-abcd1234").mkdir()
    synth.write_raw(synth.make_spec("kuairand_like", n_train=60, n_valid=20, n_test=20), tmp_path / "raw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", f"raw.tmp-{live}-abcd1234"]
    assert f"Removed leftovers of a killed data generation in {tmp_path}: raw.tmp-{dead}-abcd1234" in \
        capsys.readouterr().err


def test_leftovers_of_a_killed_conversion_are_removed_and_a_live_one_is_not_disturbed(tmp_path):
    from mdl_bench.benchmark.data import realdata

    out = tmp_path / "out"
    out.mkdir()
    dead, live = dead_pid(), os.getppid()
    (out / f".spool-{dead}").mkdir()
    (out / f".spool-{dead}" / "chunk-000000.parquet").write_bytes(b"x" * 1000)
    (out / f".train.csv.{dead}.partial").write_bytes(b"y" * 500)
    (out / ".valid.csv.partial").write_text("an older version's name, no pid")
    (out / f".spool-{live}").mkdir()
    (out / f".test.csv.{live}.partial").write_text("live")
    (out / "train.csv").write_text("a finished file")
    before = tree(out)
    lines = []
    # a conversion still writing here: refused, and nothing of anyone's is touched
    with pytest.raises(UserError, match=rf"another conversion \(pid {live}\) is writing into .*out right now"):
        realdata.check_out_dir(out, lines.append)
    assert tree(out) == before and lines == []
    shutil.rmtree(out / f".spool-{live}")  # a live .partial alone says the same
    with pytest.raises(UserError, match=rf"another conversion \(pid {live}\)"):
        realdata.check_out_dir(out, lines.append)
    (out / f".test.csv.{live}.partial").unlink()  # it finished
    assert realdata.check_out_dir(out, lines.append) == out
    assert sorted(p.name for p in out.iterdir()) == ["train.csv"]
    assert lines == [f"Removed leftovers of a killed conversion in {out}: .spool-{dead}, .train.csv.{dead}.partial, "
                     f".valid.csv.partial (0.0 MB)"]


# ================================================================== 6. readable error lines
@pytest.mark.parametrize("value, shown", [
    ("a" * 5000, r"'a+ \.\.\. a+'"),
    ("\x1b[31mred\x07", r"'\\x1b\[31mred\\x07'"),  # (YAML refuses it: the message shows it escaped)
    ("é\u200bx", r"'é\\u200bx'"),  # a zero-width space is escaped, a letter is kept
])
def test_an_echoed_value_is_cut_and_printable(home, capsys, value, shown):
    code, _, err = run_cli(capsys, "run-expid", "--expid", "SharedBottom_test", "--set", f"learning_rate={value}")
    line = one_error_line(code, err, rf"('learning_rate' = {shown} \(from --set\)|--set learning_rate: {shown} is not "
                                     rf"a valid YAML value)")
    assert len(line) < 300


def test_long_or_unprintable_names_are_cut_too(capsys):
    code, _, err = run_cli(capsys, "run-expid", "--expid", "X" * 3000 + "\x1b")
    one_error_line(code, err, r"unknown expid 'X+ \.\.\. X+\\x1b'")
    code, _, err = run_cli(capsys, "run-expid", "--expid", "SharedBottom_test", "--set", "k" * 3000 + "=1")
    one_error_line(code, err, r"config key 'k+ \.\.\. k+' of expid")
    assert len(show_value(list(range(10_000)))) <= 80


# ================================================================== 7. unreadable checkpoints, header-only raw files
@pytest.mark.parametrize("content, pattern", [
    (b"", r"is not a PyTorch checkpoint written by a run \(an empty file\)"),
    (b"hello, not a checkpoint\n", r"is not a PyTorch checkpoint written by a run \("),
    (bytes(range(256)) * 20, r"is not a PyTorch checkpoint written by a run \("),
    ("truncated", r"is not a PyTorch checkpoint written by a run \(.*\); it may be truncated"),
    ("a list", r"holds a list, not a model's weights"),
])
def test_analyze_refuses_a_file_that_is_not_a_checkpoint_in_one_line(home, tmp_path, capsys, content, pattern):
    import io

    import torch

    path = tmp_path / "bad.model"
    if content == "truncated":
        buffer = io.BytesIO()
        torch.save({"w": torch.zeros(1000)}, buffer)
        path.write_bytes(buffer.getvalue()[:2000])
    elif content == "a list":
        torch.save([1, 2], path)
    else:
        path.write_bytes(content)
    code, _, err = run_cli(capsys, "analyze", "--checkpoint", path, "--expid", "SharedBottom_test")
    one_error_line(code, err, rf"checkpoint .*bad.model {pattern}")
    assert tree(home) == {}  # refused before any data is generated or built


def test_an_unannotated_model_is_typed_by_its_defaults():
    """A user's model without annotations (the "Add a model" guide's style) still gets widths, rates and switches
    checked; a keyword whose default says nothing (None, text) is left alone."""
    class Plain:
        def __init__(self, feature_map, gate_hidden_units=(64, 32), temperature=1.0, use_bn=False, mode="a",
                     fields=None):
            pass

    types = schema.model_types(Plain)
    with pytest.raises(UserError, match=r"'gate_hidden_units' = \[0\] .*expected a list of integers >= 1 or null"):
        schema.check_value("gate_hidden_units", [0], *types["gate_hidden_units"], "my.yaml")
    with pytest.raises(UserError, match=r"'use_bn' = 2 \(from my.yaml\): expected true or false or null"):
        schema.check_value("use_bn", 2, *types["use_bn"], "my.yaml")
    assert schema.check_value("temperature", "5e-1", *types["temperature"], None) == 0.5
    assert schema.check_value("temperature", 2, *types["temperature"], None) == 2  # an int stays an int
    assert schema.check_value("mode", [1], *types["mode"], None) == [1] and types["fields"][0] is Any


def test_a_regularizer_weight_is_what_fuxictr_reads():
    """FuxiCTR applies only a float (or l1(x)/l2(x)/l1_l2(x,y) text): an int weight was silently no regularisation."""
    kind = schema.key_types()["embedding_regularizer"]
    assert schema.check_value("embedding_regularizer", 1, *kind, None) == 1.0
    assert isinstance(schema.check_value("embedding_regularizer", 1, *kind, None), float)
    assert schema.check_value("embedding_regularizer", 0, *kind, None) == 0  # no regularisation, hash kept
    assert schema.check_value("embedding_regularizer", "1e-6", *kind, None) == 1e-6
    assert schema.check_value("embedding_regularizer", "l1_l2(1e-6, 1e-5)", *kind, None) == "l1_l2(1e-6, 1e-5)"
    with pytest.raises(UserError, match=r"'embedding_regularizer' = -1: expected a number >= 0, or l1\(x\)"):
        schema.check_value("embedding_regularizer", -1, *kind, None)


@pytest.mark.parametrize("options, pattern", [
    (["--max-malformed", "2"], r"--max-malformed must be in \[0, 1\], got 2.0"),
    (["--max-malformed", "-0.1"], r"--max-malformed must be in \[0, 1\], got -0.1"),
    (["--split", "random", "--valid-frac", "1.5"], r"--valid-frac must be in \[0, 1\), got 1.5"),
    (["--split", "random", "--valid-frac", "0.6", "--test-frac", "0.6"], r"--valid-frac \+ --test-frac must be in"),
    (["--num-domains", "0"], r"--num-domains must be >= 1, got 0"),
    (["--test-days", "0"], r"--test-days must be >= 1, got 0"),
])
def test_converter_options_out_of_range_are_refused_before_reading(tmp_path, capsys, options, pattern):
    from test_realdata import write_kuairand

    raw = write_kuairand(tmp_path / "raw")
    code, out, err = run_cli(capsys, "data", "kuairand", "--raw-dir", raw, "--out", tmp_path / "out", *options)
    one_error_line(code, err, pattern)
    assert not (tmp_path / "out").exists() and "Converting" not in out


@pytest.mark.parametrize("argv, pattern", [
    (["--set", "n_train=abc"], r"synthetic-data option 'n_train' = 'abc': expected an integer >= 1"),
    (["--seed", "-1"], r"synthetic-data option 'seed' = -1: expected an integer in \[0, 4294967295\]"),
    (["--set", "side_accuracy=1.5"], r"'side_accuracy' = 1.5: expected a number in \[0, 1\]"),
    (["--set", "domain_rho=[2, 0, 0, 0, 0]"], r"'domain_rho' = \[2, 0, 0, 0, 0\]: .*in \[-1, 1\] \(item 0\)"),
])
def test_generator_options_are_typed_too(home, tmp_path, capsys, argv, pattern):
    code, _, err = run_cli(capsys, "data", "synth", "--out", tmp_path / "s", *argv)
    one_error_line(code, err, pattern)
    assert sorted(os.listdir(tmp_path)) == ["home"]


def test_a_datasets_generator_options_are_checked_before_anything_is_generated(home, capsys):
    code, _, err = run_cli(capsys, "run-expid", "--expid", "SharedBottom_test",
                           "--set", "synth={preset: kuairand_like, n_users: -3}")
    one_error_line(code, err, r"'n_users' = -3: expected an integer >= 1.* \(in `synth` of dataset 'tiny_synth', "
                              r"from --set\)")
    assert tree(home) == {}


def test_a_damaged_store_is_one_line_for_readers_and_writers(home, tmp_path, capsys):
    data = _good_store(tmp_path).read_bytes()
    damaged = tmp_path / "damaged.sqlite"
    damaged.write_bytes(data[:100] + bytes(range(256)) * 8)  # SQLite's header, then garbage
    before = damaged.read_bytes()
    for argv in (["runs", "--store", damaged], ["run", "--suite", tmp_path / "suite.yaml", "--store", damaged]):
        code, _, err = run_cli(capsys, *argv)
        one_error_line(code, err, r"damaged.sqlite is not a usable SQLite results store \(.*\); pass another --store")
    assert damaged.read_bytes() == before


def test_a_read_only_working_area_still_prints_a_leaderboard_with_plots_configured(tmp_path, capsys, monkeypatch):
    """Plots go to $MDL_BENCH_HOME/reports when no --out is given: a read-only working area gets the table and
    one note, not a refusal (reading must work where nothing can be written)."""
    from test_suite import filled_store

    data = {"name": "sens", "seeds": [1], "expids": [{"expid": "SharedBottom_test",
                                                      "tuner_space": {"embedding_dim": [2, 3]}}],
            "leaderboard": {"plots": [{"name": "p", "x": "embedding_dim", "metrics": ["AUC"]}]}}
    suite, store = filled_store(tmp_path, data, lambda row, seed: {"AUC": 0.7 + 0.01 * row, "gAUC": 0.6})
    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setenv("MDL_BENCH_HOME", str(ro))
    with read_only(ro):
        code, out, err = run_cli(capsys, "leaderboard", "--suite", suite.path, "--store", store)
    assert code == 0 and "0.7100" in out and "error:" not in err, err
    assert [line for line in err.splitlines() if line.startswith("note:")] == [
        f"note: the plot folder {ro / 'reports' / 'sens'} (under MDL_BENCH_HOME={ro}) is not writable ({ro}, the "
        f"folder it would be created in): read-only file system; pass --out FILE in a writable folder for the plots; "
        f"printing the table without its plots"]
    assert os.listdir(ro) == []
