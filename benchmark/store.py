"""The results store: one SQLite file, one row per finished run, written in one transaction.

Design:

* **Identity.** A run is ``(config_hash, seed, code_fingerprint)``: the hash of its fully resolved config (see
  :func:`config_hash` for the keys left out), the seed, and the fingerprint of the code that computes its numbers
  (:mod:`~mdl_bench.benchmark.codeid`: the model's file, the layers and base it uses, the shared run path).
  ``UNIQUE(config_hash, seed, code_fingerprint)`` makes a duplicate impossible, even when several processes
  finish the same run at once (the second insert is dropped). A run of the same config and seed made by other
  code is *outdated*: suites rerun it and the leaderboard never mixes it with current runs.
* **Crash safety.** Everything a run stores (its ``runs`` row and all its ``metrics`` rows) goes in one
  ``BEGIN IMMEDIATE ... COMMIT``; SQLite's journal makes that all-or-nothing, so a process killed at any moment
  (SIGKILL included) leaves either the whole run or nothing.
* **Several writers.** WAL journal mode (readers never block the writer) and a busy timeout, so several suites
  (or ``--jobs`` workers) can write to one store at once; each holds the write lock only for its short commit.
* **Not ours, never touched.** The file carries ``PRAGMA application_id`` (:data:`APPLICATION_ID`) and
  ``PRAGMA user_version`` (:data:`SCHEMA_VERSION`). A file that is not SQLite, an SQLite database of another
  application (any other id, or tables without our id), or one written by a newer schema is refused with a
  one-line :class:`UserError`; nothing is written to it.
* **Claims.** ``claims`` says which process is running which run, so a second suite on the same store waits for
  a run in flight elsewhere instead of doing it twice. A claim whose process is gone (killed) is stale and is
  taken over.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
import urllib.parse
import weakref
from pathlib import Path
from typing import Iterable

from mdl_bench.kernel.errors import UserError
from mdl_bench.kernel.paths import bench_home, check_writable_file, expand_path, pid_alive as _pid_alive
from .resolved import HASH_EXCLUDED, config_hash, hashed_config  # noqa: F401 (the store's identity of a config)

APPLICATION_ID = 0x4D444C42  # "MDLB"
SCHEMA_VERSION = 2  # 2: code_fingerprint in the identity of runs and claims (1 is migrated on open)
DEFAULT_STORE = "${MDL_BENCH_HOME}/results.sqlite"
BUSY_TIMEOUT_S = 120.0
SQLITE_MAGIC = b"SQLite format 3\x00"

# Keys of a resolved config that do not change a run's results, so they are left out of its hash:
#   verbose          - console output only;
#   model_id         - the run's file name; the suite derives it from the hash itself;
#   model_root       - where checkpoints and logs go;
#   data_root        - where the built dataset goes;
#   train_data, valid_data, test_data - where the raw files are (the data itself is identified by the dataset
#                      id and its config: feature columns, filters, the generator options of synthetic data);
#   rebuild_dataset  - forces a rebuild of the same data;
#   seed             - the seed is the second half of a run's identity, so the replicates of one config share
#                      a hash (the leaderboard averages over them);
#   models_from      - where a model outside the package was found (the model is identified by its name; its
#                      code is identified by the run's code_fingerprint, not by the config hash).
# Path keys stored with ${MDL_BENCH_HOME} in place of the working area, so a stored config reruns elsewhere.
PORTABLE_PATH_KEYS = ("model_root", "data_root", "train_data", "valid_data", "test_data")

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    config_hash TEXT NOT NULL,
    seed INTEGER NOT NULL,
    code_fingerprint TEXT NOT NULL DEFAULT '',
    expid TEXT NOT NULL,
    model TEXT NOT NULL,
    dataset_id TEXT NOT NULL,
    model_id TEXT NOT NULL,
    suite TEXT,
    config_json TEXT NOT NULL,
    best_epoch INTEGER,
    epochs_run INTEGER,
    train_seconds REAL,
    train_samples_per_second REAL,
    wall_seconds REAL,
    num_parameters INTEGER,
    peak_rss_bytes INTEGER,
    peak_rss_children_bytes INTEGER,
    peak_rss_scope TEXT,
    torch_threads INTEGER,
    versions_json TEXT NOT NULL,
    git_commit TEXT,
    hostname TEXT,
    checkpoint TEXT,
    log_file TEXT,
    result_json TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    UNIQUE (config_hash, seed, code_fingerprint)
);
CREATE TABLE metrics (
    run_id INTEGER NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    split TEXT NOT NULL,
    metric TEXT NOT NULL,
    domain TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, split, metric, domain)
);
CREATE TABLE claims (
    config_hash TEXT NOT NULL,
    seed INTEGER NOT NULL,
    code_fingerprint TEXT NOT NULL DEFAULT '',
    pid INTEGER NOT NULL,
    hostname TEXT NOT NULL,
    claimed_at REAL NOT NULL,
    PRIMARY KEY (config_hash, seed, code_fingerprint)
);
"""


def _create_statement(table: str, name: str | None = None) -> str:
    """``CREATE TABLE`` of ``table`` from :data:`_SCHEMA`, optionally under another name."""
    for statement in _SCHEMA.split(";"):
        if statement.strip().startswith(f"CREATE TABLE {table} ("):
            return statement.strip().replace(f"CREATE TABLE {table} (", f"CREATE TABLE {name or table} (", 1)
    raise KeyError(table)


# ---------------------------------------------------------------------------------------------- identity
def portable_config(params: dict) -> dict:
    """``params`` with the working area in path keys written as ``${MDL_BENCH_HOME}`` (see :func:`local_config`)."""
    home = str(bench_home())
    out = dict(params)
    for key in PORTABLE_PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and (value == home or value.startswith(home + os.sep)):
            out[key] = "${MDL_BENCH_HOME}" + value[len(home):]
    return out


def local_config(params: dict) -> dict:
    """Inverse of :func:`portable_config` under the current ``$MDL_BENCH_HOME``."""
    return {k: (expand_path(v) if k in PORTABLE_PATH_KEYS else v) for k, v in params.items()}


# ---------------------------------------------------------------------------------------------- provenance
def library_versions() -> dict:
    """Versions of what a run's numbers depend on."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("torch", "fuxictr", "numpy", "polars", "scipy", "mdl-bench"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


_GIT: dict | None = None


def git_state() -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` of the package's source tree.

    Only when the package is imported from a git checkout (an editable install): ``git rev-parse`` runs in the
    package's own folder and the answer counts only if that folder's parent is the repository's top level, so
    a wheel installed into a venv that happens to sit inside some clone does not report that clone's commit.
    """
    global _GIT
    if _GIT is None:
        import subprocess

        _GIT = {"commit": None, "dirty": None}
        source = Path(__file__).resolve().parent
        try:
            run = lambda *a: subprocess.run(["git", "-C", str(source), *a], capture_output=True, text=True,
                                            timeout=10)
            top = run("rev-parse", "--show-toplevel")
            if top.returncode == 0 and Path(top.stdout.strip()).resolve() == source.parent:
                head = run("rev-parse", "HEAD")
                if head.returncode == 0:
                    _GIT["commit"] = head.stdout.strip()
                    status = run("status", "--porcelain", "--untracked-files=no")
                    _GIT["dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            pass
    return dict(_GIT)


# ---------------------------------------------------------------------------------------------- the store
def store_path(path: str | os.PathLike | None) -> Path:
    """The store file: ``path`` (``~`` and ``${MDL_BENCH_HOME}`` expanded) or the default."""
    return Path(expand_path(str(path or DEFAULT_STORE))).resolve()


def check_store_writable(path) -> Path:
    """A one-line :class:`UserError` unless a results store could be written at ``path``; creates nothing (a suite
    asks this before it builds data or opens the store)."""
    return check_writable_file(store_path(path), "results store", "pass --store FILE in a writable folder (`runs` "
                                                                  "and `leaderboard` can still read a read-only store)")


_OPEN: "weakref.WeakSet[Store]" = weakref.WeakSet()  # stores this process has open
_USED: dict[Path, None] = {}  # every store path this process opened, in order


def release_all() -> None:
    """Close every store this process opened and leave no SQLite side files (``-wal``, ``-shm``) beside them.

    WAL mode lets several writers share a store while a command runs; at the end of a command the log is folded
    into the database and the store is switched back to SQLite's default rollback journal, which keeps no files
    beside it. A store another process still has open is left in WAL mode: that process tidies it when it ends.
    Called by the ``mdl-bench`` command when it ends, whatever the outcome."""
    for store in list(_OPEN):
        store.close()
    for path in list(_USED):
        tidy_side_files(path)
    _USED.clear()


def side_files(path: Path) -> list[Path]:
    """The SQLite side files beside a store that exist now."""
    return [p for p in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")) if p.exists()]


def tidy_side_files(path: Path) -> bool:
    """Checkpoint the WAL of the store at ``path`` and switch it to the rollback journal, which removes its
    ``-wal``/``-shm`` files; ``False`` (and nothing changed) when that is not possible now: another process has the
    store open, or the store or its folder is read-only."""
    path = Path(path)
    if not side_files(path):
        return True
    if not (path.is_file() and os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        return False
    try:
        conn = sqlite3.connect(str(path), timeout=0.5, isolation_level=None)
    except sqlite3.Error:
        return False
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return str(mode).lower() == "delete" and not side_files(path)


class Store:
    """An open results store. ``create=False`` refuses a missing file instead of creating it, and opens the store
    read-only (readers: ``runs``, ``leaderboard``, ``analyze``, ``rerun``), so a store on a read-only folder or
    mount can still be read."""

    def __init__(self, path: str | os.PathLike | None = None, create: bool = True):
        self.path = store_path(path)
        self.read_only = not create
        if not self.path.exists():
            if not create:
                raise UserError(f"no results store at {self.path}; run a suite into it first (e.g. `mdl-bench run "
                                f"--suite quick --store {self.path}`) or pass the right --store")
        elif self.path.is_dir():
            raise UserError(f"results store {self.path} is a folder; pass a file path to --store")
        else:
            self._check_magic()
        if not self.read_only:
            check_store_writable(self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = self._connect()
            _OPEN.add(self)
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path} is not a usable SQLite results store ({exc}); pass another --store") from None
        try:
            self.conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._check_or_create()
            self.conn.execute("PRAGMA foreign_keys = ON")
            _USED[self.path] = None  # ours (checked): tidied when the command ends; a refused file is never touched
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise UserError(f"{self.path} is not a usable SQLite results store ({exc}); pass another --store") from None
        except BaseException:
            self.conn.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        """Read-write; or read-only (``mode=ro``), and on a read-only medium, where SQLite cannot create the
        WAL index beside the file, ``immutable=1`` (nothing can be writing there)."""
        if not self.read_only:
            return sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        uri = "file:" + urllib.parse.quote(str(self.path)) + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            conn.close()
        return sqlite3.connect(uri + "&immutable=1", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)

    def _check_magic(self) -> None:
        with open(self.path, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
        if head and head != SQLITE_MAGIC:
            raise UserError(f"{self.path} is not an SQLite database, so not an mdl-bench results store; it was left "
                            f"untouched - pass another --store")

    def _ids(self) -> tuple[int, int, list[str]]:
        app = self.conn.execute("PRAGMA application_id").fetchone()[0]
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        tables = [r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                                  "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        return app, version, tables

    def _refuse_foreign(self, app: int, version: int, tables: list[str]) -> None:
        if app != APPLICATION_ID:
            what = f"application_id {app:#x}" if app else "no mdl-bench application_id"
            raise UserError(f"{self.path} is an SQLite database of another application ({what}, tables: "
                            f"{', '.join(tables[:6]) or 'none'}); it was left untouched - pass another --store")
        if version > SCHEMA_VERSION:
            raise UserError(f"results store {self.path} has schema version {version}, newer than this mdl-bench "
                            f"reads ({SCHEMA_VERSION}); upgrade mdl-bench or pass another --store (the file was "
                            f"left untouched)")

    def _check_or_create(self) -> None:
        app, version, tables = self._ids()
        if self.read_only:  # check only: a reader never creates or converts anything
            if app == 0 and not tables:
                raise UserError(f"{self.path} is an empty SQLite file, not a results store yet; run a suite into it "
                                f"first or pass the right --store")
            if app == APPLICATION_ID and version == 1:
                # read schema 1 without converting it: its runs seen through a view, code unknown (outdated)
                self.conn.execute("CREATE TEMP VIEW runs AS SELECT *, '' AS code_fingerprint FROM main.runs")
                return
            if app != APPLICATION_ID or version != SCHEMA_VERSION:
                self._refuse_foreign(app, version, tables)
                raise UserError(f"results store {self.path} has schema version {version}, which this mdl-bench "
                                f"cannot read; pass another --store")
            return
        if app == APPLICATION_ID and version == SCHEMA_VERSION:
            self.conn.execute("PRAGMA journal_mode = WAL")
            return
        if app != 0 or tables:
            self._refuse_foreign(app, version, tables)
            if version == 1:
                self._migrate_from_1()
                return
            raise UserError(f"results store {self.path} has schema version {version}, which this mdl-bench cannot "
                            f"upgrade; pass another --store")
        # An empty database (new file): create the schema, unless another process is doing it right now.
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            app, version, tables = self._ids()
            if app == 0 and not tables:
                for statement in _SCHEMA.split(";"):  # not executescript: it would COMMIT first
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self.conn.execute("INSERT INTO meta VALUES ('created_at', ?), ('created_by', ?)",
                                  (str(time.time()), json.dumps(library_versions())))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        app, version, tables = self._ids()
        if app != APPLICATION_ID or version != SCHEMA_VERSION:
            self._refuse_foreign(app, version, tables)
        self.conn.execute("PRAGMA journal_mode = WAL")

    def _migrate_from_1(self) -> None:
        """Schema 1 -> 2 in one transaction: ``runs`` and ``claims`` gain ``code_fingerprint`` in their keys.

        Runs of schema 1 get ``''`` (code unknown): outdated for every current fingerprint, so suites rerun them and
        the leaderboard marks them, but they stay readable (``runs``, ``rerun``). Run ids, and so the ``metrics``
        rows, are kept. Foreign keys are off on this connection until the schema is checked, so rebuilding
        ``runs`` does not cascade into ``metrics``."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            if self.conn.execute("PRAGMA user_version").fetchone()[0] == 1:  # not migrated meanwhile
                cols = [r[1] for r in self.conn.execute("PRAGMA table_info(runs)")]
                self.conn.execute(_create_statement("runs", "runs_v2"))
                self.conn.execute(f"INSERT INTO runs_v2 ({', '.join(cols)}) SELECT {', '.join(cols)} FROM runs")
                self.conn.execute("DROP TABLE runs")
                self.conn.execute("ALTER TABLE runs_v2 RENAME TO runs")
                self.conn.execute("DROP TABLE claims")  # claims are transient: in-flight runs of live processes
                self.conn.execute(_create_statement("claims"))
                self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('migrated_from_1_at', ?)", (str(time.time()),))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("PRAGMA journal_mode = WAL")

    def close(self) -> None:
        self.conn.close()
        _OPEN.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -------------------------------------------------------------------------------------- reading
    def stored_keys(self) -> dict[tuple[str, int, str], int]:
        """``{(config_hash, seed, code_fingerprint): run_id}`` of every stored run."""
        return {(h, s, c): r for r, h, s, c in
                self.conn.execute("SELECT run_id, config_hash, seed, code_fingerprint FROM runs")}

    def stored_by_config(self) -> dict[tuple[str, int], list[tuple[int, str, float]]]:
        """``{(config_hash, seed): [(run_id, code_fingerprint, finished_at), ...]}``, newest first: every code
        revision a config and seed was run with (to find outdated runs)."""
        out: dict[tuple[str, int], list[tuple[int, str, float]]] = {}
        for r, h, s, c, t in self.conn.execute("SELECT run_id, config_hash, seed, code_fingerprint, finished_at "
                                               "FROM runs ORDER BY finished_at DESC, run_id DESC"):
            out.setdefault((h, s), []).append((r, c, t))
        return out

    def run_id(self, config_hash: str, seed: int, code_fingerprint: str) -> int | None:
        row = self.conn.execute("SELECT run_id FROM runs WHERE config_hash=? AND seed=? AND code_fingerprint=?",
                                (config_hash, int(seed), code_fingerprint)).fetchone()
        return row[0] if row else None

    def get_run(self, run_id: int) -> dict:
        """A stored run: every column (JSON columns decoded) and ``metrics[split][metric@domain or metric]``."""
        cur = self.conn.execute("SELECT * FROM runs WHERE run_id=?", (int(run_id),))
        row = cur.fetchone()
        if row is None:
            raise UserError(f"no run {run_id} in {self.path}; `mdl-bench runs --store {self.path}` lists the stored runs")
        run = dict(zip([c[0] for c in cur.description], row))
        for key in ("config_json", "versions_json", "result_json"):
            run[key[:-5]] = json.loads(run.pop(key))
        run["metrics"] = self.metrics_of([run_id])[int(run_id)]
        return run

    def metrics_of(self, run_ids: Iterable[int]) -> dict[int, dict[str, dict[str, float]]]:
        """``{run_id: {split: {"AUC": v, "AUC@S0": v, ...}}}``."""
        ids = [int(r) for r in run_ids]
        out: dict[int, dict[str, dict[str, float]]] = {r: {} for r in ids}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for run_id, split, metric, domain, value in self.conn.execute(
                    f"SELECT run_id, split, metric, domain, value FROM metrics WHERE run_id IN ({marks})", chunk):
                name = metric if domain == "Overall" else f"{metric}@{domain}"
                out[run_id].setdefault(split, {})[name] = float("nan") if value is None else value
        return out

    def results_of(self, run_ids: Iterable[int]) -> dict[int, dict]:
        """``{run_id: result}``: each run's stored result (test counts and bootstrap replicates included)."""
        ids = [int(r) for r in run_ids]
        out: dict[int, dict] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for run_id, text in self.conn.execute(
                    f"SELECT run_id, result_json FROM runs WHERE run_id IN ({','.join('?' * len(chunk))})", chunk):
                out[run_id] = json.loads(text)
        return out

    def list_runs(self, run_ids: Iterable[int] | None = None) -> list[dict]:
        sql = ("SELECT run_id, expid, model, dataset_id, seed, config_hash, code_fingerprint, git_commit, suite, "
               "best_epoch, epochs_run, train_seconds, wall_seconds, finished_at, "
               "json_extract(config_json, '$.models_from') AS models_from, "
               "json_extract(config_json, '$.epochs') AS epochs FROM runs")
        if run_ids is None:
            cur = self.conn.execute(sql + " ORDER BY run_id")
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, r)) for r in cur]
        ids = sorted({int(r) for r in run_ids})
        out: list[dict] = []
        for start in range(0, len(ids), 500):  # SQLite caps the number of bound variables
            chunk = ids[start:start + 500]
            cur = self.conn.execute(sql + f" WHERE run_id IN ({','.join('?' * len(chunk))}) ORDER BY run_id", chunk)
            cols = [c[0] for c in cur.description]
            out += [dict(zip(cols, r)) for r in cur]
        return out

    # -------------------------------------------------------------------------------------- claims
    def claim(self, config_hash: str, seed: int, code_fingerprint: str) -> dict | None:
        """Claim a run for this process. Returns ``None`` when claimed (or already ours), else the live claim of
        another process. A claim of a process that no longer exists (on this host) is taken over."""
        me, host = os.getpid(), socket.gethostname()
        key = (config_hash, int(seed), code_fingerprint)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            row = self.conn.execute("SELECT pid, hostname, claimed_at FROM claims WHERE config_hash=? AND seed=? "
                                    "AND code_fingerprint=?", key).fetchone()
            if row is not None:
                pid, other_host, claimed_at = row
                live = (pid != me or other_host != host) and (
                    _pid_alive(pid) if other_host == host else time.time() - claimed_at < 24 * 3600)
                if live:
                    self.conn.execute("COMMIT")
                    return {"pid": pid, "hostname": other_host, "claimed_at": claimed_at}
            self.conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?)", key + (me, host, time.time()))
            self.conn.execute("COMMIT")
            return None
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def release(self, config_hash: str, seed: int, code_fingerprint: str) -> None:
        """Drop this process's claim (a run that failed); stored runs drop theirs in the same transaction."""
        self.conn.execute("DELETE FROM claims WHERE config_hash=? AND seed=? AND code_fingerprint=? AND pid=? AND "
                          "hostname=?", (config_hash, int(seed), code_fingerprint, os.getpid(), socket.gethostname()))

    # -------------------------------------------------------------------------------------- writing
    def insert_run(self, record: dict) -> int | None:
        """Store one finished run and all its metrics in ONE transaction; ``None`` if that (hash, seed, code) is
        stored already (then nothing is written).

        ``record`` holds the ``runs`` columns (``config``, ``versions`` and ``result`` as objects) and
        ``metrics``: ``{split: {"AUC": v, "AUC@S0": v, ...}}``.
        """
        cols = dict(record)
        metrics = cols.pop("metrics")
        for key in ("config", "versions", "result"):
            cols[f"{key}_json"] = json.dumps(cols.pop(key), sort_keys=True, default=str)
        names = list(cols)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            try:
                cur = self.conn.execute(f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                                        [cols[n] for n in names])
            except sqlite3.IntegrityError:
                self.conn.execute("ROLLBACK")
                return None
            run_id = cur.lastrowid
            rows = []
            for split, values in metrics.items():
                for name, value in values.items():
                    metric, _, domain = name.partition("@")
                    value = None if value is None or value != value else float(value)
                    rows.append((run_id, split, metric, domain or "Overall", value))
            self.conn.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)", rows)
            self.conn.execute("DELETE FROM claims WHERE config_hash=? AND seed=? AND code_fingerprint=?",
                              (cols["config_hash"], int(cols["seed"]), cols.get("code_fingerprint", "")))
            self.conn.execute("COMMIT")
            return run_id
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
