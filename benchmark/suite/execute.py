"""One run into the store: run a resolved run as planned (:func:`run_captured`, which ``rerun`` takes too), then
store it with what it needs to be compared and reproduced (:func:`execute_run`)."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any


from ..codeid import code_fingerprint
from ..resolved import ResolvedRun
from ..store import Store, git_state, library_versions, portable_config
from .plan import PlannedRun
from .tuning import pruner_for


def run_captured(run: ResolvedRun, step_callback=None, quiet: bool = True, validation_callback=None):
    """Run one resolved run (:func:`~mdl_bench.benchmark.runner.run_resolved`, the package's one run function) as
    it is; suites and ``rerun`` both come here, so a rerun takes exactly the path of the original run. Console
    output of the run (FuxiCTR's stream handler, warnings) is captured and appended to the run's log file."""
    from ..runner import run_resolved

    console = io.StringIO()
    try:
        with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
            try:
                return run_resolved(run, step_callback=step_callback, quiet=quiet,
                                    validation_callback=validation_callback)
            except BaseException:
                logging.getLogger().error("Run failed:\n" + traceback.format_exc())
                raise
    finally:
        _close_run_logging()
        text = console.getvalue()
        params = run.params
        log_file = os.path.join(params["model_root"], params["dataset_id"], params["model_id"] + ".log")
        if text.strip() and os.path.isdir(os.path.dirname(log_file)):
            with open(log_file, "a", encoding="utf-8") as fh:
                fh.write("---- console output ----\n" + text)


def _close_run_logging() -> None:
    """Detach the handlers FuxiCTR's ``set_logger`` installed, so later output does not land in a past run's log."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        with contextlib.suppress(Exception):
            handler.close()


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _maxrss_bytes(who) -> int:
    import resource

    value = resource.getrusage(who).ru_maxrss
    return int(value if sys.platform == "darwin" else value * 1024)


def execute_run(run: PlannedRun, store: Store, suite_name: str | None, step_callback=None) -> tuple[int | None, Any]:
    """Train, evaluate and store one planned run (one transaction). Returns ``(run_id or None if it was stored
    meanwhile by another process, RunResult)``."""
    import resource

    import torch

    scope = "run" if _reset_peak_rss() else "process"
    started = time.time()
    trial = run.variant.trial
    pruner = pruner_for(trial, store) if trial is not None else None
    result = run_captured(run.resolved, step_callback=step_callback, quiet=True, validation_callback=pruner)
    finished = time.time()
    digest = run.resolved.config_hash
    code = code_fingerprint(result.model, result.params.get("models_from"))
    if code.digest != run.variant.code:  # the files changed while the suite ran: store what really ran
        logging.getLogger().warning(f"{run.describe()}: the model's code changed since the suite was planned "
                                    f"({run.variant.code[:8]} -> {code.digest[:8]})")
    git = git_state()
    versions = library_versions()
    versions["git_dirty"] = git["dirty"]
    versions["code_files"] = code.files
    outcome = result.to_dict()
    outcome.pop("params", None)
    record = dict(
        config_hash=digest, seed=run.seed, code_fingerprint=code.digest, expid=run.expid, model=result.model,
        dataset_id=result.dataset_id,
        model_id=run.model_id, suite=suite_name, config=portable_config(result.params),
        best_epoch=result.best_epoch, epochs_run=result.epochs_run, train_seconds=result.train_seconds,
        train_samples_per_second=result.train_samples_per_second, wall_seconds=result.wall_seconds,
        num_parameters=result.num_parameters, peak_rss_bytes=_maxrss_bytes(resource.RUSAGE_SELF),
        peak_rss_children_bytes=_maxrss_bytes(resource.RUSAGE_CHILDREN), peak_rss_scope=scope,
        torch_threads=torch.get_num_threads(), versions=versions, git_commit=git["commit"],
        hostname=socket.gethostname(), checkpoint=result.checkpoint, log_file=run.log_file, result=outcome,
        started_at=started, finished_at=finished,
        metrics={"valid": result.valid, "test": result.test, "oracle": result.oracle})
    return store.insert_run(record), result
