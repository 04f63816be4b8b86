"""The command line's conventions: results on stdout and progress on stderr, ``--quiet``/``--verbose``,
``--version``, a ``--help`` that loads nothing heavy, the whole-store leaderboard, ``--from DIR``, suggested
commands that run as printed, no SQLite side files left beside a store, and ``check-model``'s one-line answer
to a ``logits`` that returns a bare tensor."""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import yaml

import mdl_bench.model_zoo as zoo
from mdl_bench.benchmark.cli import build_parser, main

ONE_RUN = {"name": "conv", "seeds": [1], "overrides": {"epochs": 1, "batch_size": 2048},
           "expids": [{"expid": "Crocodile_test", "label": "Crocodile"}]}


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def command(*argv, cwd: Path, stdout, stderr) -> int:
    """``mdl-bench ARGV`` in a fresh process, as a shell runs it (``python -m`` the entry point's module)."""
    return subprocess.run([sys.executable, "-m", "mdl_bench.benchmark.cli", *argv], cwd=cwd, stdout=stdout,
                          stderr=stderr, env={**os.environ, "MDL_BENCH_MODELS_FROM": ""}, timeout=600).returncode


def side_files(store: Path) -> list[str]:
    return sorted(p.name for p in store.parent.glob(store.name + "-*"))


def write_suite(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------- help, version, verbosity
def test_help_and_version_load_neither_torch_nor_the_models(tmp_path):
    probe = ("import sys\nfrom mdl_bench.benchmark.cli import main\n"
             "for argv in (['--help'], ['run', '--help'], ['--version']):\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
             "heavy = [m for m in ('torch', 'fuxictr', 'polars', 'numpy', 'mdl_bench.model_zoo') if m in sys.modules]\n"
             "print('HEAVY', heavy)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout, done.stdout
    assert "usage: mdl-bench" in done.stdout
    assert f"mdl-bench {metadata.version('mdl-bench')}" in done.stdout


@pytest.mark.parametrize("argv", [["-q", "models"], ["models", "-q"], ["--quiet", "runs"], ["runs", "--quiet"],
                                  ["-q", "data", "synth", "--out", "x"], ["data", "synth", "--out", "x", "-q"]])
def test_quiet_is_accepted_before_and_after_the_command(argv):
    args = build_parser().parse_args(argv)
    assert args.quiet is True and args.verbose is False


def test_verbose_and_quiet_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["models", "-q", "-v"])
    assert "not allowed with" in capsys.readouterr().err


def test_run_expid_into_a_file_leaves_only_result_lines_there(tiny, tmp_path):
    argv = ["run-expid", "--expid", "MMoE_test", "--epochs", "1", "--model-root", str(tmp_path / "ckpt")]
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        assert command(*argv, cwd=tmp_path, stdout=out, stderr=err) == 0
    lines = (tmp_path / "out.txt").read_text().splitlines()
    err = (tmp_path / "err.txt").read_text()
    assert lines[0].startswith("Test results: MMoE_test"), lines
    assert lines[1].split()[:3] == ["domain", "rows", "AUC"] and lines[-3].startswith("Overall")
    assert lines[-2].startswith("+-se: standard error of the AUC, bootstrap over users (1000 replicates)")
    assert lines[-1].startswith("wall time ") and len(lines) == 4 + 6  # title, header, 5 domains, Overall, se, time
    assert not any("it/s" in line or "\r" in line or "%|" in line for line in lines)
    assert "it/s" in err  # the progress bars went to stderr...
    assert " INFO " not in err and "Params:" not in err  # ...and the run's INFO log only to its log file
    log = next((tmp_path / "ckpt" / "tiny_synth").glob("MMoE_test__s2024__*.log")).read_text()
    assert "Params:" in log and "FuxiCTR version" in log and "[Metrics]" in log


def test_run_expid_quiet_prints_nothing_but_results_and_verbose_shows_the_log(tiny, tmp_path):
    base = ["run-expid", "--expid", "MMoE_test", "--epochs", "1", "--model-root", str(tmp_path / "ckpt")]
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        assert command(*base, "--quiet", cwd=tmp_path, stdout=out, stderr=err) == 0
    assert (tmp_path / "err.txt").read_text() == ""
    assert (tmp_path / "out.txt").read_text().startswith("Test results: MMoE_test")
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        assert command("-v", *base, "--set", "verbose=0", cwd=tmp_path, stdout=out, stderr=err) == 0
    err = (tmp_path / "err.txt").read_text()
    assert "Params:" in err and "FuxiCTR version" in err and "it/s" not in err


# ------------------------------------------------------------------------------ stores: whole view, side files
@pytest.fixture(scope="module")
def stored(tiny, tmp_path_factory):
    """One tiny suite run from its file into a fresh store, the store checked for side files after it."""
    folder = tmp_path_factory.mktemp("conventions")
    suite = write_suite(folder / "mine.yaml", ONE_RUN)
    store = folder / "results.sqlite"
    code, out, err = cli("run", "--suite", str(suite), "--store", str(store), "-q")
    assert code == 0, err
    return folder, suite, store, out, err


def test_a_quiet_suite_run_prints_the_leaderboard_and_nothing_on_stderr(stored):
    _, _, _, out, err = stored
    assert err == ""
    assert "| Crocodile" in out


def test_no_sqlite_side_files_are_left_after_a_command(stored):
    folder, suite, store, _, _ = stored
    assert side_files(store) == []  # after `run`
    for argv in (["leaderboard", "--suite", str(suite)], ["leaderboard"], ["runs"], ["runs", "--suite", str(suite)]):
        code, _, err = cli(*argv, "--store", str(store))
        assert code == 0, err
        assert side_files(store) == [], argv


def test_leaderboard_without_suite_shows_every_stored_run_by_dataset_and_expid(stored):
    folder, _, store, _, _ = stored
    code, out, err = cli("leaderboard", "--store", str(store))
    assert code == 0, err
    assert "### Dataset tiny_synth" in out
    row = [line for line in out.splitlines() if line.startswith("| Crocodile_test")]
    assert len(row) == 1 and "| conv " in row[0], out
    assert re.search(r"\|\s+0\.\d{4} \|", row[0])
    code, text, _ = cli("leaderboard", "--store", str(store), "--format", "csv")
    assert code == 0 and text.splitlines()[0].startswith("dataset,expid,model,config_hash")
    assert text.splitlines()[1].startswith("tiny_synth,Crocodile_test,Crocodile,")


def test_the_suggested_command_for_missing_runs_runs_as_printed(stored, tmp_path, monkeypatch):
    folder, _, store, _, _ = stored
    monkeypatch.chdir(folder)  # the suite given as a relative path, as a user in its folder types it
    write_suite(folder / "two_seeds.yaml", {**ONE_RUN, "seeds": [1, 2]})
    code, out, err = cli("leaderboard", "--suite", "two_seeds.yaml", "--store", "results.sqlite")
    assert code == 0, err
    suggested = re.findall(r"`(mdl-bench run [^`]+)`", out)
    assert suggested and suggested[0] == "mdl-bench run --suite two_seeds.yaml --store results.sqlite", out
    code, out, err = cli(*shlex.split(suggested[0])[1:], "-q")
    assert code == 0, err
    assert "not in the store for the current code yet" not in out


# ------------------------------------------------------------------------------------------------- --from DIR
def test_from_must_be_a_folder_and_agree_with_config(tmp_path):
    code, _, err = cli("expids", "--from", str(tmp_path / "missing"))
    assert code == 2 and re.fullmatch(r"error: --from \S+: no such folder; pass the folder that holds your model "
                                      r"files and model_config\.yaml\n", err), err
    other = tmp_path / "other"
    other.mkdir()
    code, _, err = cli("expids", "--from", str(tmp_path), "--config", str(other))
    assert code == 2 and err.count("\n") == 1 and "name two config folders" in err


BARE = '''
from mdl_bench.model_zoo.MMoE import MMoE


class BareTensor(MMoE):
    """MMoE whose logits forgets the auxiliary losses."""

    def logits(self, X, domain):
        logit, _ = super().logits(X, domain)
        return logit
'''


def test_check_model_says_once_that_logits_must_return_a_pair(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv(zoo.ENV_VAR, "")
    monkeypatch.setattr(zoo, "_state", zoo._Registry())
    (tmp_path / "BareTensor.py").write_text(textwrap.dedent(BARE))
    from mdl_bench.benchmark.config import ConfigSet

    block = dict(ConfigSet().models["MMoE_test"], model="BareTensor")
    (tmp_path / "model_config.yaml").write_text(yaml.safe_dump({"BareTensor_test": block}))
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("check-model", "BareTensor", "--from", ".")
    assert code == 1, err
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1, out
    assert re.match(r"FAIL  logits\s+logits returned a bare tensor of shape \(\d+,\); logits\(X, domain\) must "
                    r"return a pair \(logit, aux\)", fails[0]), fails[0]
    assert "too many values to unpack" not in out + err


def test_the_suggested_expids_command_runs_as_printed_and_lists_the_users_expids(tmp_path):
    block = {"Mine_test": {"model": "MMoE", "dataset_id": "tiny_synth"}}
    (tmp_path / "model_config.yaml").write_text(yaml.safe_dump(block))
    code, _, err = cli("run-expid", "--expid", "Nope", "--from", str(tmp_path))
    assert code == 2
    suggested = re.findall(r"`(mdl-bench expids[^`]*)`", err)
    assert suggested == [f"mdl-bench expids --config {tmp_path}"], err
    code, out, err = cli(*shlex.split(suggested[0])[1:])
    assert code == 0 and "Mine_test" in out, err


def test_a_missing_raw_file_names_the_converter_that_creates_it_and_that_command_parses(tmp_path):
    """The error for a packaged real dataset whose files are not there yet names its converter, as a command the
    parser takes; another dataset is pointed at writing its CSV files."""
    import shlex

    from mdl_bench.benchmark.cli import build_parser
    from mdl_bench.benchmark.data.build import CONVERTERS, _split_files
    from mdl_bench.kernel.errors import UserError

    parser = build_parser()
    for dataset_id, line in CONVERTERS.items():
        args = parser.parse_args(shlex.split(line.replace("DIR", str(tmp_path)))[1:])
        assert args.command == "data" and args.raw_dir == str(tmp_path), line
        params = {"dataset_id": dataset_id, **{f"{s}_data": str(tmp_path / f"{s}.csv") for s in
                                               ("train", "valid", "test")}}
        with pytest.raises(UserError, match=re.escape(line)):
            _split_files(params)
    with pytest.raises(UserError, match="write train/valid/test CSV files there"):
        _split_files({"dataset_id": "my_clicks", "train_data": str(tmp_path / "x.csv")})
