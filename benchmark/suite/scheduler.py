"""Running a suite: the checks before the first run, then its pending runs one after another in this process
or in a pool of worker processes, each run claimed in the store so that concurrent suites never run it twice."""
from __future__ import annotations

import os
import time

from mdl_bench.kernel.errors import UserError
from ..procs import die_with_parent
from ..store import Store, check_store_writable, store_path
from .execute import execute_run
from .plan import Plan, PlannedRun, Suite
from .progress import SuiteOutcome, SuiteProgress, result_line


def run_suite(suite: Suite, config_dir=None, store: str | None = None, jobs: int = 1,
              extra_overrides: dict | None = None, dry_run: bool = False, out=print,
              progress_stream=None, poll_seconds: float = 2.0) -> SuiteOutcome:
    """Run every run of ``suite`` that the store does not hold yet. Checks everything before the first run."""
    if not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"--jobs must be a positive integer, got {jobs!r}")
    plan = suite.plan(config_dir, extra_overrides, strict=True)
    if dry_run and not store_path(store or suite.store).exists():  # a dry run creates nothing
        for run in plan.unique_runs():
            out(f"  {run.variant.short_hash} seed {run.seed:<6} {run.variant.label:<34} {run.expid:<32} to run")
        out(f"Suite {suite.name}: {_size(plan)}, {len(plan.unique_runs())} runs, none stored yet (no store "
            f"at {store_path(store or suite.store)})")
        return SuiteOutcome(plan=plan, store_path=store_path(store or suite.store))
    if not dry_run:
        from ..runner import check_paths

        for params in {(r.params["model_root"], r.params["dataset_id"], r.params.get("data_root")): r.params
                       for r in plan.unique_runs()}.values():
            check_paths(params)  # before the store is made or a run starts: a folder no run could write
        check_store_writable(store or suite.store)
        # a data error is the dataset's, not each run's: one error, before any run starts
        stored = _stored_keys(store or suite.store)
        prepare_datasets([r for r in plan.unique_runs() if r.key not in stored], out=out)
    db = Store(store or suite.store, create=not dry_run)  # a dry run only reads (a read-only store too)
    outcome = SuiteOutcome(plan=plan, store_path=db.path)
    try:
        plan.catch_up(db)  # a tuning suite: each row's trials as far as the store has them, and the next one
        stored = db.stored_keys()
        by_config = db.stored_by_config()
        unique = plan.unique_runs()
        pending = [r for r in unique if r.key not in stored]
        outdated = {r.key: by_config[r.key[:2]][0] for r in pending if r.key[:2] in by_config}
        outcome.stored_before = len(unique) - len(pending)
        outcome.outdated = [r for r in pending if r.key in outdated]
        stale = (f", {len(outdated)} of them outdated (stored by other code: "
                 f"{', '.join(sorted({r.variant.label for r in outcome.outdated}))})" if outdated else "")
        out(f"Suite {suite.name}: {_size(plan)}, {len(unique)} runs ({outcome.stored_before} stored "
            f"already, {len(pending)} to run{stale}{f', {jobs} at a time' if jobs > 1 and pending else ''}); "
            f"store {db.path}")
        if dry_run:
            for run in unique:
                state = (f"stored (run {stored[run.key]})" if run.key in stored else
                         f"outdated (run {outdated[run.key][0]}, code {outdated[run.key][1][:8] or 'unknown'} -> "
                         f"{run.variant.code[:8]}): to run" if run.key in outdated else "to run")
                out(f"  {run.variant.short_hash} seed {run.seed:<6} {run.variant.label:<34} {run.expid:<32} {state}")
            return outcome
        if not pending:
            return outcome
        progress = SuiteProgress(pending, stream=progress_stream)
        claims = ClaimQueue(pending, db, progress, outcome, plan)
        try:
            if jobs == 1:
                _run_here(claims, suite.name, poll_seconds)
            else:
                _run_workers(claims, suite.name, jobs, poll_seconds)
        finally:
            progress.close()
    finally:
        db.close()
    return outcome


def _size(plan: Plan) -> str:
    """``N rows``; a tuning suite's rows are its searches, whose trials are planned as they go."""
    if plan.tuning:
        return f"{len(plan.tuning)} rows (searches; their next trials are planned as earlier ones end)"
    return f"{len(plan.variants)} rows"


def _stored_keys(store: str | None) -> dict:
    """The stored runs of an existing store; ``{}`` (and no file created) when there is none yet."""
    path = store_path(store)
    if not path.exists():
        return {}
    with Store(path, create=False) as db:
        return db.stored_keys()


def prepare_datasets(runs: list, out=print) -> None:
    """Check (or build) each dataset the ``runs`` need, once, before the first run starts.

    A dataset that cannot be built stops the suite with one :class:`UserError` naming the dataset, the number of
    its runs and the cause; nothing is stored. Datasets are told apart by their build folder (a variant that
    changes how data is built has its own, see :meth:`Suite._separate_data_variant`).
    """
    from ..data.build import ensure_dataset

    needed: dict[tuple, list] = {}
    for run in runs:
        needed.setdefault((run.params.get("data_root"), run.params.get("dataset_id")), []).append(run)
    for (_, dataset_id), of_dataset in needed.items():
        try:
            ensure_dataset(of_dataset[0].params, log=lambda message: out(f"  {message}"))
        except UserError as exc:
            runs_text = f"none of the {len(of_dataset)} runs that need it started" if len(of_dataset) > 1 else \
                "the run that needs it did not start"
            raise UserError(f"dataset {dataset_id!r} cannot be built, so {runs_text}: {exc}") from None


class ClaimQueue:
    """The pending runs of a suite, handed out only once this process holds their claim in the store.

    The one place of the claim rules both drivers follow: a run stored meanwhile is skipped; a run another live
    process claimed is waited for (:meth:`poll`) and skipped once stored, or put back in line when that process
    is gone. A run taken (:meth:`take`) ends in :meth:`finished` (the store drops its claim with the run) or
    :meth:`failed` (the claim is released).
    """

    def __init__(self, pending: list, db: Store, progress: SuiteProgress, outcome: SuiteOutcome,
                 plan: Plan | None = None):
        self.queued: list[PlannedRun] = list(pending)
        self.waiting: dict[tuple, PlannedRun] = {}
        self.db, self.progress, self.outcome, self.plan = db, progress, outcome, plan

    def _next_trials(self, run: PlannedRun) -> None:
        """A tuning trial ended (stored, or failed): its row's next trial joins the queue."""
        trial = run.variant.trial
        if trial is None or self.plan is None or not self.plan.tuning:
            return
        failed = {r.key for r, _ in self.outcome.failed}
        new = self.plan.catch_up(self.db, failed, rows=[trial.row])
        self.queued += new
        self.progress.add(new)

    @property
    def pending(self) -> bool:
        """Whether runs are left to take or to wait for."""
        return bool(self.queued or self.waiting)

    def take(self) -> PlannedRun | None:
        """The next queued run, now claimed by this process; None when none is left to start now (only waited
        runs, or none at all).

        A tuning trial is planned only once every earlier trial of its row is stored (or has failed here): the
        sampler and the pruner depend on them, so rows run side by side under ``--jobs`` but each row's trials in
        order, and the search is the same as one run at a time."""
        while self.queued:
            run = self.queued.pop(0)
            if self.db.run_id(*run.key) is not None:
                self._stored_elsewhere(run, None)
                continue
            other = self.db.claim(*run.key)
            if other is None:
                return run
            self.waiting[run.key] = run
            self.progress.write(f"{run.describe()} is running in process {other['pid']} on {other['hostname']}; "
                                f"waiting for it")
        return None

    def poll(self) -> None:
        """Look at the waited runs: one stored meanwhile is skipped, one whose process is gone is queued again."""
        for key, run in list(self.waiting.items()):
            if self.db.run_id(*key) is not None:
                del self.waiting[key]
                self._stored_elsewhere(run, f"{self._index(run)} {run.describe()}: stored by another process")
            elif self.db.claim(*key) is None:  # its process is gone: the claim just taken over is ours
                del self.waiting[key]
                # dropped again, so that a claim is only held while its run runs; take() claims it like any other
                self.db.release(*key)
                self.queued.append(run)

    def finished(self, run: PlannedRun, run_id: int | None, result) -> None:
        """A taken run ran: stored now, or (``run_id`` None) stored by another process while it ran."""
        (self.outcome.stored_now if run_id is not None else self.outcome.stored_elsewhere).append(run)
        self.progress.finished(run.key, result_line(self.progress.runs[run.key][0], self.progress.count, run,
                                                    run_id, result))
        self._next_trials(run)

    def failed(self, run: PlannedRun, message: str) -> None:
        """A taken run failed: its claim is released and the failure reported; the suite goes on."""
        self.db.release(*run.key)
        self.outcome.failed.append((run, message))
        self.progress.finished(run.key, f"{self._index(run)} FAILED {run.describe()}: {message} "
                                        f"(log: {run.log_file})")
        self._next_trials(run)

    def abandon(self, message: str) -> None:
        """The queued runs will not run (no worker left): each is a failure with ``message``, not reported."""
        self.outcome.failed += [(run, message) for run in self.queued]
        self.queued.clear()

    def _stored_elsewhere(self, run: PlannedRun, line: str | None) -> None:
        self.outcome.stored_elsewhere.append(run)
        self.progress.finished(run.key, line)
        self._next_trials(run)

    def _index(self, run: PlannedRun) -> str:
        return f"[{self.progress.runs[run.key][0]}/{self.progress.count}]"


def _error_message(exc: Exception) -> str:
    """A failed run's message: a user error as it is, anything else with its type."""
    return str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"


def _run_here(claims: ClaimQueue, suite_name: str, poll_seconds: float) -> None:
    """Sequential runs in this process; runs claimed by another live process are waited for, then skipped."""
    while claims.pending:
        run = claims.take()
        if run is None:  # only waited runs (or trials after them) are left
            time.sleep(poll_seconds)
            claims.poll()
            continue
        claims.progress.started(run.key)
        try:
            run_id, result = execute_run(run, claims.db, suite_name, step_callback=lambda info, k=run.key:
                                         claims.progress.step(k, info))
        except KeyboardInterrupt:
            claims.db.release(*run.key)
            raise
        except Exception as exc:  # a failing run is reported; the suite goes on with the others
            claims.failed(run, _error_message(exc))
            continue
        claims.finished(run, run_id, result)


# ------------------------------------------------------------------------------------------------ workers
def _worker_main(worker_id: int, tasks, results, store_file: str, suite_name: str, threads: int,
                 parent_pid: int, home: str | None) -> None:
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if home:
        os.environ["MDL_BENCH_HOME"] = home
    die_with_parent(parent_pid)
    import torch

    torch.set_num_threads(threads)
    db = Store(store_file)
    try:
        while True:
            run = tasks.get()
            if run is None:
                return
            results.put(("start", worker_id, run.key, None))
            try:
                run_id, result = execute_run(run, db, suite_name, step_callback=lambda info, k=run.key:
                                             results.put(("step", worker_id, k, info)))
                results.put(("done", worker_id, run.key, (run_id, result)))
            except KeyboardInterrupt:
                return
            except Exception as exc:
                results.put(("error", worker_id, run.key, _error_message(exc)))
    finally:
        db.close()


def _apply_message(message: tuple, claims: ClaimQueue, in_flight: dict, busy: dict) -> None:
    """One message from a worker: its run started, took a step, finished or failed."""
    kind, wid, key, payload = message
    if kind == "start":
        busy[wid] = key
        claims.progress.started(key)
    elif kind == "step":
        claims.progress.step(key, payload)
    elif kind == "done":
        busy.pop(wid, None)
        claims.finished(in_flight.pop(key), *payload)
    elif kind == "error":
        busy.pop(wid, None)
        claims.failed(in_flight.pop(key), payload)


def _reap_dead_workers(workers: dict, claims: ClaimQueue, in_flight: dict, busy: dict) -> None:
    """A worker that died (killed, out of memory) leaves the pool and fails the run it held."""
    for wid, proc in list(workers.items()):
        if not proc.is_alive():
            workers.pop(wid)
            if wid in busy:
                claims.failed(in_flight.pop(busy.pop(wid)), f"worker process exited with code {proc.exitcode}")


def _run_workers(claims: ClaimQueue, suite_name: str, jobs: int, poll_seconds: float) -> None:
    """``jobs`` worker processes (fresh interpreters), each storing its own runs; this process claims, dispatches
    and draws the bar. Each worker gets ``cores // jobs`` torch threads."""
    import multiprocessing as mp
    import queue as queue_lib

    import torch

    db = claims.db
    ctx = mp.get_context("spawn")
    threads = max(1, torch.get_num_threads() // jobs)
    tasks, results = ctx.Queue(), ctx.Queue()
    workers = {}
    for wid in range(min(jobs, len(claims.queued))):
        proc = ctx.Process(target=_worker_main, daemon=True,
                           args=(wid, tasks, results, str(db.path), suite_name, threads, os.getpid(),
                                 os.environ.get("MDL_BENCH_HOME")))
        proc.start()
        workers[wid] = proc
    in_flight: dict[tuple, PlannedRun] = {}
    busy: dict[int, tuple] = {}
    last_poll = time.time()

    def dispatch():
        while len(in_flight) < len(workers):
            run = claims.take()
            if run is None:
                return
            in_flight[run.key] = run
            tasks.put(run)

    try:
        dispatch()
        while in_flight or claims.pending:
            try:
                message = results.get(timeout=1.0)
            except queue_lib.Empty:
                message = None
            if message is not None:
                _apply_message(message, claims, in_flight, busy)
            _reap_dead_workers(workers, claims, in_flight, busy)
            if not workers and (claims.queued or in_flight):
                for key in list(in_flight):
                    claims.failed(in_flight.pop(key), "no worker process left")
                claims.abandon("not run: no worker process left")
                break
            if claims.waiting and time.time() - last_poll > poll_seconds:
                last_poll = time.time()
                claims.poll()
            dispatch()
    finally:
        for _ in workers:
            tasks.put(None)
        deadline = time.time() + 10
        for proc in workers.values():
            proc.join(timeout=max(0.1, deadline - time.time()))
            if proc.is_alive():
                proc.terminate()
        for key in list(in_flight):
            db.release(*key)
