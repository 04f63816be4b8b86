"""The defining mechanism of each MTL baseline (SharedBottom, MMoE, PLE, ME-MMoE, ME-PLE, SDEM) and of Single
Domain, and the extraction layer they share, checked against references computed another way (explicit loops
over experts and domains) and by where gradients can and cannot flow."""
import pytest
import torch
import torch.nn.functional as F

from mdl_bench.kernel.errors import UserError
from mdl_bench.model_zoo.layers.extraction import ExtractionLayer, ExtractionNetwork, split_levels
from conftest import build_model

MTL_MODELS = ["SharedBottom", "MMoE", "PLE", "ME_MMoE", "ME_PLE", "SDEM", "SingleDomain"]


def inputs(model, batch):
    X = model.get_inputs(batch)
    return X, model.domain_of(X)


def domain_loss(model, batch, s):
    """BCE of the rows of domain ``s`` only (train mode), the gradient signal of domain s's rows."""
    model.zero_grad()
    model.train()
    X, domain = inputs(model, batch)
    logit, _ = model.logits(X, domain)
    rows = domain == s
    assert rows.any()
    F.binary_cross_entropy_with_logits(logit[rows], model.get_labels(batch).view(-1)[rows]).backward()


def table_grads(model):
    """Gradient mass on each of the M tables of ``model.embedding`` (slice p of every field's M*D columns; table p's
    own weights for a SeparateTables)."""
    from mdl_bench.model_zoo.layers import SeparateTables

    emb = model.embedding
    if isinstance(emb, SeparateTables):
        return torch.stack([sum((p.grad.abs().sum() for p in table.parameters() if p.grad is not None),
                                torch.zeros(())) for table in emb.tables])
    total = torch.zeros(emb.num_tables)
    for p in emb.parameters():
        if p.grad is not None:
            total += p.grad.view(p.shape[0], emb.num_tables, emb.embedding_dim).abs().sum(dim=(0, 2))
    return total


def expert_grads(mlp):
    """Gradient mass on each MLP of a BatchedMLP (all layers)."""
    return sum(w.grad.abs().sum(dim=(1, 2)) for w in mlp.weights)


# ---------------------------------------------------------------- extraction layer
def reference_level(layer, x):
    """One extraction level computed expert by expert and domain by domain with explicit loops."""
    K, E = layer.num_domains, layer.num_experts
    W, b = layer.experts.weights[0], layer.experts.biases[0]
    stream_of = [K if d is None else d for d in layer.bound]
    O = [torch.relu(x[stream_of[e]] @ W[e] + b[e, 0]) for e in range(E)]
    out = []
    for s in range(K):
        visible = [e for e in range(E) if layer.gate_scope == "all" or layer.bound[e] in (None, s)]
        gate_in = x[s] + x[K] if layer.gate_input == "stream+shared" else x[s]
        g = torch.softmax(gate_in @ layer.domain_gates.weights[0][s] + layer.domain_gates.biases[0][s, 0], dim=-1)
        out.append(sum(g[:, [i]] * O[e] for i, e in enumerate(visible)))
    if layer.shared_gate is not None:
        g = torch.softmax(x[K] @ layer.shared_gate.weights[0][0] + layer.shared_gate.biases[0][0, 0], dim=-1)
        out.append(sum(g[:, [e]] * O[e] for e in range(E)))
    return torch.stack(out)


@pytest.mark.parametrize("scope, gate_input, shared_gate", [("own", "stream", True), ("own", "stream", False),
                                                            ("all", "stream+shared", False), ("all", "stream", True)])
def test_extraction_layer_matches_explicit_loops(scope, gate_input, shared_gate):
    torch.manual_seed(0)
    K, B, I = 3, 7, 5
    layer = ExtractionLayer(K, I, [4], num_specific=2, num_shared=2, gate_scope=scope, gate_input=gate_input,
                            shared_gate=shared_gate)
    for p in layer.parameters():  # non-zero biases, so that a wrong bias index would show
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(K + 1, B, I)
    out = layer(x)
    assert out.shape == (K + int(shared_gate), B, 4)
    torch.testing.assert_close(out, reference_level(layer, x))
    weights, shared = layer.gate_weights(x)
    torch.testing.assert_close(weights.sum(-1), torch.ones(K, B))
    if scope == "own":  # exactly zero weight on other domains' experts
        for s in range(K):
            others = [e for e, d in enumerate(layer.bound) if d not in (None, s)]
            assert torch.all(weights[s][:, others] == 0)
    assert (shared is not None) == shared_gate


def test_extraction_layer_single_input_feeds_every_stream():
    torch.manual_seed(1)
    layer = ExtractionLayer(2, 5, [4, 3], num_specific=1, num_shared=1, shared_gate=True)
    x = torch.randn(6, 5)
    torch.testing.assert_close(layer(x), layer(x.unsqueeze(0).expand(3, -1, -1)))


def test_stem_gate_forwards_all_experts_but_backpropagates_only_own_and_shared():
    torch.manual_seed(2)
    K, B, I = 3, 16, 5
    layer = ExtractionLayer(K, I, [4], num_specific=1, num_shared=1, gate_scope="all", gate_input="stream+shared")
    x = torch.randn(K + 1, B, I, requires_grad=True)
    out = layer(x)
    for s in range(K):
        layer.zero_grad()
        x.grad = None
        out[s].sum().backward(retain_graph=True)
        g = expert_grads(layer.experts)  # experts 0..K-1 domain-specific, K shared
        for e in range(K):
            assert (g[e] > 0) if e == s else (g[e] == 0), (s, e)
        assert g[K] > 0
        # streams: own and shared reach the output (experts and gate); other domains' streams do not at all
        reached = x.grad.abs().sum(dim=(1, 2))
        assert reached[s] > 0 and reached[K] > 0
        assert all(reached[j] == 0 for j in range(K) if j != s)
        assert layer.domain_gates.weights[0].grad[s].abs().sum() > 0  # the gate learns from every expert's value
    # ... while the value of another domain's expert does change domain s's output (all forward)
    with torch.no_grad():
        layer.experts.biases[-1][1].add_(1.0)
        assert not torch.allclose(layer(x)[0], out[0])


def test_split_levels_and_its_error():
    assert split_levels([256, 128], 2, "PLE") == [[256], [128]]
    assert split_levels([256, 128], 1, "PLE") == [[256, 128]]
    assert split_levels([8, 6, 4, 2], 2, "PLE") == [[8, 6], [4, 2]]
    with pytest.raises(UserError, match="PLE.*num_levels=2"):
        split_levels([256, 128, 64], 2, "PLE")


def test_extraction_network_last_level_has_no_shared_gate():
    net = ExtractionNetwork(3, 5, [[6], [4]], num_specific=1, num_shared=2)
    assert net.levels[0].shared_gate is not None and net.levels[1].shared_gate is None
    mixtures, experts = net(torch.randn(7, 5))
    assert mixtures.shape == (3, 7, 4) and experts.shape == (5, 7, 4)
    assert net.bound == [0, 1, 2, None, None]


# ---------------------------------------------------------------- every MTL model
def perturb_tower(towers, s: int, by: float = 0.5) -> None:
    """Change domain ``s``'s tower only: its slice of every stacked weight and bias (``K x ...``), and its channels
    of the batch norms, which hold every tower's units side by side (``K*h``)."""
    mlp = towers.mlp
    for p in list(mlp.weights) + list(mlp.biases):
        p[s].add_(by)
    for norm in mlp.norms:
        h = norm.num_features // mlp.num_mlps
        for t in (norm.weight, norm.bias, norm.running_mean):
            t[s * h:(s + 1) * h].add_(by)


@pytest.mark.parametrize("name", MTL_MODELS)
def test_a_rows_prediction_ignores_other_domains_towers(tiny, tiny_batch, name):
    model = build_model(tiny, f"{name}_test")
    X, domain = inputs(model, tiny_batch)
    model.eval()
    with torch.no_grad():
        before, _ = model.logits(X, domain)
        if name == "SingleDomain":
            for p in model.dnns[2].parameters():
                p.add_(0.5)
        else:
            perturb_tower(model.towers, 2)  # only domain 2's tower
        after, _ = model.logits(X, domain)
    assert torch.equal(before[domain != 2], after[domain != 2])
    assert not torch.equal(before[domain == 2], after[domain == 2])


@pytest.mark.parametrize("name, experts, bound", [
    ("MMoE", None, "shared"), ("ME_MMoE", None, "shared"), ("PLE", "K+1", "bound"), ("ME_PLE", "K+1", "bound"),
    ("SDEM", "K+1", "bound"), ("SharedBottom", 0, None), ("SingleDomain", "K", "own")])
def test_expert_outputs_for_analysis(tiny, tiny_batch, name, experts, bound):
    model = build_model(tiny, f"{name}_test")
    X, _ = inputs(model, tiny_batch)
    with torch.no_grad():
        result = model.expert_outputs_for_analysis(X)
    K = model.num_domains
    if experts == 0:
        assert result is None
        return
    O, tags = result
    E = K + 1 if experts == "K+1" else K
    assert O.shape == (E, X["user_id"].shape[0], 8)
    expected = {"shared": [None] * E, "bound": list(range(K)) + [None], "own": list(range(K))}[bound]
    assert tags == expected


@pytest.mark.parametrize("name", MTL_MODELS)
def test_config_with_more_domains_than_the_data_is_an_error(tiny, name):
    with pytest.raises(UserError, match="num_domains=6.*tiny_synth") as info:
        build_model(tiny, f"{name}_test", num_domains=6)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["PLE", "ME_PLE", "SDEM"])
def test_levels_that_do_not_divide_the_expert_mlp_are_an_error(tiny, name):
    with pytest.raises(UserError, match=f"{name}: expert_hidden_units .* num_levels=3"):
        build_model(tiny, f"{name}_test", num_levels=3)


# ---------------------------------------------------------------- SharedBottom, MMoE
def test_shared_bottom_is_one_bottom_and_own_towers(tiny, tiny_batch):
    model = build_model(tiny, "SharedBottom_test")
    X, domain = inputs(model, tiny_batch)
    model.eval()
    with torch.no_grad():
        logit, _ = model.logits(X, domain)
        h = model.embedding(X)[0].flatten(1)
        for W, b in zip(model.bottom.weights, model.bottom.biases):
            h = torch.relu(h @ W[0] + b[0])
        t = model.towers.mlp
        for b_ in range(0, h.shape[0], 37):
            s = int(domain[b_])
            z = torch.relu(h[b_] @ t.weights[0][s] + t.biases[0][s, 0])
            torch.testing.assert_close(logit[b_], (z @ t.weights[1][s] + t.biases[1][s, 0]).squeeze())


def test_mmoe_gates_sum_to_one_and_mix_every_expert(tiny, tiny_batch):
    model = build_model(tiny, "MMoE_test")
    X, domain = inputs(model, tiny_batch)
    model.eval()
    with torch.no_grad():
        x = model.embedding.flat(X)[0]
        g = model.gate(x)  # B x K x E, every domain's gate
        B, K, E = g.shape
        assert (K, E) == (model.num_domains, model.num_experts)
        torch.testing.assert_close(g.sum(-1), torch.ones(B, K))
        assert torch.all(g > 0)
        O = model.experts(x)
        own = g[torch.arange(B), domain]  # B x E
        t = sum(own[:, [e]] * O[e] for e in range(E))
        ref = model.towers.all_domains(t)[domain, torch.arange(B)]
        logit, _ = model.logits(X, domain)
    torch.testing.assert_close(logit, ref)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_mmoe_gate_and_tower_of_a_domain_learn_only_from_its_rows(tiny, tiny_batch, batch_norm):
    # with batch norm too: a tower normalises with its own domain's rows only, so another domain's rows never
    # reach domain 0's loss through domain 1's gate and tower
    model = build_model(tiny, "MMoE_test", batch_norm=batch_norm)
    domain_loss(model, tiny_batch, 0)
    W = [m for m in model.gate.modules() if isinstance(m, torch.nn.Linear)][-1]  # outputs K*E logits
    grad = W.weight.grad.view(model.num_domains, model.num_experts, -1).abs().sum(dim=(1, 2))
    assert grad[0] > 0 and torch.all(grad[1:] == 0)
    tower = model.towers.mlp.weights[0].grad.abs().sum(dim=(1, 2))
    assert tower[0] > 0 and torch.all(tower[1:] == 0)
    assert torch.all(expert_grads(model.experts) > 0)  # every expert is shared


# ---------------------------------------------------------------- ME-MMoE
def test_me_mmoe_expert_is_reached_only_by_its_own_table(tiny, tiny_batch):
    model = build_model(tiny, "ME_MMoE_test")
    X, _ = inputs(model, tiny_batch)
    M = model.num_experts
    assert model.embedding.num_tables == M == model.num_domains
    for p in range(M):
        model.zero_grad()
        O, _ = model.expert_outputs_for_analysis(X)
        O[p].sum().backward()
        g = table_grads(model)
        assert g[p] > 0 and all(g[q] == 0 for q in range(M) if q != p), (p, g)
        assert all(expert_grads(model.experts)[q] == 0 for q in range(M) if q != p)


def test_me_mmoe_every_table_learns_from_every_domain(tiny, tiny_batch):
    model = build_model(tiny, "ME_MMoE_test")
    domain_loss(model, tiny_batch, 4)  # the smallest domain's rows reach every (shared) table and expert
    assert torch.all(table_grads(model) > 0) and torch.all(expert_grads(model.experts) > 0)


# ---------------------------------------------------------------- PLE, ME-PLE
@pytest.mark.parametrize("name", ["PLE", "ME_PLE"])
def test_ple_final_specific_experts_learn_only_from_their_domain(tiny, tiny_batch, name):
    model = build_model(tiny, f"{name}_test")
    K = model.num_domains
    first, last = model.extraction.levels
    assert first.shared_gate is not None and last.shared_gate is None
    domain_loss(model, tiny_batch, 1)
    g_last, g_first = expert_grads(last.experts), expert_grads(first.experts)
    assert g_last[1] > 0 and g_last[K] > 0  # own and shared experts of the final level
    assert all(g_last[e] == 0 for e in range(K) if e != 1)  # other domains' final experts: nothing
    # the shared gate of level 1 mixes every expert, so level-1 experts of other domains do learn from domain 1
    assert torch.all(g_first > 0)


def test_me_ple_with_one_level_isolates_domain_tables(tiny, tiny_batch):
    model = build_model(tiny, "ME_PLE_test", num_levels=1)
    K = model.num_domains
    assert model.embedding.num_tables == K + 1
    for s in (0, K - 1):
        domain_loss(model, tiny_batch, s)
        g = table_grads(model)
        assert g[s] > 0 and g[K] > 0  # own and shared tables
        assert all(g[j] == 0 for j in range(K) if j != s)


def test_ple_one_level_is_cgc(tiny, tiny_batch):
    model = build_model(tiny, "PLE_test", num_levels=1)
    (level,) = model.extraction.levels
    assert level.shared_gate is None and level.experts.weights[0].shape[-1] == 16  # [16, 8] in one expert
    X, domain = inputs(model, tiny_batch)
    with torch.no_grad():
        x = model.embedding.flat(X)[0]
        weights, _ = level.gate_weights(x)
    for s in range(model.num_domains):  # domain s's gate sees its own expert and the shared one only
        seen = (weights[s] > 0).any(0).nonzero().view(-1).tolist()
        assert seen == [s, model.num_domains]


# ---------------------------------------------------------------- SDEM
def test_sdem_domain_rows_send_no_gradient_into_other_domains(tiny, tiny_batch):
    model = build_model(tiny, "SDEM_test")
    K = model.num_domains
    (level,) = model.extraction.levels
    assert level.gate_scope == "all" and model.embedding.num_tables == K + 1
    for s in (0, K - 1):
        domain_loss(model, tiny_batch, s)
        g_experts, g_tables = expert_grads(level.experts), table_grads(model)
        assert g_experts[s] > 0 and g_experts[K] > 0 and g_tables[s] > 0 and g_tables[K] > 0
        assert all(g_experts[j] == 0 and g_tables[j] == 0 for j in range(K) if j != s)
        gate_grad = level.domain_gates.weights[0].grad.abs().sum(dim=(1, 2))
        assert gate_grad[s] > 0 and all(gate_grad[j] == 0 for j in range(K) if j != s)


def test_sdem_gate_weighs_every_expert_in_the_forward_pass(tiny, tiny_batch):
    model = build_model(tiny, "SDEM_test", gate_input="stream+shared")
    X, domain = inputs(model, tiny_batch)
    (level,) = model.extraction.levels
    model.eval()
    with torch.no_grad():
        emb = model.embedding.flat(X)
        weights, _ = level.gate_weights(emb)
        assert torch.all(weights > 0)  # every expert, other domains' included
        torch.testing.assert_close(weights.sum(-1), torch.ones(model.num_domains, emb.shape[1]))
        # the gate of domain s reads its table plus the shared one (STEM's gate(x[s] + x[-1]))
        s, W, b = 2, level.domain_gates.weights[0], level.domain_gates.biases[0]
        torch.testing.assert_close(weights[s], torch.softmax((emb[s] + emb[-1]) @ W[s] + b[s], dim=-1))
        before, _ = model.logits(X, domain)
        level.experts.biases[-1][3].add_(1.0)  # domain 3's expert changes every domain's prediction
        after, _ = model.logits(X, domain)
    assert not torch.allclose(before[domain == 0], after[domain == 0])


# ---------------------------------------------------------------- Single Domain
def test_single_domain_network_learns_only_from_its_rows(tiny, tiny_batch):
    model = build_model(tiny, "SingleDomain_test")
    K = model.num_domains
    for s in (0, K - 1):
        domain_loss(model, tiny_batch, s)
        g = table_grads(model)
        assert g[s] > 0 and all(g[j] == 0 for j in range(K) if j != s)
        for j, dnn in enumerate(model.dnns):
            mass = sum(p.grad.abs().sum() for p in dnn.parameters())
            assert (mass > 0) if j == s else (mass == 0), (s, j)


def test_single_domain_prediction_is_its_domains_dnn_on_its_table(tiny, tiny_batch):
    model = build_model(tiny, "SingleDomain_test")
    X, domain = inputs(model, tiny_batch)
    model.eval()
    with torch.no_grad():
        logit, _ = model.logits(X, domain)
        emb = model.embedding(X)  # M x B x F x D
        for b in range(0, emb.shape[1], 29):
            s = int(domain[b])
            torch.testing.assert_close(logit[b], model.dnns[s](emb[s, b].flatten().unsqueeze(0)).squeeze())
