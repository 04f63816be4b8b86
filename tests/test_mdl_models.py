"""The defining mechanism of each MDL baseline (PEPNet, HiNet, STAR, AdaSparse) and their shared layers,
checked against references computed another way (explicit per-row loops, constant gates, hand-made batches)."""
import pytest
import torch
import torch.nn.functional as F

from mdl_bench.kernel.errors import UserError
from mdl_bench.model_zoo.layers.gate_nu import GateNU
from mdl_bench.model_zoo.layers.partitioned_norm import PartitionedNorm
from conftest import build_model


def inputs(model, batch):
    X = model.get_inputs(batch)
    return X, model.domain_of(X)


# ---------------------------------------------------------------- layers
def test_gate_nu_matches_formula_and_lies_in_0_2():
    torch.manual_seed(0)
    gate = GateNU(6, 4, hidden_dim=5)
    x = torch.randn(9, 6)
    ref = 2 * torch.sigmoid(gate.output.weight @ torch.relu(gate.hidden.weight @ x.T + gate.hidden.bias[:, None])
                            + gate.output.bias[:, None]).T
    out = gate(x)
    torch.testing.assert_close(out, ref)
    assert out.shape == (9, 4) and torch.all((out > 0) & (out < 2))


def reference_pn(x, domain, K, eps):
    """Normalise each domain's rows with that domain's own mean and biased variance (explicit loop)."""
    out = torch.empty_like(x)
    for d in range(K):
        rows = x[domain == d]
        out[domain == d] = (rows - rows.mean(0)) / torch.sqrt(rows.var(0, unbiased=False) + eps)
    return out


def test_partitioned_norm_uses_each_domains_own_statistics():
    torch.manual_seed(1)
    K, I = 3, 4
    domain = torch.tensor([0, 1, 2] * 20)
    # Domains differ in mean (0, 5, -3) and scale (1, 2, 0.5): whole-batch statistics would mix them.
    x = torch.randn(60, I) * torch.tensor([1.0, 2.0, 0.5])[domain, None] + torch.tensor([0.0, 5.0, -3.0])[domain, None]
    pn = PartitionedNorm(I, K, momentum=1.0)
    pn.train()
    out = pn(x, domain)
    torch.testing.assert_close(out, reference_pn(x, domain, K, pn.eps))
    for d in range(K):
        torch.testing.assert_close(out[domain == d].mean(0), torch.zeros(I), atol=1e-5, rtol=0)
    batch_norm = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + pn.eps)
    assert not torch.allclose(out, batch_norm, atol=1e-2)
    # momentum 1: the moving averages are this batch's per-domain mean and unbiased variance
    for d in range(K):
        torch.testing.assert_close(pn.running_mean[d], x[domain == d].mean(0))
        torch.testing.assert_close(pn.running_var[d], x[domain == d].var(0, unbiased=True))


def test_partitioned_norm_affine_inference_and_lonely_rows():
    torch.manual_seed(2)
    K, I = 2, 3
    pn = PartitionedNorm(I, K)
    with torch.no_grad():
        pn.gamma.uniform_(0.5, 2), pn.domain_gamma.uniform_(0.5, 2)
        pn.beta.normal_(), pn.domain_beta.normal_()
        pn.running_mean.normal_(), pn.running_var.uniform_(0.5, 2)
    x, domain = torch.randn(7, I), torch.tensor([0, 1, 0, 1, 1, 0, 1])
    pn.eval()
    out = pn(x, domain)
    for b in range(7):
        d = domain[b]
        z = (x[b] - pn.running_mean[d]) / torch.sqrt(pn.running_var[d] + pn.eps)
        torch.testing.assert_close(out[b], z * pn.gamma * pn.domain_gamma[d] + pn.beta + pn.domain_beta[d])
    # A domain with one row in a training batch is normalised with its moving averages, which stay put.
    pn.train()
    before = pn.running_mean[0].clone()
    domain = torch.tensor([0, 1, 1, 1, 1, 1, 1])
    out = pn(x, domain)
    torch.testing.assert_close(pn.running_mean[0], before)
    z0 = (x[0] - pn.running_mean[0]) / torch.sqrt(pn.running_var[0] + pn.eps)
    torch.testing.assert_close(out[0], z0 * pn.gamma * pn.domain_gamma[0] + pn.beta + pn.domain_beta[0])


# ---------------------------------------------------------------- STAR
def star_reference_logit(model, X, domain):
    """STAR's logit row by row, with each row's own-domain weights W ⊙ W_d (eval mode: moving averages)."""
    emb = model.embedding(X)[0]
    pn = model.input_norm
    logits = []
    for b in range(emb.shape[0]):
        d = int(domain[b])
        h = emb[b].flatten()
        h = (h - pn.running_mean[d]) / torch.sqrt(pn.running_var[d] + pn.eps) * pn.gamma * pn.domain_gamma[d] \
            + pn.beta + pn.domain_beta[d]
        for layer in model.star_layers:
            h = torch.relu(h @ (layer.weight * layer.domain_weight[d]) + layer.bias + layer.domain_bias[d])
        out = model.star_output
        s_m = h @ (out.weight * out.domain_weight[d]) + out.bias + out.domain_bias[d]
        logits.append(s_m.squeeze())
    aux = model.aux_net(model.aux_inputs(emb).flatten(1)).squeeze(-1)
    return torch.stack(logits) + aux


def test_star_effective_weight_is_shared_times_domain(tiny, tiny_batch):
    model = build_model(tiny, "STAR_test")
    X, domain = inputs(model, tiny_batch)
    with torch.no_grad():  # leave the initial all-ones leaves, so that W_d matters
        for layer in list(model.star_layers) + [model.star_output]:
            layer.domain_weight.uniform_(0.0, 2.0)
            layer.domain_bias.normal_(std=0.1)
        model.input_norm.running_mean.normal_()
        model.input_norm.running_var.uniform_(0.5, 2.0)
    layer = model.star_layers[0]
    W, b = layer.effective()
    torch.testing.assert_close(W, layer.weight.unsqueeze(0) * layer.domain_weight)
    model.eval()
    with torch.no_grad():
        logit, _ = model.logits(X, domain)
        torch.testing.assert_close(logit, star_reference_logit(model, X, domain), rtol=1e-4, atol=1e-5)


def test_star_normalises_each_domain_with_its_own_statistics(tiny, tiny_batch):
    model = build_model(tiny, "STAR_test", pn_momentum=1.0)
    X, domain = inputs(model, tiny_batch)
    seen = {}
    model.input_norm.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    model.train()
    model.logits(X, domain)
    torch.testing.assert_close(seen["out"], reference_pn(seen["x"], domain, model.num_domains, model.input_norm.eps))
    for d in range(model.num_domains):
        torch.testing.assert_close(model.input_norm.running_mean[d], seen["x"][domain == d].mean(0))
    assert not torch.allclose(model.input_norm.running_mean[0], model.input_norm.running_mean[1])


def test_star_logit_has_no_activation(tiny, tiny_batch):
    model = build_model(tiny, "STAR_test")
    X, domain = inputs(model, tiny_batch)
    model.eval()
    with torch.no_grad():
        model.star_output.bias.fill_(-20.0)
        logit, _ = model.logits(X, domain)
    assert torch.all(logit < 0)  # a ReLU on the logit would clamp these to 0 (p = 0.5)
    out = model(tiny_batch)
    assert torch.all(out["y_pred"] < 0.5)


# ---------------------------------------------------------------- PEPNet
def embedding_grads(model, batch, replace_gates=None):
    """Gradient of the loss w.r.t. the main embedding table; ``replace_gates`` maps GateNU -> constant output."""
    model.zero_grad()
    handles = [gate.register_forward_hook(lambda m, a, out, v=value: v) for gate, value in (replace_gates or {}).items()]
    model.train()
    loss = model.add_loss(model(batch), model.get_labels(batch))
    loss.backward()
    for h in handles:
        h.remove()
    return torch.cat([p.grad.flatten().clone() for p in model.embedding.parameters()])


def test_pepnet_gates_lie_in_0_2(tiny, tiny_batch):
    model = build_model(tiny, "PEPNet_test")
    X, _ = inputs(model, tiny_batch)
    with torch.no_grad():
        gates = model.gates(X)
    assert len(gates) == 1 + len(model.dnn_gates) + len(model.tower_gates)
    assert gates[0].shape == (X["user_id"].shape[0], model.embedding.num_fields)  # one factor per field
    for g in gates:
        assert torch.all((g > 0) & (g < 2))


def test_pepnet_no_gradient_reaches_embeddings_through_gate_inputs(tiny, tiny_batch):
    model = build_model(tiny, "PEPNet_test")
    gate_modules = [model.ep_gate] + list(model.dnn_gates) + list(model.tower_gates)
    captured = {}
    handles = [g.register_forward_hook(lambda m, a, out: captured.__setitem__(m, out.detach())) for g in gate_modules]
    model.eval()
    with torch.no_grad():
        model(tiny_batch)
    for h in handles:
        h.remove()
    # Reference: the same network with every gate frozen to its value - only the main path is left.
    main_path_only = embedding_grads(model, tiny_batch, captured)
    with_stop_gradient = embedding_grads(model, tiny_batch)
    torch.testing.assert_close(with_stop_gradient, main_path_only)
    assert with_stop_gradient.abs().sum() > 0  # the embeddings learn through the main path
    model.stop_gradient = False  # without the stop-gradient the gate path adds its own gradient
    assert not torch.allclose(embedding_grads(model, tiny_batch), main_path_only)


def test_pepnet_embeddings_change_after_a_step(tiny, tiny_batch):
    model = build_model(tiny, "PEPNet_test")
    before = [p.detach().clone() for p in model.embedding.parameters()]
    model.train_step(tiny_batch)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.embedding.parameters()))


# ---------------------------------------------------------------- HiNet
def test_hinet_attention_masks_the_current_scenario(tiny, tiny_batch):
    model = build_model(tiny, "HiNet_test")
    X, domain = inputs(model, tiny_batch)
    with torch.no_grad():
        _, specific, scenario_emb = model.scenario_layer(X)
        w = model.attention(scenario_emb, domain)
    B, K = w.shape[0], model.num_domains
    assert w.shape == (B, K)
    assert torch.all(w[torch.arange(B), domain] == 0)  # exactly zero, not small
    torch.testing.assert_close(w.sum(1), torch.ones(B))
    others = torch.ones(B, K, dtype=torch.bool)
    others[torch.arange(B), domain] = False
    assert torch.all(w[others] > 0)
    # the weights are a softmax over the other scenarios of W e_s
    scores = model.san(scenario_emb)
    b = 0
    keep = [k for k in range(K) if k != int(domain[b])]
    torch.testing.assert_close(w[b, keep], torch.softmax(scores[b, keep], 0))


def test_hinet_task_layer_is_per_scenario_and_seis_are_reported(tiny, tiny_batch):
    model = build_model(tiny, "HiNet_test")
    X, domain = inputs(model, tiny_batch)
    model.eval()
    with torch.no_grad():
        before, _ = model.logits(X, domain)
        model.task_experts[2].weights[0].add_(0.5)  # only scenario 2's task layer
        after, _ = model.logits(X, domain)
        O, bound = model.expert_outputs_for_analysis(X)
    assert torch.equal(before[domain != 2], after[domain != 2])
    assert not torch.equal(before[domain == 2], after[domain == 2])
    assert O.shape[0] == model.num_domains + 1 and bound == [None] + list(range(model.num_domains))


# ---------------------------------------------------------------- AdaSparse
def test_adasparse_prunes_small_factors_to_exactly_zero(tiny, tiny_batch):
    model = build_model(tiny, "AdaSparse_test", epsilon=0.5)
    X, _ = inputs(model, tiny_batch)
    with torch.no_grad():
        for pruner in model.pruners:  # spread the factors: at init they all sit near 1
            pruner.bias.normal_(std=2.0)
        _, pis, soft = model.forward_layers(X)
    pruned_some = False
    for pi, s in zip(pis, soft):
        scaled = model.beta * s
        small = scaled < model.epsilon
        assert torch.all(pi[small] == 0)  # exactly 0 - never -pi as sign(pi - eps) would give
        torch.testing.assert_close(pi[~small], scaled[~small])
        assert torch.all(pi >= 0) and torch.all(pi < model.beta)
        pruned_some |= bool(small.any())
    assert pruned_some


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adasparse_fusion_cut_keeps_exactly_the_factors_at_or_above_epsilon(dtype):
    """The cut (a threshold just below epsilon) against the mask it replaces, on the boundary itself: a factor equal
    to epsilon stays, the one just below goes, and the gradients agree."""
    import torch.nn.functional as F

    from mdl_bench.model_zoo.AdaSparse import just_below

    eps = 0.25
    at = torch.tensor(eps, dtype=dtype)
    below, above = torch.nextafter(at, torch.tensor(0.0, dtype=dtype)), torch.nextafter(at, torch.tensor(1.0, dtype=dtype))
    values = torch.cat([torch.stack([at, below, above]), torch.rand(200, dtype=dtype) * 2]).requires_grad_()
    cut = F.threshold(values, just_below(eps, dtype), 0.0)
    masked = torch.where(values < eps, torch.zeros_like(values), values)
    assert torch.equal(cut, masked) and cut[0] == eps and cut[1] == 0 and cut[2] == above
    weights = torch.rand_like(values)
    (grad_cut,) = torch.autograd.grad((cut * weights).sum(), values)
    (grad_masked,) = torch.autograd.grad((masked * weights).sum(), values)
    assert torch.equal(grad_cut, grad_masked)


def test_adasparse_binarization_is_zero_one_with_straight_through_gradient(tiny, tiny_batch):
    model = build_model(tiny, "AdaSparse_test", weighting="binarization")
    X, domain = inputs(model, tiny_batch)
    _, pis, _ = model.forward_layers(X)
    for pi in pis:
        assert set(pi.detach().unique().tolist()) <= {0.0, 1.0}
    logit, _ = model.logits(X, domain)
    logit.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.pruners.parameters())


def test_adasparse_alpha_anneals_with_training_steps_only(tiny, tiny_batch):
    model = build_model(tiny, "AdaSparse_test", alpha_init=1.0, alpha_step=0.5, alpha_max=2.2)
    X, _ = inputs(model, tiny_batch)
    assert model.alpha == 1.0
    model.eval()
    with torch.no_grad():
        model(tiny_batch), model(tiny_batch)
    assert model.alpha == 1.0  # predicting does not anneal
    seen = []
    for _ in range(3):
        model.train_step(tiny_batch)
        seen.append(model.alpha)
    assert seen == [1.5, 2.0, 2.2]  # linear in steps, capped at alpha_max
    assert int(model.state_dict()["anneal_steps"]) == 3  # checkpoints carry it
    # alpha sharpens the pruner: s = sigmoid(alpha * (W [e_d, h] + b))
    emb = model.embedding(X)[0]
    e_d, h = model.domain_inputs(emb).flatten(1), emb.flatten(1)
    _, s = model.weighting_factors(e_d, h, model.pruners[0], model.alpha)
    torch.testing.assert_close(s, torch.sigmoid(2.2 * model.pruners[0](torch.cat([e_d, h], 1))))


def test_adasparse_sparsity_regulariser(tiny, tiny_batch):
    model = build_model(tiny, "AdaSparse_test", sparsity_weight=0.5, sparsity_target=0.3)
    X, domain = inputs(model, tiny_batch)
    model.train()
    _, aux = model.logits(X, domain)
    _, _, soft = model.forward_layers(X)
    ref = 0.5 * sum((1 - s.mean() - 0.3).abs() for s in soft)
    torch.testing.assert_close(aux["sparsity"], ref)
    model.train_step(tiny_batch)
    assert "sparsity" in model._loss_terms
    assert "sparsity" not in build_model(tiny, "AdaSparse_test").logits(X, domain)[1]


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("expid, option", [("PEPNet_test", "ppnet_prior_fields"), ("PEPNet_test", "epnet_fields"),
                                           ("STAR_test", "aux_fields"), ("AdaSparse_test", "domain_fields")])
def test_missing_prior_field_is_a_one_line_error(tiny, expid, option):
    with pytest.raises(UserError) as info:
        build_model(tiny, expid, **{option: ["user_id", "no_such_field"]})
    message = str(info.value)
    assert "no_such_field" in message and "tiny_synth" in message and option in message and "\n" not in message


@pytest.mark.parametrize("expid", ["PEPNet_test", "HiNet_test", "STAR_test", "AdaSparse_test"])
def test_config_with_more_domains_than_the_data_is_an_error(tiny, expid):
    with pytest.raises(UserError, match="num_domains=6.*tiny_synth"):
        build_model(tiny, expid, num_domains=6)
