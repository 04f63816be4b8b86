"""Suites, the results store and the leaderboard, on tiny data with 1-epoch runs.

The end-to-end suite uses two rows built from Crocodile_test (with and without CovLoss) and two seeds, so it does
not depend on the other baselines; the leaderboard's marks are checked on a store filled with chosen numbers.
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from mdl_bench.benchmark.cli import main
from mdl_bench.kernel.errors import UserError
from mdl_bench.benchmark.leaderboard import build_board, make_plots, render
from mdl_bench.benchmark.codeid import code_fingerprint
from mdl_bench.benchmark.store import (APPLICATION_ID, SCHEMA_VERSION, Store, config_hash, local_config,
                                       portable_config)
from mdl_bench.benchmark.suite import Suite, load_suite, rerun, run_suite

TWO_ROWS = {
    "name": "two",
    "description": "two rows, two seeds",
    "seeds": [1, 2],
    "overrides": {"epochs": 1, "batch_size": 2048},  # 3 steps an epoch: the machinery is under test, not the model
    "expids": [
        {"expid": "Crocodile_test", "label": "Crocodile B+C"},
        {"expid": "Crocodile_test", "label": "Crocodile B", "group": "Base", "overrides": {"aux_loss": "none"}},
    ],
}


def write_suite(folder: Path, data: dict, name: str = "suite.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_quiet(suite, store, **kw):
    lines, bar = [], io.StringIO()
    outcome = run_suite(suite, store=str(store), out=lines.append, progress_stream=bar, **kw)
    return outcome, "\n".join(lines), bar.getvalue()


def count_runs(store) -> int:
    with contextlib.closing(sqlite3.connect(str(store))) as conn:
        return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]


@pytest.fixture(scope="module")
def two(tiny, tmp_path_factory):
    """The two-row, two-seed suite run once into a fresh store."""
    folder = tmp_path_factory.mktemp("two")
    suite = load_suite(str(write_suite(folder, TWO_ROWS)))
    store = folder / "results.sqlite"
    outcome, text, bar = run_quiet(suite, store)
    return suite, store, outcome, text, bar


# ---------------------------------------------------------------------------------------------- running
def test_suite_stores_every_run_once_with_everything_needed(two):
    suite, store, outcome, text, bar = two
    assert "4 runs (0 stored already, 4 to run)" in text
    assert len(outcome.stored_now) == 4 and not outcome.failed
    # one progress bar over the suite: current run, its epoch, the suite total
    assert "run 1/4 Crocodile_test seed 1" in bar and "epoch 1/1" in bar and "4.0/4 epochs" in bar
    plan = suite.plan()
    with Store(store, create=False) as db:
        keys = db.stored_keys()
        assert set(keys) == {r.key for r in plan.runs}
        runs = [db.get_run(keys[r.key]) for r in plan.runs]
    assert len({r["config_hash"] for r in runs}) == 2  # two configs, two seeds each
    for planned, run in zip(plan.runs, runs):
        assert run["config_hash"] == config_hash(planned.params) == config_hash(local_config(run["config"]))
        assert run["seed"] == planned.seed == run["config"]["seed"]
        assert run["model_id"] == (f"Crocodile_test__s{planned.seed}__{run['config_hash'][:8]}__"
                                   f"{run['code_fingerprint'][:8]}")
        assert run["code_fingerprint"] == code_fingerprint("Crocodile").digest == planned.variant.code
        assert run["versions"]["code_files"] == code_fingerprint("Crocodile").files
        assert run["config"]["aux_loss"] == planned.params["aux_loss"] and run["config"]["epochs"] == 1
        assert run["config"]["model_root"].startswith("${MDL_BENCH_HOME}")  # portable, reruns elsewhere
        for split in ("valid", "test"):
            m = run["metrics"][split]
            for name in ("AUC", "gAUC", "logloss"):
                assert 0 < m[name] < 1
                assert all(0 <= m[f"{name}@{d}"] <= 1 for d in ("S0", "S1", "S2", "S4", "S6"))
        assert run["best_epoch"] == 1 and run["epochs_run"] == 1
        assert run["train_seconds"] > 0 and run["train_samples_per_second"] > 0 and run["wall_seconds"] > 0
        assert run["peak_rss_bytes"] > 10_000_000 and run["peak_rss_children_bytes"] >= 0
        assert {"torch", "fuxictr", "numpy", "python"} <= set(run["versions"])
        assert run["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", run["git_commit"])
        assert Path(run["log_file"]).is_file() and Path(run["checkpoint"]).is_file()
    assert len({r["log_file"] for r in runs}) == len({r["checkpoint"] for r in runs}) == 4  # no collisions


def test_rerunning_the_suite_skips_stored_runs_and_a_changed_config_runs_again(two):
    suite, store, *_ = two
    outcome, text, _ = run_quiet(suite, store)
    assert "4 stored already, 0 to run" in text and not outcome.stored_now and count_runs(store) == 4
    # keys that only relocate files or change console output are not part of a run's identity
    outcome, text, _ = run_quiet(suite, store, extra_overrides={"model_root": str(store.parent / "elsewhere"),
                                                                 "verbose": 1})
    assert not outcome.stored_now and count_runs(store) == 4
    # a changed config is a new hash: both of its seeds run, nothing else does
    data = yaml.safe_load(Path(suite.path).read_text())
    data["expids"][1]["overrides"]["learning_rate"] = 0.02
    data["expids"][1]["seeds"] = [1]
    changed = Suite(data, Path(suite.path))
    outcome, text, _ = run_quiet(changed, store)
    assert "3 runs (2 stored already, 1 to run)" in text
    assert [(r.variant.label, r.seed) for r in outcome.stored_now] == [("Crocodile B", 1)]
    assert outcome.stored_now[0].variant.config_hash not in {h for h, _, _ in Store(store).stored_keys()
                                                             if h != outcome.stored_now[0].variant.config_hash}
    assert count_runs(store) == 5
    with contextlib.closing(sqlite3.connect(str(store))) as conn:
        assert conn.execute("SELECT COUNT(*) FROM (SELECT config_hash, seed FROM runs GROUP BY config_hash, seed "
                            "HAVING COUNT(*) > 1)").fetchone()[0] == 0


def test_rerun_from_the_stored_config_matches_exactly(two, capsys):
    suite, store, *_ = two
    with Store(store, create=False) as db:
        run_id = db.stored_keys()[suite.plan().runs[3].key]
    lines = []
    assert rerun(run_id, store=str(store), out=lines.append, progress_stream=io.StringIO())
    text = "\n".join(lines)
    assert "MISMATCH" not in text and "All 37 values match exactly." in text
    assert re.search(r"test  gAUC@S6 +stored (\S+) +rerun \1 +match", text)


def test_leaderboard_of_the_run_suite(two, tmp_path, capsys):
    suite, store, *_ = two
    code = main(["leaderboard", "--suite", str(suite.path), "--store", str(store), "--format", "csv",
                 "--out", str(tmp_path / "board.csv")])
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "board.csv")))
    # the paper's groups first (Crocodile), then groups it does not know (Base), in the suite's order; then the
    # data's oracle (true click probability) as an unranked reference row
    assert [(r["group"], r["method"]) for r in rows] == [("Crocodile", "Crocodile B+C"), ("Base", "Crocodile B"),
                                                         ("Oracle", "Oracle (true CTR)")]
    oracle, rows = rows[-1], rows[:-1]
    assert float(oracle["AUC@S6"]) > max(float(r["AUC@S6"]) for r in rows) and oracle["AUC bold"] == ""
    assert all(r["seeds"] == "2" for r in rows)
    # real runs store the test split's bootstrap: every cell has an interval, each row a rank interval
    for r in rows:
        assert float(r["AUC ci_low"]) < float(r["AUC"]) < float(r["AUC ci_high"])
        assert 1 <= int(r["AUC rank_low"]) <= int(r["AUC rank_high"]) <= 2 and r["AUC group"]
        assert int(r["AUC rows"]) > 0 and int(r["gAUC users"]) > 0
    # capacity: both rows are one architecture (CovLoss adds no parameter) on the same tables
    assert rows[0]["embedding_parameters"] == rows[1]["embedding_parameters"] and int(rows[0]["dense_parameters"]) > 0
    assert float(rows[0]["train_flops_per_row"]) > 0
    code = main(["leaderboard", "--suite", str(suite.path), "--store", str(store), "--out", str(tmp_path / "b.md")])
    text = (tmp_path / "b.md").read_text()
    assert code == 0 and "#### Capacity" in text and "train MFLOP/row" in text and "size rule" in text


# ---------------------------------------------------------------------------------------------- leaderboard
def fake_record(run, metrics: dict) -> dict:
    return dict(config_hash=run.variant.config_hash, seed=run.seed, code_fingerprint=run.variant.code,
                expid=run.expid, model="Crocodile",
                dataset_id=run.variant.dataset_id, model_id=run.model_id, suite="fake",
                config=portable_config(run.params), best_epoch=1, epochs_run=1, train_seconds=1.0,
                train_samples_per_second=1.0, wall_seconds=1.0, num_parameters=1, peak_rss_bytes=1,
                peak_rss_children_bytes=0, peak_rss_scope="run", torch_threads=1, versions={}, git_commit=None,
                hostname="h", checkpoint="c", log_file="l", result={}, started_at=0.0, finished_at=0.0,
                metrics={"test": metrics, "valid": metrics})


def filled_store(tmp_path, data: dict, values) -> tuple:
    """A suite and a store holding chosen metrics: ``values(row_index, seed) -> {metric: value}``."""
    suite = Suite(data, write_suite(tmp_path, data))
    store = tmp_path / "fake.sqlite"
    plan = suite.plan()
    index = {v.config_hash: i for i, v in enumerate(plan.variants)}
    with Store(store) as db:
        for run in plan.runs:
            assert db.insert_run(fake_record(run, values(index[run.variant.config_hash], run.seed))) is not None
    return suite, store


THREE_ROWS = {
    "name": "three", "seeds": [1, 2, 3, 4],
    "expids": [{"expid": "Crocodile_test", "label": "A", "group": "MDL", "overrides": {"learning_rate": 0.01}},
               {"expid": "Crocodile_test", "label": "B", "group": "MDL", "overrides": {"learning_rate": 0.02}},
               {"expid": "Crocodile_test", "label": "C", "group": "Crocodile", "overrides": {"learning_rate": 0.03}}],
    "leaderboard": {"metrics": ["AUC", "gAUC"], "lift": [{"base": "A", "metrics": ["AUC"]}]},
}
NOISE = {1: 0.0, 2: 0.0004, 3: -0.0003, 4: 0.0001}


def three_values(row: int, seed: int) -> dict:
    # AUC: C best and clearly ahead of B (significant); gAUC: B best, A a close second with noisy pairs (not)
    auc = {0: 0.70, 1: 0.71, 2: 0.72}[row] + (NOISE[seed] if row != 2 else NOISE[seed] / 2)
    gauc = {0: 0.650 + [0.004, -0.004, 0.003, -0.002][seed - 1], 1: 0.651, 2: 0.60}[row]
    out = {"AUC": auc, "gAUC": gauc, "logloss": 0.5}
    for d in ("S0", "S1", "S2", "S4", "S6"):
        out.update({f"AUC@{d}": auc, f"gAUC@{d}": gauc, f"logloss@{d}": 0.5})
    return out


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
def test_runs_without_a_stored_bootstrap_are_compared_by_the_paired_t_test_holm_corrected(tmp_path):
    """Runs stored without test-split replicates (the valid split, older stores): the seeds alone, so the
    comparison with the reference row is scipy's paired t-test, Holm-adjusted over the rows."""
    suite, store = filled_store(tmp_path, dict(THREE_ROWS, leaderboard=dict(THREE_ROWS["leaderboard"],
                                                                              reference="A")), three_values)
    board = build_board(suite, store=str(store))
    table = board.tables[0]
    assert [r.label for r in table.rows] == ["A", "B", "C"]  # the paper's group order: MDL before Crocodile
    col = lambda row, metric: [three_values(row, s)[metric] for s in (1, 2, 3, 4)]
    raw = [stats.ttest_rel(col(i, "AUC"), col(0, "AUC")).pvalue for i in (1, 2)]
    adjusted = sorted(raw)[0] * 2, max(sorted(raw)[0] * 2, sorted(raw)[1])
    auc = table.marks["AUC"]
    assert sorted(auc.p_reference[1:]) == pytest.approx(sorted(min(1.0, a) for a in adjusted))
    assert auc.direction(2) == 1 and auc.rank_low[2] == 1
    assert "logloss" not in table.marks  # only the asked metrics are columns

    md = render(board, "md")
    c_row = next(l for l in md.splitlines() if l.startswith("| Crocodile"))
    assert f"**{np.mean(col(2, 'AUC')):.4f}** ±" in c_row and "▲" in c_row
    assert "MTL" not in md and "| MDL" in md and "spread over seeds only" in md

    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(render(board, "csv")))}
    assert float(rows["C"]["AUC"]) == pytest.approx(np.mean(col(2, "AUC")))
    assert float(rows["A"]["gAUC std"]) == pytest.approx(np.std(col(0, "gAUC"), ddof=1))
    # lift over A (table 4/5 style): each row against the base, Holm over the rows
    lift = float(rows["C"]["lift[A] AUC %"])
    assert lift == pytest.approx((np.mean(col(2, "AUC")) / np.mean(col(0, "AUC")) - 1) * 100)
    assert sorted([float(rows["B"]["lift[A] AUC p"]), float(rows["C"]["lift[A] AUC p"])]) == \
        pytest.approx(sorted(min(1.0, a) for a in adjusted))

    page = render(board, "html")
    assert f"<b class='best'>{np.mean(col(2, 'AUC')):.4f}</b>" in page
    assert "<style>" in page and not re.search(r"(src|href)=['\"](?!data:)", page)  # nothing external


def test_std_cells_and_missing_runs(tmp_path):
    data = dict(THREE_ROWS, seeds=[1, 2])
    suite, store = filled_store(tmp_path, data, three_values)
    more = dict(data, seeds=[1, 2, 3])  # one seed more than stored: rows show 2/3 and a note
    board = build_board(Suite(more, suite.path), store=str(store), std=True)
    md = render(board, "md")
    assert "2/3" in md and "3 of 9 runs are not in the store for the current code yet" in md and "(sd " in md


def test_figure8_plot_is_a_png_embedded_in_the_html(tmp_path):
    data = {"name": "sens", "seeds": [1, 2],
            "expids": [{"expid": "Crocodile_test", "label": "Crocodile", "tuner_space": {"num_embeddings": [2, 3]}},
                       {"expid": "Crocodile_test", "label": "Base", "overrides": {"gating": "pg"},
                        "tuner_space": {"num_embeddings": [2, 3]}}],
            "leaderboard": {"domains": ["Overall"], "plots": [{"name": "fig8", "x": "num_embeddings",
                                                               "metrics": ["gAUC"], "lift_over": "Base"}]}}
    suite, store = filled_store(tmp_path, data, lambda row, seed: {"AUC": 0.7, "gAUC": 0.6 + 0.01 * row})
    board = build_board(suite, store=str(store))
    assert [r.label for r in board.tables[0].rows] == ["Crocodile [num_embeddings=2]", "Crocodile [num_embeddings=3]",
                                                       "Base [num_embeddings=2]", "Base [num_embeddings=3]"]
    images = make_plots(board, tmp_path / "plots")
    png = Path(images["fig8"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "data:image/png;base64," in render(board, "html", images)


def test_a_plot_over_datasets_reads_generator_options_and_gives_gaps_to_the_oracle(tmp_path):
    """x and panels read dotted keys of the resolved config (the dataset's generator options); vs_oracle plots
    oracle - value per dataset; the plotted numbers are also a table in md."""
    from mdl_bench.benchmark.config import ConfigSet
    from mdl_bench.benchmark.leaderboard import plot_values

    tiny = ConfigSet(None).dataset_params("tiny_synth")
    blocks = {f"r{i}": dict(tiny, synth=dict(tiny["synth"], small_rho=rho, size_skew=skew))
              for i, (rho, skew) in enumerate([(0.5, 1), (-0.5, 1), (0.5, 10), (-0.5, 10)])}
    config = tmp_path / "cfg"
    config.mkdir()
    (config / "dataset_config.yaml").write_text(yaml.safe_dump(blocks))
    data = {"name": "regime", "seeds": [1], "datasets": list(blocks),
            "expids": [{"expid": "SharedBottom_test", "label": "SB"}, {"expid": "MMoE_test", "label": "MMoE"}],
            "leaderboard": {"domains": ["Overall"], "plots": [
                {"name": "gap", "x": "synth.small_rho", "panels": "synth.size_skew", "metrics": ["AUC", "logloss"],
                 "vs_oracle": True}]}}
    suite = Suite(data, write_suite(tmp_path, data))
    plan = suite.plan(str(config))
    store = tmp_path / "fake.sqlite"
    value = lambda v: 0.70 + 0.01 * (v.expid == "MMoE_test") - 0.02 * (v.params["synth"]["small_rho"] < 0)
    with Store(store) as db:
        for run in plan.runs:
            record = fake_record(run, {"AUC": value(run.variant), "logloss": 0.5})
            record["metrics"]["oracle"] = {"AUC": 0.8, "logloss": 0.45}
            db.insert_run(record)
    board = build_board(suite, store=str(store), config_dir=str(config))
    spec = suite.leaderboard["plots"][0]
    gaps = plot_values(board, spec, "AUC")
    assert sorted(gaps) == [1, 10]
    assert gaps[10]["SB"] == [(-0.5, pytest.approx(0.12)), (0.5, pytest.approx(0.10))]
    assert gaps[1]["MMoE"] == [(-0.5, pytest.approx(0.11)), (0.5, pytest.approx(0.09))]
    assert plot_values(board, spec, "logloss")[1]["SB"] == [(-0.5, pytest.approx(0.05)), (0.5, pytest.approx(0.05))]
    md = render(board, "md", make_plots(board, tmp_path / "plots"))
    assert "gap: gap to oracle in AUC, synth.size_skew = 10" in md and "| SB " in md
    assert (tmp_path / "plots" / "regime_gap.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------- the suite format
def test_tuner_space_expands_as_a_grid_over_the_expid(tmp_path):
    data = {"name": "grid", "seeds": [5], "tuner_space": {"embedding_dim": 4},
            "expids": [{"expid": "Crocodile_test", "tuner_space": {"learning_rate": [0.01, 0.02],
                                                                  "cov_alpha": [1.e-4, 1.e-3]}},
                       {"expid": "Crocodile_test", "label": "seeded", "tuner_space": {"seed": [7, 8]}}]}
    plan = Suite(data, write_suite(tmp_path, data)).plan()
    grid = plan.variants[:4]
    assert [(v.params["learning_rate"], v.params["cov_alpha"]) for v in grid] == [
        (0.01, 1e-4), (0.01, 1e-3), (0.02, 1e-4), (0.02, 1e-3)]
    assert all(v.params["embedding_dim"] == 4 for v in plan.variants)  # a scalar is fixed, as in FuxiCTR
    assert len({v.config_hash for v in grid}) == 4 and all(v.seeds == [5] for v in grid)
    assert grid[1].label == "Crocodile [learning_rate=0.01, cov_alpha=0.001]"
    assert plan.variants[4].seeds == [7, 8] and len(plan.runs) == 6  # `seed` in a tuner_space lists seeds
    bad = {"name": "bad", "expids": [{"expid": "Crocodile_test", "tuner_space": {"learning_rat": [0.1, 0.2]}}]}
    with pytest.raises(UserError, match=r"config key 'learning_rat' .* not a parameter of model Crocodile"):
        Suite(bad, write_suite(tmp_path, bad, "bad.yaml")).plan()


@pytest.mark.parametrize("edit, pattern", [
    (lambda d: d["expids"].append("Crocodile_tset"),
     r"unknown expid 'Crocodile_tset' \(did you mean Crocodile_test.*\); known expids: .*Crocodile_default"),
    (lambda d: d.update(datasets=["tiny_synt"]),
     r"unknown dataset 'tiny_synt' \(did you mean tiny_synth\?\); known datasets: .*kuairand_like"),
    (lambda d: d.update(leaderboard={"metrics": ["AUC", "gAUX"]}),
     r"unknown metric 'gAUX' in `leaderboard` \(did you mean gAUC\?\); known metrics: logloss, AUC, gAUC"),
    (lambda d: d.update(seed=[1]), r"unknown suite key 'seed' \(did you mean seeds\?\)"),
])
def test_bad_suite_input_is_rejected_before_anything_runs(tmp_path, capsys, edit, pattern):
    data = yaml.safe_load(yaml.safe_dump(TWO_ROWS))
    edit(data)
    store = tmp_path / "results.sqlite"
    code = main(["run", "--suite", str(write_suite(tmp_path, data)), "--store", str(store)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(pattern, err), err
    assert not store.exists() and not (tmp_path / "checkpoints").exists()


def test_unknown_suite_name_lists_the_shipped_ones(capsys):
    assert main(["leaderboard", "--suite", "quik"]) == 2
    err = capsys.readouterr().err
    assert "unknown suite 'quik' (did you mean quick?)" in err and "ablation" in err and "sensitivity" in err


def test_shipped_suites_plan_against_the_registry():
    from mdl_bench.model_zoo import registry

    for name in ("quick", "main", "main_conflict", "ablation", "losses", "sensitivity", "alpha", "regime", "tune"):
        plan = load_suite(name).plan(strict=False)
        assert plan.runs, name
    quick = load_suite("quick")
    # the main job: every row trained to convergence (no epoch override: the expids' cap, never reached)
    assert len(quick.entries) == 13 and quick.seeds == [2024] and "epochs" not in quick.overrides
    assert len(load_suite("main").seeds) >= 5 and load_suite("main").seeds[0] == 2024  # the paper ran six
    tune = load_suite("tune")
    assert tune.tuner.budget >= 30 and {e.expid for e in tune.entries} == {e.expid for e in quick.entries}
    # both Crocodile rows, each labelled, in the tuning and in the main table
    for suite in (tune, quick, load_suite("main")):
        labels = {e.expid: e.label for e in suite.entries}
        assert labels["Crocodile_default"] == "Crocodile (tuned)" and labels["Crocodile_paper"] == "Crocodile (paper)"
    # every tuned row has its conflict_like block, and main_conflict runs them all
    conflict = load_suite("main_conflict")
    assert {(e.expid, e.label) for e in conflict.entries} == \
        {(f"{e.expid.removesuffix('_default')}_conflict_like", e.label) for e in tune.entries}
    for variant in conflict.plan(strict=False).variants:
        assert variant.params["dataset_id"] == "conflict_like", variant.expid
    known = {e.expid.rsplit("_", 1)[0] for e in quick.entries}
    if known <= set(registry()):  # every model of table 2 registered: the quick suite resolves strictly
        assert {v.group for v in quick.plan().variants} == {"Single Domain", "MTL (SE)", "MTL (ME)", "MDL",
                                                            "Crocodile"}



def zip_dataset(folder: Path, zip_dtype: str) -> Path:
    """A config folder with dataset ``zips``: a ``zip_code`` column numeric for 1,200 rows, then ``M4J2K``."""
    rng = np.random.default_rng(0)
    raw = folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 1500), ("valid", 200), ("test", 200)):
        rows = [f"u{rng.integers(0, 30)},{rng.choice([1, 2])},{rng.integers(10000, 10010) if i < 1200 else 'M4J2K'},"
                f"{rng.integers(0, 2)}" for i in range(n)]
        (raw / f"{split}.csv").write_text("user_id,domain,zip_code,click\n" + "\n".join(rows) + "\n")
    block = dict(data_root=str(folder / "data"), data_format="csv", domain_field="domain", domains=[1, 2],
                 label_col={"name": "click", "dtype": "float"},
                 feature_cols=[{"name": "user_id", "dtype": "str", "type": "categorical"},
                               {"name": "domain", "dtype": "int", "type": "categorical"},
                               {"name": "zip_code", "dtype": zip_dtype, "type": "categorical"},
                               {"name": "group_id", "dtype": "str", "type": "meta",
                                "preprocess": "copy_from(user_id)"}],
                 group_id="group_id", **{f"{s}_data": str(raw / f"{s}.csv") for s in ("train", "valid", "test")},
                 roles={"user": "user_id", "item": "zip_code"})  # no item column: zip_code stands in for Crocodile
    (folder / "dataset_config.yaml").write_text(yaml.safe_dump({"zips": block}))
    return folder


def test_a_dataset_that_cannot_be_built_stops_the_suite_with_one_error(tmp_path, capsys):
    config = zip_dataset(tmp_path / "config", zip_dtype="int")
    data = dict(TWO_ROWS, datasets=["zips"], expids=["Crocodile_test", "SharedBottom_test"], seeds=[1, 2, 3])
    store = tmp_path / "results.sqlite"
    code = main(["run", "--suite", str(write_suite(tmp_path, data)), "--config", str(config), "--store",
                 str(store)])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert re.fullmatch(r"error: dataset 'zips' cannot be built, so none of the 6 runs that need it started: "
                        r"train_data file \S+train.csv line 1202: column 'zip_code' is declared dtype: int but holds "
                        r"'M4J2K'; 300 rows do not parse; declare `dtype: str` for 'zip_code' .*", err), err
    assert "FAILED" not in captured.out
    assert not store.exists() and not (config / "data" / "zips").exists()
    from mdl_bench.kernel.paths import bench_home

    assert not (bench_home() / "checkpoints" / "zips").exists()


def test_a_suite_builds_each_dataset_once_before_its_runs(tmp_path):
    from mdl_bench.benchmark.suite import prepare_datasets

    config = zip_dataset(tmp_path / "config", zip_dtype="str")
    data = dict(TWO_ROWS, datasets=["zips"], expids=["Crocodile_test", "SharedBottom_test"], seeds=[1, 2])
    plan = load_suite(str(write_suite(tmp_path, data)), str(config)).plan(str(config))
    lines: list[str] = []
    prepare_datasets(plan.unique_runs(), out=lines.append)
    assert len(plan.unique_runs()) == 4
    assert [line.split(" in ")[0] for line in lines] == ["  Built dataset zips"]
    prepare_datasets(plan.unique_runs(), out=lines.append)  # built: reused, silently
    assert len(lines) == 1 and (config / "data" / "zips" / "feature_map.json").is_file()


def test_a_variant_with_other_data_blocks_builds_in_its_own_folder():
    """Two parts layouts of one dataset must not rebuild each other's folder between runs."""
    data = dict(TWO_ROWS, seeds=[1], expids=["Crocodile_test", {"expid": "Crocodile_test", "label": "parts",
                                                                "overrides": {"data_block_size": 500}}])
    whole, parts = (v.params["data_root"] for v in Suite(data).plan().variants)
    assert whole != parts and Path(parts).parent == Path(whole) / "variants"

# ---------------------------------------------------------------------------------------------- the store
def test_store_refuses_foreign_files_and_newer_schemas_and_leaves_them_untouched(tmp_path, capsys):
    suite = write_suite(tmp_path, TWO_ROWS)
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database")
    foreign = tmp_path / "foreign.sqlite"
    with contextlib.closing(sqlite3.connect(str(foreign))) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER)")
        conn.commit()
    newer = tmp_path / "newer.sqlite"
    Store(newer).close()
    with contextlib.closing(sqlite3.connect(str(newer))) as conn:  # closed: the WAL is folded into the file
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    for path, pattern in ((text, "is not an SQLite database"),
                          (foreign, r"SQLite database of another application .*tables: orders"),
                          (newer, rf"schema version {SCHEMA_VERSION + 1}, newer than this mdl-bench reads")):
        before = path.read_bytes()
        with pytest.raises(UserError, match=pattern):
            Store(path)
        assert main(["run", "--suite", str(suite), "--store", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and re.search(pattern, err) and "left untouched" in err
        assert path.read_bytes() == before
    with contextlib.closing(sqlite3.connect(str(newer))) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


def test_insert_is_one_transaction_and_never_duplicates(tmp_path):
    data = {"name": "one", "seeds": [1], "expids": ["Crocodile_test"]}
    suite = Suite(data, write_suite(tmp_path, data))
    run = suite.plan().runs[0]
    with Store(tmp_path / "s.sqlite") as db:
        bad = fake_record(run, {"AUC": 0.7})
        bad["metrics"]["test"]["AUC@S0"] = "not a number"  # fails after the runs row was inserted
        with pytest.raises(ValueError):
            db.insert_run(bad)
        assert db.stored_keys() == {} and not db.conn.execute("SELECT * FROM metrics").fetchall()
        first = db.insert_run(fake_record(run, {"AUC": 0.7}))
        assert first is not None and db.insert_run(fake_record(run, {"AUC": 0.8})) is None
        assert db.get_run(first)["metrics"]["test"] == {"AUC": 0.7}


# ---------------------------------------------------------------------------------------------- claims
@pytest.fixture
def claim_queue(tmp_path):
    """A ClaimQueue over three planned runs (no data built, nothing run), its store and its progress stream."""
    from mdl_bench.benchmark.suite.progress import SuiteOutcome, SuiteProgress
    from mdl_bench.benchmark.suite.scheduler import ClaimQueue

    data = {"name": "claims", "seeds": [1, 2, 3], "expids": ["Crocodile_test"]}
    plan = Suite(data, write_suite(tmp_path, data)).plan()
    stream = io.StringIO()
    with Store(tmp_path / "claims.sqlite") as db:
        progress = SuiteProgress(plan.runs, stream=stream)
        try:
            yield ClaimQueue(plan.runs, db, progress, SuiteOutcome(plan=plan, store_path=db.path)), plan.runs, stream
        finally:
            progress.close()


def claim_as(db: Store, run, pid: int) -> None:
    """Another process's claim of ``run`` on this host, written as Store.claim writes one."""
    db.conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?)",
                    run.key + (pid, socket.gethostname(), time.time()))


def claim_holder(db: Store, run) -> int | None:
    row = db.conn.execute("SELECT pid FROM claims WHERE config_hash=? AND seed=? AND code_fingerprint=?",
                          run.key).fetchone()
    return row[0] if row else None


def test_claim_queue_skips_a_run_stored_meanwhile(claim_queue):
    claims, runs, _ = claim_queue
    claims.db.insert_run(fake_record(runs[0], {"AUC": 0.7}))
    assert claims.take() is runs[1] and claim_holder(claims.db, runs[1]) == os.getpid()
    assert claims.outcome.stored_elsewhere == [runs[0]] and not claims.waiting
    assert claim_holder(claims.db, runs[0]) is None  # a stored run is never claimed


def test_claim_queue_waits_for_a_live_claim_then_skips_it_once_stored(claim_queue):
    claims, runs, stream = claim_queue
    other = os.getppid()  # alive, and not this process
    claim_as(claims.db, runs[0], other)
    assert claims.take() is runs[1] and claims.take() is runs[2] and claims.take() is None
    assert list(claims.waiting) == [runs[0].key] and claims.pending
    assert f"{runs[0].describe()} is running in process {other} on {socket.gethostname()}; waiting for it" \
        in stream.getvalue()
    claims.poll()  # still running there: still waited for, its claim untouched
    assert list(claims.waiting) == [runs[0].key] and claim_holder(claims.db, runs[0]) == other
    claims.db.insert_run(fake_record(runs[0], {"AUC": 0.7}))
    claims.poll()
    assert not claims.pending and claims.take() is None
    assert claims.outcome.stored_elsewhere == [runs[0]] and not claims.outcome.stored_now
    assert f"[1/3] {runs[0].describe()}: stored by another process" in stream.getvalue()


def test_claim_queue_takes_a_run_over_exactly_once_when_its_process_is_gone(claim_queue):
    claims, runs, _ = claim_queue
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        claim_as(claims.db, runs[0], other.pid)
        assert claims.take() is runs[1] and claims.take() is runs[2] and claims.take() is None
        claims.poll()
        assert list(claims.waiting) == [runs[0].key]  # alive: waited for
    finally:
        other.kill()
        other.wait()
    claims.poll()  # gone: queued again, with no claim held until it is taken
    assert not claims.waiting and claims.queued == [runs[0]] and claim_holder(claims.db, runs[0]) is None
    taken = [claims.take()]
    claims.poll()
    taken.append(claims.take())
    assert taken == [runs[0], None] and not claims.pending
    assert claim_holder(claims.db, runs[0]) == os.getpid()
    assert not claims.outcome.stored_elsewhere and not claims.outcome.failed


def test_claim_queue_releases_the_claim_of_a_failed_run(claim_queue):
    claims, runs, stream = claim_queue
    run = claims.take()
    claims.failed(run, "boom")
    assert claim_holder(claims.db, run) is None and claims.outcome.failed == [(run, "boom")]
    assert f"[1/3] FAILED {run.describe()}: boom (log: {run.log_file})" in stream.getvalue()


# ---------------------------------------------------------------------------------------------- kill safety
def _processes_with_env(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc to find the workers")
def test_sigkill_mid_suite_then_restart_stores_each_run_exactly_once(tiny, tmp_path):
    data = dict(TWO_ROWS, name="killme")
    path = write_suite(tmp_path, data)
    store = tmp_path / "results.sqlite"
    marker = f"MDL_BENCH_KILL_TEST={tmp_path}"
    env = dict(os.environ, MDL_BENCH_KILL_TEST=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "mdl_bench.benchmark.cli", "run", "--suite", str(path), "--store",
                             str(store), "--jobs", "2", "--no-leaderboard"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            with contextlib.suppress(sqlite3.OperationalError):  # the schema may not be committed yet
                if store.exists() and count_runs(store) >= 1:
                    break
            time.sleep(0.2)
        assert proc.poll() is None, "the suite ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # the suite process, while its two workers are training
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.time() + 30
    while _processes_with_env(marker) and time.time() < deadline:  # the workers notice and exit
        time.sleep(0.5)
    assert not _processes_with_env(marker)
    before = count_runs(store)
    assert 1 <= before < 4
    suite = load_suite(str(path))
    outcome, text, _ = run_quiet(suite, store)
    assert outcome.stored_before == before and len(outcome.stored_now) == 4 - before and not outcome.failed
    with contextlib.closing(sqlite3.connect(str(store))) as conn:
        keys = conn.execute("SELECT config_hash, seed, code_fingerprint FROM runs").fetchall()
        assert not conn.execute("SELECT * FROM claims").fetchall()
    assert sorted(keys) == sorted({r.key for r in suite.plan().runs}) and len(keys) == 4


def test_runs_stopped_at_the_epoch_cap_are_marked(tmp_path):
    """A run whose best epoch is its last allowed one (`epochs`) never saw early stopping: its row carries the cap
    mark in every format (md/html label, csv column) and a note says what it means."""
    from mdl_bench.benchmark.leaderboard import CAP_MARK

    data = dict(THREE_ROWS, seeds=[1, 2])
    suite = Suite(data, write_suite(tmp_path, data))
    store = tmp_path / "cap.sqlite"
    plan = suite.plan()
    with Store(store) as db:
        for run in plan.runs:
            record = fake_record(run, three_values(0, run.seed))
            cap = int(run.params["epochs"])
            # row A: both seeds peak at the cap; row B: seed 1 only; row C: before the cap
            record["best_epoch"] = {"A": cap, "B": cap if run.seed == 1 else cap - 1}.get(run.variant.label, cap - 1)
            assert db.insert_run(record) is not None
    board = build_board(suite, store=str(store))
    rows = {r.label: r for r in board.tables[0].rows}
    assert (rows["A"].capped, rows["B"].capped, rows["C"].capped) == (2, 1, 0)
    md, page = render(board, "md"), render(board, "html")
    assert f"| A {CAP_MARK} " in md and f"| B {CAP_MARK} " in md and f"| C {CAP_MARK}" not in md
    assert "last allowed one" in md and f"A {CAP_MARK}" in page
    table = {r["method"]: r["at_epoch_cap"] for r in csv.DictReader(io.StringIO(render(board, "csv")))
             if r["group"] != "Oracle"}
    assert table == {"A": "2", "B": "1", "C": "0"}
