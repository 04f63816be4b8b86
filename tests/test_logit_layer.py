"""The one-wide output layer of the batched MLPs (every domain tower's logit) is computed as its transpose; it
must give what ``torch.baddbmm`` gives: the same outputs and the same gradients, alone and inside a model, to
float32 rounding (the BLAS may sum a dot product in another order; ``assert_close``'s float32 tolerances)."""
import pytest
import torch

from mdl_bench.model_zoo.layers import experts
from conftest import build_model


def reference(x, weight, bias):
    return torch.baddbmm(bias, x, weight)


@pytest.mark.parametrize("E, B, I", [(5, 4096, 32), (3, 7, 1), (1, 513, 64)])
@pytest.mark.parametrize("layout", ["contiguous", "rows of all MLPs side by side"])
def test_logit_layer_equals_baddbmm_with_its_gradients(E, B, I, layout):
    torch.manual_seed(0)
    if layout == "contiguous":
        base = torch.randn(E, B, I)
    else:  # what a batch norm over the E*I columns of a B x (E*I) matrix hands on
        base = torch.randn(B, E * I).view(B, E, I).transpose(0, 1)
    grads = torch.randn(E, B, 1)
    results = []
    for fn in (reference, experts.logit_layer):
        x = base.clone().requires_grad_() if layout == "contiguous" else base.detach().requires_grad_()
        weight = torch.randn(E, I, 1, generator=torch.Generator().manual_seed(1)).requires_grad_()
        bias = torch.randn(E, 1, 1, generator=torch.Generator().manual_seed(2)).requires_grad_()
        out = fn(x, weight, bias)
        out.backward(grads)
        results.append((out.detach(), x.grad, weight.grad, bias.grad))
    for want, got in zip(*results):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want)


def test_a_model_step_is_the_same_through_either_path(tiny, tiny_batch, monkeypatch):
    """Shared Bottom's towers end in the one-wide layer: loss and every gradient agree with the baddbmm path."""
    runs = []
    for fn in (reference, experts.logit_layer):
        monkeypatch.setattr(experts, "logit_layer", fn)
        model = build_model(tiny, "SharedBottom_test")
        model.train()
        out = model(tiny_batch)
        loss = model.compute_loss(out, model.get_labels(tiny_batch))
        loss.backward()
        runs.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = runs
    torch.testing.assert_close(loss_b, loss_a)
    assert grads_a.keys() == grads_b.keys() and any("towers" in n for n in grads_a)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], msg=name)
