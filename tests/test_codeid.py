"""Run identity that knows the code: code fingerprints per model, outdated runs rerun by suites and
marked by the leaderboard and ``runs``, the schema-1 store migrated, ``rerun`` telling whether code changed, and
the model contract's checks surviving ``python -O``."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mdl_bench.model_zoo as zoo
from mdl_bench.benchmark import codeid
from mdl_bench.benchmark.cli import main
from mdl_bench.benchmark.codeid import code_fingerprint, code_hash
from mdl_bench.benchmark.leaderboard import build_board, render
from mdl_bench.benchmark.store import Store
from mdl_bench.benchmark.suite import Suite, run_suite


def cli(*argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return code, out.getvalue()


# ------------------------------------------------------------------------------------------------ fingerprints
def test_code_hash_ignores_docstrings_comments_and_layout_but_not_code():
    base = 'def f(x):\n    """Doc."""\n    return x + 1\n'
    assert code_hash(base) == code_hash('def f(x):  # why\n    """Another doc."""\n\n    return (x +\n 1)\n')
    assert code_hash(base) == code_hash("def f(x):\n    return x + 1\n")
    assert code_hash(base) != code_hash('def f(x):\n    """Doc."""\n    return x + 2\n')
    assert code_hash(base) != code_hash('def f(y):\n    """Doc."""\n    return y + 1\n')


def test_fingerprint_covers_the_model_its_layers_and_the_run_path_only():
    pep, star = code_fingerprint("PEPNet"), code_fingerprint("STAR")
    assert "mdl_bench.model_zoo.PEPNet" in pep.files and "mdl_bench.model_zoo.STAR" not in pep.files
    assert "mdl_bench.model_zoo.layers.gate_nu" in pep.files  # PEPNet's Gate NU
    assert "mdl_bench.model_zoo.layers.partitioned_norm" in star.files
    assert "mdl_bench.model_zoo.layers.partitioned_norm" not in pep.files  # by name, not the whole layers package
    for fp in (pep, star):
        assert "mdl_bench.model_zoo.base" in fp.files and "mdl_bench.benchmark.runner" in fp.files
        assert "mdl_bench.benchmark.data.loader" in fp.files
        # machinery above the run, and modules whose effect is hashed elsewhere, never count
        for module in ("mdl_bench.benchmark.suite", "mdl_bench.benchmark.store", "mdl_bench.benchmark.leaderboard",
                       "mdl_bench.benchmark.config", "mdl_bench.benchmark.cli"):
            assert module not in fp.files
        assert not any(m.startswith("mdl_bench.benchmark.analysis") for m in fp.files)
    assert pep.digest != star.digest and len(pep.digest) == 16


MODEL_FILE = '''
"""A SharedBottom under another name, to edit in tests."""
from mdl_bench.model_zoo.SharedBottom import SharedBottom


class EditMe(SharedBottom):
    """Nothing new."""
'''

CONFIG = """
EditMe_test:
    model: EditMe
    dataset_id: tiny_synth
    batch_size: 512
    learning_rate: 1.e-2
    embedding_dim: 4
    epochs: 1
    bottom_hidden_units: [16, 8]
    tower_hidden_units: [8]
"""


@pytest.fixture
def edit_me(tmp_path, monkeypatch, tiny):
    """A user model folder (model file + config) and a suite of that model and a built-in one."""
    monkeypatch.setenv(zoo.ENV_VAR, "")
    monkeypatch.setattr(zoo, "_state", zoo._Registry())
    codeid.clear_cache()
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "EditMe.py").write_text(MODEL_FILE)
    (folder / "model_config.yaml").write_text(CONFIG)
    suite_file = folder / "s.yaml"
    suite_file.write_text(textwrap.dedent(f"""
        name: edits
        models_from: [{folder}]
        seeds: [1]
        overrides: {{epochs: 1}}
        expids: [EditMe_test, SharedBottom_test]
        store: {tmp_path / 'results.sqlite'}
    """))
    yield folder, suite_file, tmp_path / "results.sqlite"
    codeid.clear_cache()


def _suite(path: Path) -> Suite:
    from mdl_bench.benchmark.suite import load_suite

    codeid.clear_cache()
    return load_suite(str(path), str(path.parent))


def test_changed_model_code_outdates_its_runs_only(edit_me):
    folder, suite_file, store = edit_me
    suite = _suite(suite_file)
    quiet = io.StringIO()
    outcome = run_suite(suite, config_dir=str(folder), out=lambda *a: None, progress_stream=quiet)
    assert len(outcome.stored_now) == 2 and not outcome.failed
    first = {v.label: v.code for v in _suite(suite_file).plan(str(folder)).variants}

    # a comment and a docstring: no code change, nothing outdated
    (folder / "EditMe.py").write_text(MODEL_FILE.replace('"""Nothing new."""', '"""Still nothing."""  # why'))
    assert {v.label: v.code for v in _suite(suite_file).plan(str(folder)).variants} == first

    # a change of code: EditMe's runs are outdated, SharedBottom's are not
    (folder / "EditMe.py").write_text(MODEL_FILE + "    scale = 2.0\n")
    now = {v.label: v.code for v in _suite(suite_file).plan(str(folder)).variants}
    changed = [label for label in now if now[label] != first[label]]
    assert len(changed) == 1 and "EditMe" in changed[0]
    lines = []
    run_suite(_suite(suite_file), config_dir=str(folder), dry_run=True, out=lines.append)
    assert "1 to run, 1 of them outdated" in lines[0]
    assert sum("outdated (run 1, code" in line for line in lines) == 1

    # the leaderboard shows the outdated row with its mark and a note, never mixed with current runs
    board = build_board(_suite(suite_file), config_dir=str(folder))
    md = render(board, "md")
    rows = {r.label: r for t in board.tables for r in t.rows}
    assert rows[changed[0]].outdated and rows[changed[0]].code == first[changed[0]]
    assert not any(r.outdated for label, r in rows.items() if label != changed[0])
    assert f"{changed[0]} †" in md and "come from runs of older code" in md
    table = list(csv.DictReader(io.StringIO(render(board, "csv"))))
    assert {r["method"]: r["outdated"] for r in table if r["group"] != "Oracle"} == {
        changed[0]: "1", next(label for label in rows if label != changed[0]): "0"}

    # `run` (a fresh process, as a user runs it) reruns the outdated run alone
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", "import sys; from mdl_bench.benchmark.cli import main; "
                           "sys.exit(main(sys.argv[1:]))", "run", "--suite", str(suite_file), "--config", str(folder)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 to run, 1 of them outdated" in proc.stdout
    assert "1 runs stored now (1 of them in place of outdated runs), 1 were stored already" in proc.stdout
    assert " †" not in proc.stdout.split("Leaderboard")[-1]

    # `runs` lists both revisions of EditMe, the old one marked outdated
    code, text = cli("runs", "--suite", str(suite_file), "--config", str(folder))
    assert code == 0
    lines = [line for line in text.splitlines() if "EditMe_test" in line]
    assert len(lines) == 2 and sum(" outdated " in line for line in lines) == 1
    assert sum(" current " in line for line in lines) == 1


V1_RUNS = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE runs (run_id INTEGER PRIMARY KEY AUTOINCREMENT, config_hash TEXT NOT NULL, seed INTEGER NOT NULL,
    expid TEXT NOT NULL, model TEXT NOT NULL, dataset_id TEXT NOT NULL, model_id TEXT NOT NULL, suite TEXT,
    config_json TEXT NOT NULL, best_epoch INTEGER, epochs_run INTEGER, train_seconds REAL,
    train_samples_per_second REAL, wall_seconds REAL, num_parameters INTEGER, peak_rss_bytes INTEGER,
    peak_rss_children_bytes INTEGER, peak_rss_scope TEXT, torch_threads INTEGER, versions_json TEXT NOT NULL,
    git_commit TEXT, hostname TEXT, checkpoint TEXT, log_file TEXT, result_json TEXT NOT NULL,
    started_at REAL NOT NULL, finished_at REAL NOT NULL, UNIQUE (config_hash, seed));
CREATE TABLE metrics (run_id INTEGER NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, split TEXT NOT NULL,
    metric TEXT NOT NULL, domain TEXT NOT NULL, value REAL, PRIMARY KEY (run_id, split, metric, domain));
CREATE TABLE claims (config_hash TEXT NOT NULL, seed INTEGER NOT NULL, pid INTEGER NOT NULL,
    hostname TEXT NOT NULL, claimed_at REAL NOT NULL, PRIMARY KEY (config_hash, seed));
"""


def test_schema_1_store_is_migrated_and_its_runs_are_outdated(tmp_path, tiny):
    from mdl_bench.benchmark.store import APPLICATION_ID, SCHEMA_VERSION, portable_config

    suite = Suite({"name": "old", "seeds": [1], "expids": ["SharedBottom_test"]}, tmp_path / "old.yaml")
    run = suite.plan().runs[0]
    path = tmp_path / "v1.sqlite"
    with contextlib.closing(sqlite3.connect(str(path))) as conn:
        conn.executescript(V1_RUNS)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO runs (config_hash, seed, expid, model, dataset_id, model_id, config_json, "
                     "versions_json, result_json, started_at, finished_at, torch_threads) VALUES "
                     "(?, 1, 'SharedBottom_test', 'SharedBottom', 'tiny_synth', 'm', ?, '{}', '{}', 0, 0, 1)",
                     (run.variant.config_hash, json.dumps(portable_config(run.params))))
        conn.execute("INSERT INTO metrics VALUES (1, 'test', 'AUC', 'Overall', 0.6)")
        conn.commit()
    # a reader (leaderboard, runs) converts nothing: it sees the runs with code unknown, so outdated
    board = build_board(suite, store=str(path))
    assert board.tables[0].rows[0].outdated and board.tables[0].rows[0].run_ids == {1: 1}
    with Store(path, create=False) as db:
        assert db.stored_keys() == {(run.variant.config_hash, 1, ""): 1}
    with contextlib.closing(sqlite3.connect(str(path))) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    # a writer migrates it
    with Store(path) as db:
        assert db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        assert db.stored_keys() == {(run.variant.config_hash, 1, ""): 1}
        assert db.metrics_of([1]) == {1: {"test": {"AUC": 0.6}}}
    board = build_board(suite, store=str(path))
    row = board.tables[0].rows[0]
    assert row.outdated and row.run_ids == {1: 1} and row.values["AUC"] == {1: 0.6}
    assert "SharedBottom †" in render(board, "md") or f"{row.label} †" in render(board, "md")
    lines = []
    run_suite(suite, store=str(path), dry_run=True, out=lines.append)
    assert "1 of them outdated" in lines[0] and "code unknown" in lines[1]


# ------------------------------------------------------------------------------------------------ python -O
BROKEN = '''
import torch
from mdl_bench.model_zoo.SharedBottom import SharedBottom


class DeadWeight(SharedBottom):
    """A parameter that nothing uses: only the gradient check, an explicit raise, catches it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.unused = torch.nn.Parameter(torch.zeros(3))
'''


def test_contract_checks_raise_under_python_O(tmp_path, tiny):
    (tmp_path / "DeadWeight.py").write_text(BROKEN)
    (tmp_path / "model_config.yaml").write_text(CONFIG.replace("EditMe", "DeadWeight"))
    proc = subprocess.run([sys.executable, "-O", "-c", "import sys; from mdl_bench.benchmark.cli import main; "
                           "sys.exit(main(sys.argv[1:]))", "check-model", "DeadWeight", "--models-from",
                           str(tmp_path), "--config", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode != 0, proc.stdout
    assert "FAIL  gradients" in proc.stdout and "unused gets no gradient" in proc.stdout
    assert "DeadWeight: FAILED (gradients)" in proc.stdout
