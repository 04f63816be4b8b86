"""Table 4's disentanglement losses, each against a reference computed with explicit loops, plus their wiring
into Crocodile's ``aux_loss`` / ``aux_alpha`` options."""
import math

import numpy as np
import pytest
import torch

from mdl_bench.kernel.errors import UserError
from mdl_bench.model_zoo.layers import (DISENTANGLE_LOSSES, CosLoss, CovLoss, DCorrLoss, DotLoss, ImportanceLoss,
                                        OLELoss, Trans5Loss, make_disentangle_loss)
from conftest import build_model


def expert_outputs(E=3, N=12, H=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(E, N, H, generator=g, dtype=torch.float64)


def pairs(E):
    return [(p, q) for p in range(E) for q in range(E) if p < q]


def test_dot_matches_loops():
    O = expert_outputs()
    E, N, H = O.shape
    ref = 0.0
    for p, q in pairs(E):
        ref += sum(abs(sum(float(O[p, k, h] * O[q, k, h]) for h in range(H))) for k in range(N)) / N
    torch.testing.assert_close(DotLoss()(O), torch.tensor(ref, dtype=torch.float64))


def test_cos_matches_loops_and_ignores_scale():
    O = expert_outputs()
    O[1, 3] = 0.0  # a zero row has cosine 0 with everything
    E, N, H = O.shape
    ref = 0.0
    for p, q in pairs(E):
        for k in range(N):
            a, b = O[p, k].tolist(), O[q, k].tolist()
            na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
            dot = sum(x * y for x, y in zip(a, b))
            ref += 0.0 if na == 0 or nb == 0 else abs(dot) / (na * nb) / N
    torch.testing.assert_close(CosLoss()(O), torch.tensor(ref, dtype=torch.float64))
    scaled = O * torch.tensor([3.0, 0.5, 7.0], dtype=torch.float64).view(3, 1, 1)
    torch.testing.assert_close(CosLoss()(scaled), CosLoss()(O))


def reference_dcor(x, y, eps):
    n = len(x)

    def centred(z):
        d = [[math.sqrt(sum((z[k][h] - z[l][h]) ** 2 for h in range(len(z[0])))) for l in range(n)] for k in range(n)]
        row = [sum(d[k]) / n for k in range(n)]
        col = [sum(d[k][l] for k in range(n)) / n for l in range(n)]
        grand = sum(row) / n
        return [[d[k][l] - row[k] - col[l] + grand for l in range(n)] for k in range(n)]

    A, B = centred(x), centred(y)

    def dcov(P, Q):
        return math.sqrt(max(sum(P[k][l] * Q[k][l] for k in range(n) for l in range(n)) / (n * n), eps))

    return dcov(A, B) / math.sqrt(dcov(A, A) * dcov(B, B))


def test_dcorr_matches_loops():
    O = expert_outputs(E=3, N=10, H=3)
    ref = sum(reference_dcor(O[p].tolist(), O[q].tolist(), 1e-5) for p, q in pairs(3))
    torch.testing.assert_close(DCorrLoss(sample_rows=0)(O), torch.tensor(ref, dtype=torch.float64))


def test_dcorr_is_one_for_a_copy_and_small_for_independent_experts():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 3, generator=g, dtype=torch.float64)
    same = torch.stack([x, 2.0 * x + 1.0])  # distance correlation is invariant to scale and shift
    torch.testing.assert_close(DCorrLoss(sample_rows=0)(same), torch.tensor(1.0, dtype=torch.float64))
    independent = torch.stack([x, torch.randn(400, 3, generator=g, dtype=torch.float64)])
    assert DCorrLoss(sample_rows=0)(independent) < 0.2


def test_ole_matches_loops_and_is_zero_for_orthogonal_experts():
    O = expert_outputs(E=3, N=8, H=5)
    E, N, H = O.shape
    nuclear = lambda m: float(np.linalg.svd(np.asarray(m), compute_uv=False).sum())
    stacked = [row for p in range(E) for row in O[p].tolist()]
    ref = (sum(max(1.0, nuclear(O[p].tolist())) for p in range(E)) - nuclear(stacked)) / (E * N)
    torch.testing.assert_close(OLELoss()(O), torch.tensor(ref, dtype=torch.float64))
    # experts living in orthogonal coordinate subspaces: sum of parts equals the whole
    ortho = torch.zeros(2, 6, 4, dtype=torch.float64)
    ortho[0, :, :2] = torch.randn(6, 2, dtype=torch.float64) * 3
    ortho[1, :, 2:] = torch.randn(6, 2, dtype=torch.float64) * 3
    assert abs(float(OLELoss()(ortho))) < 1e-10
    assert float(OLELoss()(torch.stack([ortho[0], ortho[0]]))) > 0.1


@pytest.mark.parametrize("elementwise", [False, True])
def test_importance_matches_loops(elementwise):
    g = torch.Generator().manual_seed(2)
    N, E, H = 9, 4, 3
    shape = (N, E, H) if elementwise else (N, E)
    gates = torch.softmax(torch.randn(*shape, generator=g, dtype=torch.float64), dim=1)
    columns = range(H) if elementwise else [None]
    cvs = []
    for h in columns:
        imp = [sum(float(gates[k, p] if h is None else gates[k, p, h]) for k in range(N)) for p in range(E)]
        mean = sum(imp) / E
        var = sum((x - mean) ** 2 for x in imp) / E
        cvs.append(var / (mean * mean + 1e-10))
    ref = sum(cvs) / len(cvs)
    torch.testing.assert_close(ImportanceLoss()(torch.zeros(E, N, 2), gates), torch.tensor(ref, dtype=torch.float64))
    balanced = torch.full((N, E), 1.0 / E, dtype=torch.float64)
    assert float(ImportanceLoss()(None, balanced)) == 0.0


def test_importance_without_gates_is_a_user_error():
    with pytest.raises(UserError, match="needs the gate weights"):
        ImportanceLoss()(expert_outputs())


def test_trans5_matches_loops_and_trains_its_maps():
    O = expert_outputs(E=3, N=6, H=3)
    loss = Trans5Loss(num_experts=3, expert_dim=3).double()
    W = loss.maps.detach()
    E, N, H = O.shape
    ref = 0.0
    for index, (p, q) in enumerate(pairs(E)):
        M = W[index].tolist()
        for k in range(N):
            x, y = O[p, k].tolist(), O[q, k].tolist()
            mapped = [sum(x[i] * M[i][j] for i in range(H)) for j in range(H)]
            back = [sum(mapped[j] * M[i][j] for j in range(H)) for i in range(H)]
            ref += (sum(abs(mapped[j] - y[j]) for j in range(H)) + sum(abs(x[i] - back[i]) for i in range(H))) / N
    ref /= H
    value = loss(O)
    torch.testing.assert_close(value, torch.tensor(ref, dtype=torch.float64))
    value.backward()
    assert loss.maps.grad is not None and loss.maps.grad.abs().sum() > 0
    # an exact orthogonal translation between two experts costs nothing
    Q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    exact = Trans5Loss(num_experts=2, expert_dim=3).double()
    exact.maps.data[0] = Q
    x = O[0]
    assert exact(torch.stack([x, x @ Q])).item() < 1e-10


@pytest.mark.parametrize("name", sorted(DISENTANGLE_LOSSES))
def test_every_loss_has_finite_gradients_with_dead_relu_units(name):
    g = torch.Generator().manual_seed(3)
    O = torch.relu(torch.randn(4, 64, 8, generator=g)).requires_grad_(True)
    with torch.no_grad():
        O[:, :, :3] = 0.0  # dead units: repeated zero singular values, zero distances
    gates = torch.softmax(torch.randn(64, 4, 8, generator=g), dim=1).requires_grad_(True)
    loss = make_disentangle_loss(name, num_experts=4, expert_dim=8)
    value = loss(O, gates)
    value.backward()
    assert torch.isfinite(value)
    grads = [t.grad for t in (O, gates) if t.grad is not None]
    assert grads and all(torch.isfinite(t).all() for t in grads)


def test_unknown_loss_and_option_are_user_errors():
    with pytest.raises(UserError, match=r"unknown aux_loss 'dcor'.*known: none, cov"):
        make_disentangle_loss("dcor")
    with pytest.raises(UserError, match=r"aux_loss 'ole' has no option 'margin' \(its options: sample_rows, delta\)"):
        make_disentangle_loss("ole", margin=2)


def test_sampled_rows_are_a_subset():
    O = expert_outputs(E=2, N=50, H=3)
    torch.manual_seed(0)
    sampled = DotLoss(sample_rows=10)(O)
    per_row = (O[0] * O[1]).sum(-1).abs()
    # the sampled mean is the mean of some 10 distinct rows
    assert per_row.min() <= sampled <= per_row.max()


# ------------------------------------------------------------------ Crocodile's options
@pytest.mark.parametrize("name", ["dot", "cos", "dcorr", "ole", "importance", "trans5"])
def test_crocodile_trains_with_each_loss(tiny, tiny_batch, name):
    model = build_model(tiny, aux_loss=name, aux_alpha=0.5)
    loss = model.train_step(tiny_batch)
    assert torch.isfinite(loss)
    assert set(model._loss_terms) == {"bce", name}
    assert isinstance(model.aux_loss_fn, DISENTANGLE_LOSSES[name])
    if name == "trans5":  # the maps are parameters of the model, hence optimised
        params = {id(p) for group in model.optimizer.param_groups for p in group["params"]}
        assert id(model.aux_loss_fn.maps) in params


def test_crocodile_aux_term_is_alpha_times_loss_with_gates(tiny, tiny_batch):
    model = build_model(tiny, aux_loss="importance", aux_alpha=0.25, cov_alpha=9.0)
    assert model.aux_alpha == 0.25  # aux_alpha wins over the older cov_alpha
    model.train()
    out = model(tiny_batch)
    X = model.get_inputs(tiny_batch)
    from mdl_bench.model_zoo.layers import DomainGroups
    gates = model.gate.own(model.prior_embedding.flat(X)[0], DomainGroups(out["domain"], model.num_domains))
    expected = 0.25 * ImportanceLoss()(None, gates)
    torch.testing.assert_close(out["aux_losses"]["importance"], expected)


def test_crocodile_cov_alpha_still_sets_the_weight(tiny):
    model = build_model(tiny, cov_alpha=0.3)
    assert model.aux_alpha == 0.3 and isinstance(model.cov_loss, CovLoss)
    assert build_model(tiny, aux_loss="none").aux_loss_fn is None


def test_crocodile_aux_options_reach_the_loss(tiny):
    model = build_model(tiny, aux_loss="dcorr", aux_options={"sample_rows": 64, "eps": 1e-6})
    assert model.aux_loss_fn.sample_rows == 64 and model.aux_loss_fn.eps == 1e-6
    with pytest.raises(UserError, match="has no option 'pairs'"):
        build_model(tiny, aux_loss="dot", aux_options={"pairs": "p>q"})
    with pytest.raises(UserError, match="unknown aux_loss 'covv'"):
        build_model(tiny, aux_loss="covv")


def test_table4_expids_resolve_to_each_loss():
    from mdl_bench.benchmark.runner import resolve

    seen = {}
    for name in ["base", "dot", "cos", "dcorr", "ole", "importance", "trans5", "cov"]:
        params, _, _ = resolve(f"Crocodile_loss_{name}")
        seen[name] = params["aux_loss"]
        assert params["dataset_id"] == "kuairand_like"
    assert seen == {"base": "none", **{n: n for n in seen if n != "base"}}
