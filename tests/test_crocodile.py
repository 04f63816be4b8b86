"""Crocodile's own mechanisms: table-5 switches, eq. (8), towers isolated by domain, multi-embedding routing."""
import pytest
import torch
import torch.nn.functional as F

from mdl_bench.kernel.errors import UserError
from mdl_bench.model_zoo.layers import CovLoss, ElementwiseGate, SoftmaxGate
from conftest import build_model


@pytest.mark.parametrize("mode", ["ME", "SE"])
@pytest.mark.parametrize("gating", ["mmoe", "pg", "peg"])
@pytest.mark.parametrize("aux", ["none", "cov"])
def test_every_ablation_switch_trains(tiny, tiny_batch, mode, gating, aux):
    model = build_model(tiny, embedding_mode=mode, gating=gating, aux_loss=aux)
    assert model.embedding.num_tables == (model.num_domains if mode == "ME" else 1)
    assert isinstance(model.gate, ElementwiseGate if gating == "peg" else SoftmaxGate)
    assert (model.cov_loss is not None) == (aux == "cov")
    loss = model.train_step(tiny_batch)
    assert torch.isfinite(loss)
    assert ("cov" in model._loss_terms) == (aux == "cov")


def test_number_of_embeddings_defaults_to_domains_and_can_be_set(tiny):
    assert build_model(tiny).num_experts == 5
    model = build_model(tiny, num_embeddings=2)
    assert model.num_experts == 2 and model.embedding.num_tables == 2


def test_loss_is_eq8_plus_alpha_covloss(tiny, tiny_batch):
    # eq. (8)'s weighting, all rows (so that CovLoss() is the reference), no dropout (two forwards compared)
    model = build_model(tiny, cov_alpha=0.3, cov_sample_rows=0, loss_weighting="domain", net_dropout=0.0)
    model.train()
    torch.manual_seed(0)
    out = model(tiny_batch)
    y = model.get_labels(tiny_batch).view(-1)
    total = model.add_loss(out, y)
    ref = sum(F.binary_cross_entropy_with_logits(out["logit"][out["domain"] == s], y[out["domain"] == s])
              for s in range(model.num_domains))
    O, _ = model.expert_outputs(model.get_inputs(tiny_batch))
    ref = ref + 0.3 * CovLoss()(O)
    torch.testing.assert_close(total, ref)
    assert set(model._loss_terms) == {"bce", "cov"}


def test_prediction_ignores_other_domains_towers(tiny, tiny_batch):
    model = build_model(tiny)
    model.eval()
    with torch.no_grad():
        before = model(tiny_batch)
        model.towers.mlp.weights[0][2].add_(1.0)  # change only domain 2's tower
        after = model(tiny_batch)
    dom = before["domain"]
    assert torch.equal(before["y_pred"][dom != 2], after["y_pred"][dom != 2])
    assert not torch.equal(before["y_pred"][dom == 2], after["y_pred"][dom == 2])


def test_each_expert_reads_only_its_own_table(tiny, tiny_batch):
    model = build_model(tiny)
    X = model.get_inputs(tiny_batch)
    emb = model.embedding.flat(X).detach().requires_grad_(True)  # M x B x FD
    out = model.experts(emb)  # M x B x d
    out[1].sum().backward()
    grad_per_table = emb.grad.abs().sum(dim=(1, 2))
    assert grad_per_table[1] > 0 and torch.all(grad_per_table[[0, 2, 3, 4]] == 0)


def test_missing_prior_field_names_field_and_dataset(tiny):
    # caught when the config is resolved, before any data is built
    with pytest.raises(UserError, match=r"prior_fields names 'video_id', which is neither a role nor a field of "
                                        r"that dataset"):
        build_model(tiny, prior_fields=["user_id", "video_id"])
    # and by the model itself when it is built from a feature map directly
    from mdl_bench.model_zoo import get_model

    params = dict(tiny.params, prior_fields=["user_id", "video_id"])
    with pytest.raises(UserError, match=r"`prior_fields` names field 'video_id', which dataset 'tiny_synth' lacks"):
        get_model("Crocodile")(tiny.feature_map, **params)


def test_bad_switch_values(tiny):
    with pytest.raises(UserError, match="gating must be peg, pg or mmoe"):
        build_model(tiny, gating="PEGG")


def test_dataset_with_other_number_of_domains_than_config(tiny):
    with pytest.raises(UserError, match=r"expects num_domains=6 but dataset 'tiny_synth' has 5 domains"):
        build_model(tiny, num_domains=6)
