"""Rerunning a stored run from its stored config alone, and comparing every stored metric with the new values."""
from __future__ import annotations

import math

from mdl_bench.kernel.errors import UserError
from ..codeid import code_fingerprint
from ..resolved import ResolvedRun
from ..store import Store, git_state
from .execute import run_captured
from .plan import Entry, PlannedRun, Variant
from .progress import SuiteProgress


def rerun(run_id: int, store: str | None = None, out=print, progress_stream=None) -> bool:
    """Rerun a stored run from its stored config alone and compare every stored metric. True if all match."""
    import torch

    from ..store import local_config
    from mdl_bench.kernel.paths import bench_home

    db = Store(store, create=False)
    try:
        run = db.get_run(run_id)
    finally:
        db.close()
    params = local_config(run["config"])
    params["model_root"] = str(bench_home() / "reruns" / f"run{run_id}")
    code = code_fingerprint(run["model"], params.get("models_from"))
    resolved = ResolvedRun.of(run["expid"], params, code=code.digest)  # the stored config as it is: nothing resolved
    if resolved.config_hash != run["config_hash"]:
        raise UserError(f"run {run_id}: its stored config does not hash to its stored hash; the store was edited")
    out(f"Rerunning run {run_id}: {run['expid']} ({run['model']}) on {run['dataset_id']}, seed {run['seed']}, "
        f"config {run['config_hash'][:8]}, {run['torch_threads']} torch threads; stored with commit "
        f"{(run['git_commit'] or 'unknown')[:12]}, now {(git_state()['commit'] or 'unknown')[:12]}")
    if code.digest == run.get("code_fingerprint"):
        out(f"  code: the same as the run's (fingerprint {code.digest[:8]}): the values should match exactly")
    else:
        changed = code.changed_files((run.get("versions") or {}).get("code_files"))
        what = (f"changed since: {', '.join(changed)}" if (run.get("versions") or {}).get("code_files")
                else "the run predates code fingerprints")
        out(f"  code: DIFFERS from the run's (fingerprint {(run.get('code_fingerprint') or 'unknown')[:8]}, now "
            f"{code.digest[:8]}; {what}): differences below may come from the code, not from nondeterminism")
    old_threads = torch.get_num_threads()
    if run.get("torch_threads"):
        torch.set_num_threads(int(run["torch_threads"]))
    fake = PlannedRun(variant=Variant(0, Entry(run["expid"]), run["expid"], run["dataset_id"], {}, params,
                                      run["config_hash"], [run["seed"]], run["model"], "", run["model"],
                                      run["expid"], label=run["expid"], code=code.digest),
                      seed=int(run["seed"]), resolved=resolved)
    progress = SuiteProgress([fake], stream=progress_stream)
    stored = run.get("result") or {}
    replay = _replay_stop(stored) if stored.get("stopped_by") else None
    if replay is not None:
        out(f"  a pruned tuning trial ({stored['stopped_by']}): the rerun stops at the same validation")
    try:
        progress.started(fake.key)
        result = run_captured(resolved, step_callback=lambda info: progress.step(fake.key, info),
                              validation_callback=replay)
        progress.finished(fake.key)
    finally:
        progress.close()
        torch.set_num_threads(old_threads)
    rows, mismatches = [], 0
    fresh = {"valid": result.valid, "test": result.test, "oracle": result.oracle}
    for split in ("valid", "test"):
        for name, old in sorted(run["metrics"].get(split, {}).items()):
            new = fresh[split].get(name, float("nan"))
            same = old == new or (math.isnan(old) and math.isnan(new))
            mismatches += not same
            rows.append(f"  {split:5s} {name:14s} stored {old:.10f}  rerun {new:.10f}  "
                        f"{'match' if same else f'MISMATCH (diff {new - old:+.3e})'}")
    same_epoch = run["best_epoch"] == result.best_epoch
    mismatches += not same_epoch
    out("\n".join(rows))
    out(f"  best epoch: stored {run['best_epoch']}, rerun {result.best_epoch}: {'match' if same_epoch else 'MISMATCH'}")
    total = len(rows) + 1
    out(f"All {total} values match exactly." if not mismatches else f"{mismatches} of {total} values differ.")
    return mismatches == 0


def _replay_stop(stored: dict):
    """A validation callback that ends training where a stored pruned trial ended (after as many validations):
    the pruner's decision depended on the other trials of its suite, the stored result says where it fell."""
    count = len(stored.get("valid_history") or [])
    seen = []

    def callback(entry: dict):
        seen.append(entry)
        return f"replayed: {stored['stopped_by']}" if len(seen) >= count else None

    return callback
