"""The in-memory loader: every row once per epoch, reshuffled, sharded by rank without overlap."""
import torch

from mdl_bench.benchmark.data.loader import InMemoryLoader


def rows_seen(loader, key="row"):
    return torch.cat([b[key] for b in loader])


def fake_loader(n=1000, **kw):
    columns = {"row": torch.arange(n), "click": torch.zeros(n)}
    return InMemoryLoader(None, columns=columns, **kw)


def test_epoch_covers_every_row_once_and_reshuffles():
    loader = fake_loader(batch_size=64, shuffle=True, seed=1)
    first, second = rows_seen(loader), rows_seen(loader)
    assert len(loader) == 16
    assert torch.equal(first.sort().values, torch.arange(1000))
    assert torch.equal(second.sort().values, torch.arange(1000))
    assert not torch.equal(first, second)
    again = fake_loader(batch_size=64, shuffle=True, seed=1)
    assert torch.equal(rows_seen(again), first)  # same seed, same order


def test_ranks_share_global_batches_without_overlap():
    shards = [fake_loader(batch_size=100, shuffle=True, seed=4, rank=r, world_size=3) for r in range(3)]
    for epoch in range(2):
        for s in shards:
            s.set_epoch(epoch)
        seen = [list(s) for s in shards]
        assert len({len(batches) for batches in seen}) == 1
        allrows = torch.cat([b["row"] for batches in seen for b in batches])
        assert torch.equal(allrows.sort().values, torch.arange(1000))
        for step in range(len(seen[0])):  # rank r holds the r-th slice of the same global batch
            joined = torch.cat([seen[r][step]["row"] for r in range(3)])
            assert len(joined) == min(100, 1000 - step * 100)


def test_eval_shards_cover_rows_in_order():
    shards = [fake_loader(n=1001, batch_size=64, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat([rows_seen(s) for s in shards]), torch.arange(1001))


def test_tiny_split_loads_all_columns(tiny):
    loader = InMemoryLoader(tiny.feature_map, tiny.paths["valid"], batch_size=256)
    batch = next(iter(loader))
    assert set(batch) == set(tiny.feature_map.features) | {"click"}
    assert batch["true_prob"].dtype == torch.float32 and batch["user_id"].dtype == torch.int64
    assert loader.num_samples == 2000


def test_works_as_fuxictr_rank_dataloader(tiny):
    from fuxictr.pytorch.dataloaders import RankDataLoader

    train, valid = RankDataLoader(tiny.feature_map, stage="train", train_data=tiny.paths["train"],
                                  valid_data=tiny.paths["valid"], batch_size=500, data_loader=InMemoryLoader)
    assert isinstance(train, InMemoryLoader) and train.shuffle and not valid.shuffle
    assert sum(b["click"].shape[0] for b in train) == 6000
