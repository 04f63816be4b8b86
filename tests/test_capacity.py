"""A model's capacity (parameters by kind, training FLOPs per row) against counts made by hand."""
from __future__ import annotations

import torch
from torch import nn

from conftest import build_model
from mdl_bench.model_zoo.core.capacity import parameter_counts, train_flops_per_row


def test_a_two_layer_mlps_training_flops_are_the_matmuls_counted_by_hand():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 1))
    x = torch.randn(32, 8)
    flops = train_flops_per_row(mlp, lambda: mlp(x).sum(), rows=32)
    # forward 2*(8*16 + 16*1); backward: weight gradients of both layers 2*(8*16 + 16*1), the input gradient of
    # the second layer 2*16*1 (the first layer's input needs none); a multiply-add is 2 FLOPs
    assert flops == 2 * (8 * 16 + 16) + 2 * (8 * 16 + 16) + 2 * 16


def test_counting_leaves_the_model_its_generators_and_gradients_as_they_were():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 1)).eval()
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    state = torch.get_rng_state()
    train_flops_per_row(mlp, lambda: mlp(torch.randn(32, 8)).sum(), rows=32)
    assert not mlp.training and all(p.grad is None for p in mlp.parameters())
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())  # BN statistics restored
    assert torch.equal(torch.get_rng_state(), state)


def test_embedding_and_dense_parameters_add_up_and_tables_are_counted_as_embedding(tiny, tiny_batch):
    from mdl_bench.model_zoo.core.fuxictr_api import FeatureEmbeddingDict

    model = build_model(tiny, "SharedBottom_test")
    counts = parameter_counts(model)
    tables = sum(p.numel() for m in model.modules() if type(m) is FeatureEmbeddingDict for p in m.parameters())
    assert counts["embedding"] == tables > 0 and counts["embedding"] + counts["dense"] == model.num_parameters()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    capacity = model.capacity(tiny_batch)
    assert capacity["embedding_parameters"] == counts["embedding"] and capacity["train_flops_per_row"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
