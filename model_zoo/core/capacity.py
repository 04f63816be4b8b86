"""A model's capacity, as a leaderboard reports it beside its metrics: parameters (embedding tables and dense
layers) and the floating-point operations of one training step per row.

Embedding parameters are those of embedding tables (``nn.Embedding``, ``nn.EmbeddingBag``, and everything inside
FuxiCTR's ``FeatureEmbeddingDict``, which also holds the per-field projections of numeric features); dense
parameters are all the others. Only trainable parameters count.

Training FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over the forward pass, the loss (with
its auxiliary terms and regularisers) and the backward pass of one batch, divided by the batch's rows. It counts
the matrix products and convolutions (a multiply-add is 2 FLOPs), which dominate these models; element-wise work
(activations, normalisation, gathers of embedding rows) is not counted.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

TABLE_TYPES = (nn.Embedding, nn.EmbeddingBag)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``{"embedding": n, "dense": n}`` trainable parameters of ``model`` (see the module docstring)."""
    from .fuxictr_api import FeatureEmbeddingDict

    table_params: set[int] = set()
    for module in model.modules():
        if isinstance(module, TABLE_TYPES) or type(module) is FeatureEmbeddingDict:
            table_params.update(id(p) for p in module.parameters())
    counts = {"embedding": 0, "dense": 0}
    seen: set[int] = set()
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            counts["embedding" if id(p) in table_params else "dense"] += p.numel()
    return counts


def train_flops_per_row(model: nn.Module, loss_of: Callable[[], torch.Tensor], rows: int) -> float:
    """FLOPs of ``loss_of()`` (forward and loss of one batch of ``rows`` rows) and its backward, per row.

    The model is left as it was: its parameters' gradients, its buffers (batch-norm statistics) and the random
    number generators are restored afterwards."""
    from torch.utils.flop_counter import FlopCounterMode

    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    grads = {id(p): (None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()}
    mode = model.training
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices), FlopCounterMode(display=False) as counter:
            model.train()
            loss_of().backward()
        return counter.get_total_flops() / max(1, int(rows))
    finally:
        model.train(mode)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        for p in model.parameters():
            p.grad = grads[id(p)]
