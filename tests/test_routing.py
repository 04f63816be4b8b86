"""Per-domain modules run on their own domain's rows: routed MLPs and towers against each module called alone on
its domain's rows (outputs, batch-norm statistics, gradients), and models whose towers ignore other domains' rows."""
import copy

import pytest
import torch

from mdl_bench.model_zoo.layers import BatchedMLP, DomainGroups, DomainTowers, gather_domain
from mdl_bench.model_zoo.layers.norms import domain_batch_norm
from conftest import build_model

K, I, HIDDEN = 4, 5, [7, 6]
# domain 1: one row (no batch variance), domain 2: no row at all
COUNTS = [9, 1, 0, 12]


def batch(seed=0, counts=COUNTS):
    g = torch.Generator().manual_seed(seed)
    domain = torch.cat([torch.full((n,), s) for s, n in enumerate(counts)])
    domain = domain[torch.randperm(len(domain), generator=g)]  # rows of a domain scattered over the batch
    return torch.randn(len(domain), I, generator=g), domain


def trained_mlp(output_dim=1, dropout=0.0):
    torch.manual_seed(1)
    mlp = BatchedMLP(K, I, HIDDEN, output_dim=output_dim, batch_norm=True, dropout=dropout)
    for norm in mlp.norms:  # running statistics and affine parameters away from their initial values
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.5, 0.5)
    return mlp


def alone(mlp, x, domain, s, weight):
    """Reference: a fresh copy of the MLPs called (the ordinary batched forward) on domain ``s``'s rows only;
    MLP ``s``'s output, and its gradients of ``(out * weight).sum()``."""
    ref = copy.deepcopy(mlp)
    rows = (domain == s).nonzero().view(-1)
    xs = x[rows].detach().requires_grad_(True)
    out = ref(xs)[s]  # n_s x O
    (out * weight[rows]).sum().backward()
    return ref, rows, out, xs.grad


@pytest.mark.parametrize("per_domain_input", [False, True])
def test_routed_mlp_in_training_equals_each_mlp_alone_on_its_rows(per_domain_input):
    mlp = trained_mlp(output_dim=3)
    x, domain = batch()
    B = len(domain)
    weight = torch.randn(B, 3)
    if per_domain_input:  # slot s = domain s's input of every row; a row reads its own slot
        slots = torch.randn(K, B, I)
        slots[domain, torch.arange(B)] = x
        inp = slots.requires_grad_(True)
    else:
        inp = x.clone().requires_grad_(True)
    routed = copy.deepcopy(mlp).train()
    groups = DomainGroups(domain, K)
    out = routed.routed(inp, groups)
    assert out.shape == (B, 3)
    (out * weight).sum().backward()
    x_grad = inp.grad[domain, torch.arange(B)] if per_domain_input else inp.grad
    if per_domain_input:  # other slots are not read
        other = torch.ones(K, B, dtype=torch.bool)
        other[domain, torch.arange(B)] = False
        assert inp.grad[other].abs().max() == 0
    for s in range(K):
        ref, rows, ref_out, ref_x_grad = alone(mlp.train(), x, domain, s, weight)
        torch.testing.assert_close(out[rows], ref_out, msg=f"domain {s} output")
        torch.testing.assert_close(x_grad[rows], ref_x_grad, msg=f"domain {s} input gradient")
        for layer, (w, b) in enumerate(zip(routed.weights, routed.biases)):
            torch.testing.assert_close(w.grad[s], ref.weights[layer].grad[s])
            torch.testing.assert_close(b.grad[s], ref.biases[layer].grad[s])
        for norm, ref_norm in zip(routed.norms, ref.norms):
            H = norm.num_features // K
            for name in ("running_mean", "running_var"):
                torch.testing.assert_close(getattr(norm, name).view(K, H)[s], getattr(ref_norm, name).view(K, H)[s],
                                           msg=f"domain {s} {name}")
            torch.testing.assert_close(norm.weight.grad.view(K, H)[s], ref_norm.weight.grad.view(K, H)[s])
            torch.testing.assert_close(norm.bias.grad.view(K, H)[s], ref_norm.bias.grad.view(K, H)[s])
    # the empty domain: zero gradient (its weights are in the graph) and untouched running statistics
    assert all(w.grad[2].abs().max() == 0 for w in routed.weights)
    for norm, before in zip(routed.norms, mlp.norms):
        H = norm.num_features // K
        for s in (1, 2):  # one row: no usable variance, running statistics used and kept
            torch.testing.assert_close(norm.running_mean.view(K, H)[s], before.running_mean.view(K, H)[s])


def test_routed_mlp_batch_norm_statistics_come_from_the_domain_alone():
    """A domain's normalised rows do not move when another domain's rows change."""
    mlp = trained_mlp().train()
    x, domain = batch()
    out = mlp.routed(x, DomainGroups(domain, K))
    changed = x.clone()
    changed[domain == 3] = 10 * torch.randn(int((domain == 3).sum()), I)
    out2 = copy.deepcopy(trained_mlp()).train().routed(changed, DomainGroups(domain, K))
    torch.testing.assert_close(out2[domain == 0], out[domain == 0])
    assert not torch.allclose(out2[domain == 3], out[domain == 3])


def test_routed_mlp_in_evaluation_equals_every_mlp_on_every_row():
    mlp = trained_mlp(output_dim=2).eval()
    x, domain = batch(3)
    torch.testing.assert_close(mlp.routed(x, DomainGroups(domain, K)), gather_domain(mlp(x), domain))


def test_domain_towers_keep_row_order_and_match_the_towers_run_alone():
    torch.manual_seed(0)
    towers = DomainTowers(K, I, HIDDEN, batch_norm=True).eval()
    x, domain = batch(4)
    logits = towers(x, DomainGroups(domain, K))
    assert logits.shape == (len(domain),)
    torch.testing.assert_close(logits, gather_domain(towers.all_domains(x), domain))
    slots = torch.randn(K, len(domain), I)
    torch.testing.assert_close(towers(slots, DomainGroups(domain, K)), gather_domain(towers.all_domains(slots), domain))
    # row b's logit is that of row b: shuffling the batch shuffles the logits the same way
    perm = torch.randperm(len(domain))
    torch.testing.assert_close(towers(x[perm], DomainGroups(domain[perm], K)), logits[perm])


def test_domain_batch_norm_equals_batchnorm1d_on_each_block():
    torch.manual_seed(0)
    H = 3
    norm = torch.nn.BatchNorm1d(K * H, momentum=0.3).train()
    x, domain = torch.randn(20, H), torch.tensor([0] * 6 + [1] * 1 + [3] * 13)
    out = domain_batch_norm(norm, x, domain, [6, 1, 0, 13])
    for s, rows in ((0, slice(0, 6)), (3, slice(7, 20))):
        ref = torch.nn.BatchNorm1d(H, momentum=0.3).train()
        torch.testing.assert_close(out[rows], ref(x[rows]))
        torch.testing.assert_close(norm.running_mean.view(K, H)[s], ref.running_mean)
        torch.testing.assert_close(norm.running_var.view(K, H)[s], ref.running_var)
    # the lonely row: normalised with the (initial) running statistics, which stay
    torch.testing.assert_close(out[6], x[6] / (1 + norm.eps) ** 0.5)
    torch.testing.assert_close(norm.running_mean.view(K, H)[1], torch.zeros(H))


def test_an_empty_domain_keeps_its_parameters_in_the_graph():
    mlp = trained_mlp().train()
    x, domain = batch(counts=[5, 0, 0, 4])
    mlp.routed(x, DomainGroups(domain, K)).sum().backward()
    for p in mlp.parameters():
        assert p.grad is not None
    assert mlp.weights[0].grad[1].abs().max() == 0


# ---------------------------------------------------------------- models

TOWER_MODELS = ["SharedBottom_test", "MMoE_test", "ME_MMoE_test", "Crocodile_test", "PLE_test", "ME_PLE_test",
                "SDEM_test", "HiNet_test", "PEPNet_test"]


def towers_train_rest_eval(model):
    model.eval()
    towers = [m for name, m in model.named_modules() if name.startswith("tower") and "gate" not in name]
    assert towers, "no tower module found"
    for m in towers:
        m.train()
    return model


@pytest.mark.parametrize("expid", TOWER_MODELS)
def test_a_rows_tower_output_ignores_other_domains_rows(tiny, tiny_batch, expid):
    """Towers in training mode with batch norm, everything before them frozen (evaluation mode): the logits of
    domain 0's rows do not change when the other domains' rows of the batch change."""
    model = build_model(tiny, expid, batch_norm=True, net_dropout=0.0)
    twin = towers_train_rest_eval(copy.deepcopy(model))
    towers_train_rest_eval(model)
    X = model.get_inputs(tiny_batch)
    domain = model.domain_of(X)
    # other domains' rows get the features of other rows of the same domain (their domain field unchanged)
    changed = {}
    for key, value in X.items():
        value = value.clone()
        for s in range(1, model.num_domains):
            rows = (domain == s).nonzero().view(-1)
            value[rows] = value[rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(s))]]
        changed[key] = value
    with torch.no_grad():
        logit, _ = model.logits(X, domain)
        logit2, _ = twin.logits(changed, twin.domain_of(changed))
    own = domain == 0
    assert int(own.sum()) >= 2
    torch.testing.assert_close(logit2[own], logit[own])
    assert not torch.allclose(logit2[~own], logit[~own]), "the change should reach the other domains' rows"


# ---------------------------------------------------------------- extraction levels
@pytest.mark.parametrize("scope,gate_input,streams", [("own", "stream", False), ("own", "stream", True),
                                                      ("all", "stream+shared", True), ("all", "stream", False)])
def test_extraction_own_mixture_in_evaluation_is_the_rows_domain_slot(scope, gate_input, streams):
    from mdl_bench.model_zoo.layers.extraction import ExtractionNetwork

    torch.manual_seed(2)
    net = ExtractionNetwork(K, I, [[6], [5, 4]], num_specific=2, num_shared=2, gate_scope=scope,
                            gate_input=gate_input, batch_norm=True).eval()
    x, domain = batch(5)
    if streams:
        x = torch.randn(K + 1, len(domain), I)
    mixtures, _ = net(x)
    torch.testing.assert_close(net.own(x, DomainGroups(domain, K)), gather_domain(mixtures, domain))


def test_extraction_own_scope_runs_a_domains_experts_on_its_rows_only():
    """Training mode with batch norm: domain s's specific experts of the last level see domain s's rows alone
    (reference: the experts called on those rows), the shared experts every row."""
    from mdl_bench.model_zoo.layers.extraction import ExtractionLayer

    torch.manual_seed(3)
    n = 2
    layer = ExtractionLayer(K, I, [6, 5], num_specific=n, num_shared=1, gate_scope="own", batch_norm=True)
    x, domain = batch(6)
    streams = torch.randn(K + 1, len(domain), I)
    routed = copy.deepcopy(layer).train()
    out = routed.own(streams, DomainGroups(domain, K))
    shared_ref = copy.deepcopy(layer).train()
    shared_out = shared_ref.experts(streams[K])[K * n:]  # shared experts: every row
    for s in range(K):
        rows = (domain == s).nonzero().view(-1)
        ref = copy.deepcopy(layer).train()
        own_out = ref.experts(streams[s, rows])[s * n:(s + 1) * n]  # domain s's experts on its rows alone
        g = torch.softmax(ref.domain_gates(streams[s, rows])[s], dim=-1)  # n_s x (n + 1)
        expected = torch.einsum("be,ebh->bh", g, torch.cat([own_out, shared_out[:, rows]]))
        torch.testing.assert_close(out[rows], expected, msg=f"domain {s}")
        for norm, ref_norm in zip(routed.experts.norms, ref.experts.norms):
            H = norm.num_features // layer.num_experts
            cols = slice(s * n * H, (s + 1) * n * H)
            torch.testing.assert_close(norm.running_mean[cols], ref_norm.running_mean[cols])
            torch.testing.assert_close(norm.running_var[cols], ref_norm.running_var[cols])
    for norm, ref_norm in zip(routed.experts.norms, shared_ref.experts.norms):
        H = norm.num_features // layer.num_experts
        torch.testing.assert_close(norm.running_mean[K * n * H:], ref_norm.running_mean[K * n * H:])
