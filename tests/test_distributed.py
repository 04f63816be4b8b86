"""Data-parallel training (CPU, gloo, 2 ranks) and data larger than memory (parts streamed with bounded memory).

The ranks are real processes started by :func:`mdl_bench.benchmark.distributed.launch` (what ``run --nproc`` and
``nproc: N`` use); the functions they run live at module level so that spawned interpreters can import them.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch

from mdl_bench.benchmark import distributed
from mdl_bench.model_zoo.core import collectives
from mdl_bench.benchmark.data.loader import InMemoryLoader, StreamingLoader
from mdl_bench.kernel.errors import UserError
from mdl_bench.model_zoo.core.metrics import compute_metrics

# ---------------------------------------------------------------------------------------------- rank functions


def _digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _build(expid: str, **overrides):
    from fuxictr.pytorch.torch_utils import seed_everything

    from mdl_bench.benchmark.data.build import ensure_dataset
    from mdl_bench.benchmark.runner import load_feature_map, resolve

    params, model_class, _ = resolve(expid, None, {"verbose": 0, **overrides})
    paths = ensure_dataset(params)
    feature_map = load_feature_map(params)
    seed_everything(int(params.get("seed") or 0))
    return model_class(feature_map, **params), feature_map, paths


def ranks_train_every_model(expids: list[str]) -> dict:
    """On every rank: build each model (same seed), wrap it in DDP, train one epoch with ``fit`` on this rank's
    shard of the global batches. Rank 0 returns, per expid, every rank's weight digest before and after."""
    import torch.distributed as dist

    from mdl_bench.benchmark import distributed as d

    d.init({})
    info = d.current()
    out = {}
    for expid in expids:
        model, feature_map, paths = _build(expid)
        d.wrap(model)
        before = _digest(model)
        common = dict(batch_size=1024, seed=5, rank=info.rank, world_size=info.world_size)
        train = InMemoryLoader(feature_map, paths["train"], shuffle=True, **common)
        valid = InMemoryLoader(feature_map, paths["valid"], **common)
        model.fit(train, epochs=1, validation_data=valid)
        digests: list = [None] * info.world_size
        dist.all_gather_object(digests, (before, _digest(model)))
        out[expid] = digests
    return out


def _parameter_digest(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def ranks_train_with_a_domain_missing_on_rank_1(expids: list[str]) -> dict:
    """On every rank: a model of each expid (towers with batch norm) in DDP, three steps on batches of its own;
    rank 1's batches have no row of domain 0, so domain 0's tower (and every per-domain module of domain 0) sees
    an empty block of rows there. Rank 0 returns, per expid, every rank's parameter digest before and after and
    whether it saw domain 0."""
    import itertools

    import torch.distributed as dist

    from mdl_bench.benchmark import distributed as d

    d.init({})
    info = d.current()
    out = {}
    for expid in expids:
        model, feature_map, paths = _build(expid, batch_norm=True)
        d.wrap(model)
        before = _parameter_digest(model)
        loader = InMemoryLoader(feature_map, paths["train"], batch_size=512, shuffle=True, seed=5,
                                rank=info.rank, world_size=info.world_size)
        model.train()
        saw_domain_0 = False
        for batch in itertools.islice(iter(loader), 3):
            domain = model.domain_of(model.get_inputs(batch))
            if info.rank == 1:
                keep = domain != 0
                batch = {key: value[keep] for key, value in batch.items()}
                domain = domain[keep]
            saw_domain_0 |= bool((domain == 0).any())
            loss = model.train_step(batch)
            assert torch.isfinite(loss)
        states: list = [None] * info.world_size
        dist.all_gather_object(states, (before, _parameter_digest(model), saw_domain_0))
        out[expid] = states
    return out


def ranks_predict(expid: str, checkpoint: str) -> dict:
    """Each rank predicts its contiguous shard of the valid split; the arrays are gathered on every rank."""
    from mdl_bench.benchmark import distributed as d

    d.init({})
    info = d.current()
    model, feature_map, paths = _build(expid)
    model.load_state_dict(torch.load(checkpoint))
    loader = InMemoryLoader(feature_map, paths["valid"], batch_size=300, rank=info.rank, world_size=info.world_size)
    arrays = model.predict_arrays(loader)
    return {"arrays": arrays, "logs": dict(model.evaluate_arrays(arrays)), "own_rows": loader._eval_range()}


def rank_one_fails_in_training(expid: str) -> None:
    """A real training run in which rank 1 raises at its second step while rank 0 waits in the all-reduce."""
    from mdl_bench.benchmark import distributed as d
    from mdl_bench.benchmark.runner import run_expid
    from mdl_bench.model_zoo.base import MultiDomainModel

    original = MultiDomainModel.train_step
    calls = {"n": 0}

    def failing_step(self, batch):
        calls["n"] += 1
        if d.env_info().rank == 1 and calls["n"] == 2:
            raise RuntimeError("injected failure in rank 1")
        return original(self, batch)

    MultiDomainModel.train_step = failing_step
    run_expid(expid, None, {"verbose": 0, "epochs": 2, "dist_timeout": 300})


def rank_one_dies(expid: str) -> None:
    from mdl_bench.benchmark import distributed as d

    d.init({})
    if d.current().rank == 1:
        os._exit(7)
    collectives.barrier()  # rank 0 would wait here forever


# ---------------------------------------------------------------------------------------------- DDP tests


def test_every_registered_model_ends_with_identical_weights_on_every_rank(tiny):
    from mdl_bench.model_zoo import model_location, registry

    expids = [f"{name}_test" for name in registry() if model_location(name) is None]  # built-in models
    assert len(expids) >= 12
    result = distributed.launch(ranks_train_every_model, (expids,), nproc=2, threads=1)
    assert set(result) == set(expids)
    for expid, per_rank in result.items():
        (before0, after0), (before1, after1) = per_rank
        assert before0 == before1, f"{expid}: ranks started from different weights"
        assert after0 == after1, f"{expid}: ranks diverged during DDP training"
        assert after0 != before0, f"{expid}: training changed nothing"


def test_a_domain_missing_from_one_ranks_batches_trains_and_the_ranks_stay_equal(tiny):
    """Rows routed to their own domain's modules: a domain with no row on a rank still takes part in the gradient
    all-reduce (its modules run on an empty block), so DDP neither errors nor hangs and the ranks stay equal."""
    expids = ["Crocodile_test", "MMoE_test", "PEPNet_test", "HiNet_test", "SingleDomain_test", "STAR_test",
              "PLE_test"]
    result = distributed.launch(ranks_train_with_a_domain_missing_on_rank_1, (expids,), nproc=2, threads=1)
    for expid, ((before0, after0, saw0), (before1, after1, saw1)) in result.items():
        assert saw0 and not saw1, f"{expid}: rank 0 should see domain 0 and rank 1 not"
        assert before0 == before1, f"{expid}: ranks started from different weights"
        assert after0 == after1, f"{expid}: ranks diverged"
        assert after0 != before0, f"{expid}: training changed nothing"


def test_gathered_predictions_cover_every_row_once_and_give_the_single_process_metrics(tiny, tmp_path):
    model, feature_map, paths = _build("Crocodile_test")
    checkpoint = str(tmp_path / "weights.pt")
    torch.save(model.state_dict(), checkpoint)
    got = distributed.launch(ranks_predict, ("Crocodile_test", checkpoint), nproc=2, threads=1)
    whole = InMemoryLoader(feature_map, paths["valid"], batch_size=300)
    single = model.predict_arrays(whole)
    arrays = got["arrays"]
    # every row once, in file order (rank 0's rows first): labels, domains and users line up with the file
    assert len(arrays["y_pred"]) == whole.num_samples
    for key in ("y_true", "domain", "group"):
        np.testing.assert_array_equal(arrays[key], single[key], err_msg=key)
    np.testing.assert_allclose(arrays["y_pred"], single["y_pred"], rtol=1e-5, atol=1e-6)
    # metrics from the gathered arrays are the single-process computation on the same predictions
    expected = model.evaluate_arrays(arrays)
    assert got["logs"] == pytest.approx(dict(expected), abs=0, rel=0)
    assert got["own_rows"] == (0, whole.num_samples // 2)


def test_a_failing_rank_stops_the_whole_run_with_a_clear_error(tiny):
    with pytest.raises(distributed.RankFailed, match=r"rank 1 of 2 failed: RuntimeError: injected failure in rank 1; "
                                                     r"the other ranks were stopped"):
        distributed.launch(rank_one_fails_in_training, ("Crocodile_test",), nproc=2, threads=1)


def test_a_rank_that_dies_stops_the_run(tiny):
    with pytest.raises(distributed.RankFailed, match=r"rank 1 of 2 failed: the process exited with code 7"):
        distributed.launch(rank_one_dies, ("Crocodile_test",), nproc=2, threads=1)


def test_nproc_run_streams_parts_and_reports_world_size(tiny, tmp_path):
    """``nproc: 2`` on a dataset built in parts: the launcher, the streamed loaders, DDP join and gathered metrics
    together, through the package's one run function."""
    import yaml

    from mdl_bench.benchmark.config import ConfigSet
    from mdl_bench.benchmark.runner import run_expid

    block = dict(ConfigSet().dataset_params("tiny_synth"), data_block_size=1500)
    (tmp_path / "dataset_config.yaml").write_text(yaml.safe_dump({"tiny_parts": block}))
    result = run_expid("Crocodile_test", tmp_path, {"verbose": 0, "nproc": 2, "epochs": 2, "dataset_id": "tiny_parts",
                                                    "num_workers": 2, "shuffle_buffer": 2000})
    assert sorted(os.listdir(os.path.join(result.params["data_root"], "tiny_parts", "train"))) == [
        f"part-{i:06d}.parquet" for i in range(4)]  # 6,000 rows in parts of 1,500
    assert result.world_size == 2
    assert result.test_rows["Overall"] == 2000
    assert 0.55 < result.test["AUC"] < 1.0
    assert result.oracle["AUC"] > result.test["AUC"]


def test_nproc_disagreeing_with_torchrun_is_an_error(tiny, monkeypatch):
    from mdl_bench.benchmark.runner import run_expid

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="nproc: 2 but torchrun started 3 processes"):
        run_expid("Crocodile_test", None, {"verbose": 0, "nproc": 2})


# ---------------------------------------------------------------------------------------------- streamed parts


def _write_parts(folder, sizes: list[int]) -> SimpleNamespace:
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for index, size in enumerate(sizes):
        rows = np.arange(start, start + size)
        pl.DataFrame({"row": rows, "click": (rows % 2).astype(np.float64)}).write_parquet(
            folder / f"part-{index:06d}.parquet")
        start += size
    return SimpleNamespace(features={"row": {"type": "categorical"}}, labels=["click"]), start


@pytest.mark.parametrize("world_size,workers", [(1, 0), (2, 0), (2, 3), (3, 2)])
def test_a_streamed_epoch_visits_every_row_once_across_ranks_and_workers(tmp_path, world_size, workers):
    feature_map, total = _write_parts(tmp_path / "train", [700, 650, 700, 10, 700, 333, 700, 700, 1])
    epochs = []
    for epoch in range(2):
        seen = []
        for rank in range(world_size):
            loader = StreamingLoader(feature_map, str(tmp_path / "train"), batch_size=128, shuffle=True, seed=4,
                                     rank=rank, world_size=world_size, num_workers=workers, shuffle_buffer=900)
            loader.set_epoch(epoch)
            sizes = []
            for batch in loader:
                seen.append(batch["row"])
                sizes.append(len(batch["row"]))
                np.testing.assert_array_equal(batch["click"].numpy(), (batch["row"].numpy() % 2))  # rows intact
            assert max(sizes) == 128 // world_size
            assert len(sizes) == len(loader)
        rows = torch.cat(seen).numpy()
        assert len(rows) == total and len(np.unique(rows)) == total  # each row exactly once
        epochs.append(rows)
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch


def test_streamed_order_is_reproducible_with_reader_threads(tmp_path):
    feature_map, _ = _write_parts(tmp_path / "train", [500] * 6)
    runs = []
    for _ in range(2):
        loader = StreamingLoader(feature_map, str(tmp_path / "train"), batch_size=100, shuffle=True, seed=1,
                                 num_workers=3, shuffle_buffer=600)
        runs.append(torch.cat([b["row"] for b in loader]).numpy())
    np.testing.assert_array_equal(runs[0], runs[1])


def test_unshuffled_stream_keeps_each_part_in_order(tmp_path):
    feature_map, total = _write_parts(tmp_path / "valid", [300, 300, 120])
    shards = []
    for rank in range(2):
        loader = StreamingLoader(feature_map, str(tmp_path / "valid"), batch_size=100, rank=rank, world_size=2)
        shards.append(torch.cat([b["row"] for b in loader]).numpy())
    np.testing.assert_array_equal(shards[0], np.r_[0:300, 600:720])  # parts 0 and 2
    np.testing.assert_array_equal(shards[1], np.r_[300:600])
    assert loader.read_columns(["row"])["row"].numpy().tolist() == list(range(total))


def test_stream_stops_cleanly_when_abandoned_and_errors_are_raised(tmp_path):
    feature_map, _ = _write_parts(tmp_path / "train", [200] * 4)
    loader = StreamingLoader(feature_map, str(tmp_path / "train"), batch_size=50, shuffle=True, num_workers=2,
                             shuffle_buffer=100)
    first = next(iter(loader))
    assert len(first["row"]) == 50  # the generator is dropped here; its reader threads must end
    (tmp_path / "train" / "part-000002.parquet").write_bytes(b"not parquet")
    with pytest.raises(Exception):
        list(loader)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds no parquet part"):
        StreamingLoader(feature_map, str(empty))


def test_suite_with_nproc_stores_runs_that_leaderboard_and_runs_find_with_the_same_option(tiny, tmp_path, capsys):
    from mdl_bench.benchmark.cli import main

    suite = tmp_path / "ddp.yaml"
    store = tmp_path / "store.sqlite"
    suite.write_text(f"name: ddp\ndatasets: [tiny_synth]\nseeds: [3]\nexpids: [STAR_test]\nstore: {store}\n"
                     f"overrides: {{epochs: 1}}\n")
    assert main(["run", "--suite", str(suite), "--nproc", "2", "--no-leaderboard"]) == 0
    assert main(["runs", "--suite", str(suite), "--nproc", "2"]) == 0
    assert "STAR_test" in capsys.readouterr().out
    assert main(["leaderboard", "--suite", str(suite), "--nproc", "2", "--format", "csv"]) == 0
    with_option = capsys.readouterr().out
    assert main(["leaderboard", "--suite", str(suite), "--format", "csv"]) == 0
    without = capsys.readouterr().out
    star = [line for line in with_option.splitlines() if "STAR" in line]
    assert star and any(ch.isdigit() for ch in star[0].split(",", 2)[2])  # values present
    assert with_option != without  # a 2-process run is another config: found only with the same --nproc
    assert main(["run", "--suite", str(suite), "--nproc", "2", "--jobs", "2"]) == 2
    assert "--nproc and --jobs" in capsys.readouterr().err
