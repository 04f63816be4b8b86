"""Shared fixtures: a private $MDL_BENCH_HOME per test session and the tiny synthetic dataset built once."""
from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def bench_home(tmp_path_factory):
    """Everything the package writes (raw data, builds, checkpoints, logs) goes under a temporary folder."""
    home = tmp_path_factory.mktemp("mdl_bench_home")
    old = os.environ.get("MDL_BENCH_HOME")
    os.environ["MDL_BENCH_HOME"] = str(home)
    # Tiny models gain nothing from intra-op threads, and tests that start worker processes would oversubscribe
    # the cores; one thread per process keeps the suite fast and steady on a 2-core machine.
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    yield home
    if old is None:
        os.environ.pop("MDL_BENCH_HOME", None)
    else:
        os.environ["MDL_BENCH_HOME"] = old


@pytest.fixture(scope="session")
def tiny(bench_home):
    """The packaged ``tiny_synth`` dataset, generated and built once: params, feature map and parquet paths
    (the model contract's data, :func:`mdl_bench.benchmark.contract.tiny_data`)."""
    from mdl_bench.benchmark.contract import tiny_data

    return tiny_data("Crocodile_test")


@pytest.fixture(scope="session")
def tiny_batch(tiny):
    """One shuffled training batch of 512 rows that contains every domain."""
    from mdl_bench.benchmark.contract import tiny_batch as make_batch

    return make_batch(tiny)


def build_model(tiny, expid: str = "Crocodile_test", **overrides):
    """A model of ``expid`` on the tiny dataset (seeded, quiet)."""
    from mdl_bench.benchmark.contract import build_model as build

    return build(tiny, expid, **overrides)
