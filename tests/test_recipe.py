"""The training-recipe switches every model takes the same way (base class options), each against a reference
computed another way: the loss weighting (eq. 8's per-domain means, or the plain batch mean) and the scope of the
embedding regulariser (FuxiCTR's whole tables, or the rows the batch looks up)."""
import numpy as np
import pytest
import torch

from conftest import build_model
from mdl_bench.model_zoo.core.errors import UserError

LAMBDA = 1e-2


def _bce(logit: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = 1.0 / (1.0 + np.exp(-logit))
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


@pytest.mark.parametrize("expid", ["SharedBottom_test", "Crocodile_test"])
def test_loss_weighting_domain_is_eq8_and_batch_is_the_plain_mean(tiny, tiny_batch, expid):
    for weighting in ("domain", "batch"):
        model = build_model(tiny, expid, loss_weighting=weighting, embedding_regularizer=0, net_regularizer=0)
        model.eval()
        with torch.no_grad():
            out = model(tiny_batch)
            y = model.get_labels(tiny_batch).view(-1).double().numpy()
            model.add_loss(out, model.get_labels(tiny_batch))
        per_row = _bce(out["logit"].double().numpy(), y)
        domain = out["domain"].numpy()
        expected = (sum(per_row[domain == s].mean() for s in np.unique(domain)) if weighting == "domain"
                    else per_row.mean())
        assert float(model._loss_terms["bce"]) == pytest.approx(expected, rel=1e-5)


def test_the_default_weighting_is_eq8(tiny):
    assert build_model(tiny, "SharedBottom_test").loss_weighting == "domain"
    assert build_model(tiny, "SharedBottom_test").embedding_regularizer_scope == "table"


def _table_weights(model) -> dict:
    from fuxictr.pytorch.layers import FeatureEmbeddingDict

    out = {}
    for m in model.modules():
        if type(m) is FeatureEmbeddingDict:
            for field, layer in m.embedding_layers.items():
                if isinstance(layer, torch.nn.Embedding):
                    out[field] = layer.weight
    return out


def test_embedding_regularizer_scope_table_and_batch_against_numpy(tiny, tiny_batch):
    values = {}
    for scope in ("table", "batch"):
        model = build_model(tiny, "SharedBottom_test", embedding_regularizer=LAMBDA, net_regularizer=0,
                            embedding_regularizer_scope=scope)
        model.train()
        model(tiny_batch)
        X = model.get_inputs(tiny_batch)
        weights = _table_weights(model)
        if scope == "table":
            expected = sum(LAMBDA / 2 * (w.detach().double().numpy() ** 2).sum() for w in weights.values())
        else:
            expected = sum(LAMBDA / 2 * (w.detach().double().numpy()[np.unique(X[f].numpy())] ** 2).sum()
                           for f, w in weights.items())
        values[scope] = float(model.regularization_loss().detach())
        assert values[scope] == pytest.approx(expected, rel=1e-5)
    assert values["batch"] < values["table"]  # the batch looks up a part of the rows


def test_batch_scope_regularizer_leaves_rows_outside_the_batch_alone(tiny, tiny_batch):
    model = build_model(tiny, "SharedBottom_test", embedding_regularizer=LAMBDA, net_regularizer=0,
                        embedding_regularizer_scope="batch")
    model.train()
    model(tiny_batch)
    model.zero_grad()
    model.regularization_loss().backward()
    X = model.get_inputs(tiny_batch)
    for field, weight in _table_weights(model).items():
        seen = torch.zeros(weight.shape[0], dtype=torch.bool)
        seen[X[field].long().unique()] = True
        grad = weight.grad if weight.grad is not None else torch.zeros_like(weight)
        assert torch.all(grad[~seen] == 0), field
        torch.testing.assert_close(grad[seen], LAMBDA * weight.detach()[seen])  # d/dw of lambda/2 w^2


@pytest.mark.parametrize("key, value", [("loss_weighting", "mean"), ("embedding_regularizer_scope", "rows")])
def test_a_wrong_switch_value_is_one_line_naming_the_choices(key, value):
    from mdl_bench.benchmark.runner import resolve

    with pytest.raises(UserError) as err:
        resolve("SharedBottom_test", None, {key: value})
    text = str(err.value)
    assert key in text and "\n" not in text
