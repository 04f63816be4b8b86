"""Shared layers against references computed another way (explicit loops over experts, domains, pairs)."""
import itertools

import pytest
import torch
from torch import nn

from mdl_bench.model_zoo.layers import (BatchedMLP, CovLoss, DomainGroups, DomainTowers, ElementwiseGate,
                                        SoftmaxGate, gather_domain, mix, mix_own)
from mdl_bench.kernel.errors import UserError


def per_mlp_reference(mlp: BatchedMLP, x: torch.Tensor, e: int) -> torch.Tensor:
    h = x if x.dim() == 2 else x[e]
    for layer, (w, b) in enumerate(zip(mlp.weights, mlp.biases)):
        h = h @ w[e] + b[e, 0]
        if layer < mlp.num_hidden:
            h = torch.relu(h)
    return h


@pytest.mark.parametrize("shared", [True, False])
def test_batched_mlp_equals_separate_mlps(shared):
    torch.manual_seed(0)
    mlp = BatchedMLP(4, 6, [5, 3], output_dim=2)
    x = torch.randn(7, 6) if shared else torch.randn(4, 7, 6)
    out = mlp(x)
    assert out.shape == (4, 7, 2)
    for e in range(4):
        torch.testing.assert_close(out[e], per_mlp_reference(mlp, x, e))


def test_batched_mlp_batch_norm_and_gradients():
    mlp = BatchedMLP(3, 4, [8], batch_norm=True, dropout=0.1)
    out = mlp(torch.randn(3, 16, 4))
    out.sum().backward()
    assert all(p.grad is not None for p in mlp.parameters())


def test_gates_sum_to_one_and_own_matches_all_domains():
    torch.manual_seed(1)
    B, K, E, H = 11, 3, 4, 5
    r = torch.randn(B, 6)
    domain = torch.tensor([0, 2, 1, 1, 0, 2, 2, 0, 1, 0, 0])
    groups = DomainGroups(domain, K)
    peg = ElementwiseGate(6, K, E, H)
    w = peg(r)
    assert w.shape == (B, K, E, H)
    torch.testing.assert_close(w.sum(dim=2), torch.ones(B, K, H))  # every domain and dimension
    torch.testing.assert_close(peg.own(r, groups), w[torch.arange(B), domain])
    gate = SoftmaxGate(6, K, E)
    g = gate(r)
    torch.testing.assert_close(g.sum(-1), torch.ones(B, K))
    torch.testing.assert_close(gate.own(r, groups), g[torch.arange(B), domain])


def test_mix_matches_loop():
    torch.manual_seed(2)
    E, B, K, H = 3, 5, 2, 4
    O = torch.randn(E, B, H)
    w_scalar = torch.softmax(torch.randn(B, K, E), -1)
    w_elem = torch.softmax(torch.randn(B, K, E, H), 2)
    for w in (w_scalar, w_elem):
        ref = torch.zeros(K, B, H)
        for k, b, e in itertools.product(range(K), range(B), range(E)):
            ref[k, b] += (w[b, k, e] if w.dim() == 3 else w[b, k, e]) * O[e, b]
        torch.testing.assert_close(mix(O, w), ref)
        dom = torch.tensor([1, 0, 1, 1, 0])
        torch.testing.assert_close(mix_own(O, w[torch.arange(B), dom]), ref[dom, torch.arange(B)])


def test_domain_groups_linear_and_merge():
    torch.manual_seed(3)
    domain = torch.tensor([2, 0, 2, 1, 0, 2])
    groups = DomainGroups(domain, 4)  # domain 3 has no rows
    x = torch.randn(6, 3)
    W = torch.randn(4, 3, 2, requires_grad=True)
    b = torch.randn(4, 2, requires_grad=True)
    out = groups.linear(x, W, b)
    ref = torch.stack([x[i] @ W[domain[i]] + b[domain[i]] for i in range(6)])
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert torch.all(W.grad[3] == 0) and W.grad[0].abs().sum() > 0  # absent domain: in the graph, zero grad
    torch.testing.assert_close(groups.merge(groups.split(x)), x)


def test_towers_and_gather():
    torch.manual_seed(4)
    towers = DomainTowers(3, 4, [5])
    x = torch.randn(6, 4)
    logits = towers.all_domains(x)
    assert logits.shape == (3, 6)
    domain = torch.tensor([0, 1, 2, 2, 1, 0])
    torch.testing.assert_close(gather_domain(logits, domain), logits[domain, torch.arange(6)])
    torch.testing.assert_close(towers(x, DomainGroups(domain, 3)), logits[domain, torch.arange(6)])  # routed


def reference_cov(O: torch.Tensor, pairs: str, normalization: str) -> torch.Tensor:
    E, N, d = O.shape
    total = torch.zeros((), dtype=O.dtype)
    for p in range(E):
        for q in range(E):
            if (pairs == "p>=q" and p >= q) or (pairs == "p>q" and p > q):
                Zp = O[p] - O[p].mean(0)
                Zq = O[q] - O[q].mean(0)
                total = total + (Zp.t() @ Zq).abs().sum() / d ** 2
    return total / N if normalization == "mean" else total


@pytest.mark.parametrize("pairs", ["p>=q", "p>q"])
@pytest.mark.parametrize("normalization", ["none", "mean"])
def test_covloss_equals_double_loop(pairs, normalization):
    torch.manual_seed(5)
    O = torch.randn(4, 37, 6, dtype=torch.float64)
    loss = CovLoss(pairs, normalization)(O)
    torch.testing.assert_close(loss, reference_cov(O, pairs, normalization))


@pytest.mark.parametrize("pairs", ["p>=q", "p>q"])
def test_covloss_corr_is_the_l1_of_correlation_blocks_and_scale_free(pairs):
    import numpy as np

    torch.manual_seed(9)
    O = torch.randn(3, 50, 4, dtype=torch.float64) @ torch.randn(4, 4, dtype=torch.float64)
    O[1] = O[1] + 0.5 * O[0]  # correlated experts
    E, N, d = O.shape
    corr = np.corrcoef(O.permute(0, 2, 1).reshape(E * d, N).numpy())  # numpy's Pearson correlation
    expected = sum(np.abs(corr[p * d:(p + 1) * d, q * d:(q + 1) * d]).sum() / d ** 2
                   for p in range(E) for q in range(E) if (p >= q if pairs == "p>=q" else p > q))
    loss = CovLoss(pairs, "corr")(O)
    assert loss.item() == pytest.approx(expected, rel=1e-5)  # EPS = 1e-6 on the std
    scaled = O * torch.tensor([3.0, 0.01, 50.0], dtype=torch.float64).view(3, 1, 1)
    assert CovLoss(pairs, "corr")(scaled).item() == pytest.approx(expected, rel=1e-4)  # rescaling changes nothing
    assert CovLoss(pairs, "none")(scaled).item() != pytest.approx(CovLoss(pairs, "none")(O).item(), rel=1e-3)


def test_covloss_row_sampling():
    torch.manual_seed(6)
    O = torch.randn(3, 64, 5, dtype=torch.float64)
    torch.manual_seed(7)
    sampled = CovLoss(sample_rows=16)(O)
    torch.manual_seed(7)
    rows = torch.randperm(64)[:16]
    torch.testing.assert_close(sampled, reference_cov(O[:, rows], "p>=q", "none") * 64 / 16)
    torch.testing.assert_close(CovLoss(sample_rows=64)(O), reference_cov(O, "p>=q", "none"))


def test_covloss_is_zero_for_uncorrelated_constant_experts_and_rejects_bad_options():
    O = torch.ones(3, 10, 4)
    assert CovLoss()(O).item() == 0.0
    with pytest.raises(UserError, match="cov_pairs"):
        CovLoss(pairs="all")


@pytest.mark.parametrize("pairs", ["p>=q", "p>q"])
def test_covloss_gradient_equals_autograd_of_double_loop(pairs):
    # CovLoss folds the Gram's two backward matmuls into one (BlockAbsGram); the gradient must stay autograd's.
    torch.manual_seed(8)
    O = torch.randn(4, 41, 6, dtype=torch.float64, requires_grad=True)
    CovLoss(pairs)(O).backward()
    fast = O.grad.clone()
    O.grad = None
    reference_cov(O, pairs, "none").backward()
    torch.testing.assert_close(fast, O.grad)
