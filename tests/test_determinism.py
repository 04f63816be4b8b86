"""Bit-identical reruns on the CPU: every registered model, trained twice at the same thread count, once on a
quiet machine and once beside processes that keep every core busy, gives exactly the same metrics.

Sizes are chosen so that the ops really run on several threads (PyTorch splits an op only above ~32k elements):
batch 2048 and embedding width 16 on the tiny data. The first version of this test caught STAR: the backward of
``t[domain]`` (advanced indexing, ``index_put_`` with accumulation) sums repeated rows in a thread-dependent
order on the CPU; its partitioned norm now gathers with ``index_select``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mdl_bench.model_zoo import model_location, registry

MODELS = sorted(name for name in registry() if model_location(name) is None)
THREADS = 2
HOGS = 1  # one busy process beside a 2-thread run: enough to reorder threads, without a 10x slowdown

SCRIPT = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(int(sys.argv[2]))
    from mdl_bench.benchmark.runner import run_expid
    out = {}
    for name in sys.argv[3].split(","):
        result = run_expid(f"{name}_test", None, {"batch_size": 2048, "embedding_dim": 16, "epochs": 1,
                                                  "verbose": 0, "model_root": sys.argv[1]}, quiet=True)
        out[name] = {"valid": result.valid, "test": result.test, "best_epoch": result.best_epoch}
    print("RESULT " + json.dumps(out))
""")


def _train_all(folder, busy: bool) -> dict:
    """Train every model in a fresh interpreter (optionally beside one busy process per core)."""
    hogs = []
    if busy:
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(HOGS)]
    try:
        # PASSIVE: waiting OpenMP threads sleep instead of spinning, so the busy run is not slowed ten-fold
        env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), OMP_WAIT_POLICY="PASSIVE")
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), str(THREADS), ",".join(MODELS)],
                              capture_output=True, text=True, env=env, timeout=900)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def two_trainings(tiny, tmp_path_factory):
    quiet = _train_all(tmp_path_factory.mktemp("quiet"), busy=False)
    loaded = _train_all(tmp_path_factory.mktemp("busy"), busy=True)
    return quiet, loaded


@pytest.mark.parametrize("name", MODELS)
def test_same_metrics_under_cpu_pressure(two_trainings, name):
    quiet, loaded = two_trainings
    assert quiet[name]["valid"] and quiet[name]["test"]
    differ = {f"{split}/{k}": (v, loaded[name][split].get(k)) for split in ("valid", "test")
              for k, v in quiet[name][split].items() if v != loaded[name][split].get(k)
              and not (v != v and loaded[name][split].get(k) != loaded[name][split].get(k))}  # NaN == NaN here
    assert not differ, f"{name}: metrics differ between two identical runs: {differ}"
    assert quiet[name]["best_epoch"] == loaded[name]["best_epoch"]
