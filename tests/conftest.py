"""Shared fixtures: a private $MDL_BENCH_HOME per test session and the tiny synthetic dataset built once."""
from __future__ import annotations

import logging
import os
from types import SimpleNamespace

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
    """The packaged ``tiny_synth`` dataset, generated and built once: params, feature map and parquet paths."""
    from mdl_bench.benchmark.config import ConfigSet
    from mdl_bench.benchmark.data.build import ensure_dataset
    from mdl_bench.benchmark.runner import load_feature_map

    params = ConfigSet().load("Crocodile_test", {"verbose": 0})
    paths = ensure_dataset(params)
    logging.disable(logging.NOTSET)
    return SimpleNamespace(params=params, feature_map=load_feature_map(params), paths=paths)


@pytest.fixture(scope="session")
def tiny_batch(tiny):
    """One shuffled training batch of 512 rows that contains every domain."""
    from mdl_bench.benchmark.data.loader import InMemoryLoader

    loader = InMemoryLoader(tiny.feature_map, tiny.paths["train"], batch_size=512, shuffle=True, seed=3)
    return next(iter(loader))


def build_model(tiny, expid: str = "Crocodile_test", **overrides):
    """A model of ``expid`` on the tiny dataset (seeded, quiet)."""
    from fuxictr.pytorch.torch_utils import seed_everything
    from mdl_bench.benchmark.runner import resolve

    params, model_class, _ = resolve(expid, None, {"verbose": 0, **overrides})
    seed_everything(int(params.get("seed") or 0))
    return model_class(tiny.feature_map, **params)
