"""The training-recipe switches every model takes the same way (base class options), each against a reference
computed another way: the loss weighting (eq. 8's per-domain means, or the plain batch mean) and the scope of the
embedding regulariser (FuxiCTR's whole tables, or the rows the batch looks up)."""
import numpy as np
import pytest
import torch

from conftest import build_model
from mdl_bench.kernel.errors import UserError

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


def test_the_base_class_defaults_are_eq8_and_fuxictrs_regulariser():
    """Without a config value a model trains with eq. (8) and FuxiCTR's whole-table regulariser; the tuned
    `_default` expids choose their own (the `tune` suite)."""
    import inspect

    from mdl_bench.model_zoo.base import MultiDomainModel

    params = inspect.signature(MultiDomainModel.__init__).parameters
    assert params["loss_weighting"].default == "domain"
    assert params["embedding_regularizer_scope"].default == "table"


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


# ---------------------------------------------------------------------------------------------- batch norm
from mdl_bench.model_zoo import model_location, registry  # noqa: E402

MODELS = sorted(name for name in registry() if model_location(name) is None)
RECIPE_KEYS = ("learning_rate", "batch_norm", "net_dropout", "loss_weighting", "embedding_regularizer",
               "embedding_regularizer_scope", "net_regularizer")


def _norm_modules(model) -> list:
    from mdl_bench.model_zoo.layers.partitioned_norm import PartitionedNorm

    return [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d, PartitionedNorm))]


@pytest.mark.parametrize("name", MODELS)
def test_every_model_takes_every_recipe_switch(name):
    from mdl_bench.benchmark.config import RUN_KEYS, model_keys

    taken = model_keys(registry()[name]) | RUN_KEYS
    assert [k for k in RECIPE_KEYS if k not in taken] == []


@pytest.mark.parametrize("name", MODELS)
def test_batch_norm_normalises_every_hidden_layer_it_adds(tiny, tiny_batch, name):
    """``batch_norm: true`` adds normalisation that runs in the forward pass: at initialisation (scale 1,
    shift 0) each one's training output has, per channel over the rows it normalises (per domain for STAR's
    partitioned norm and for the norms of per-domain MLPs run on their domain's rows), mean 0 and variance
    ``v / (v + eps)`` for an input variance ``v``; without it, only what a model has by design (STAR's input PN)
    remains."""
    from mdl_bench.model_zoo.layers.partitioned_norm import PartitionedNorm

    plain = build_model(tiny, f"{name}_test", batch_norm=False)
    model = build_model(tiny, f"{name}_test", batch_norm=True)
    added = len(_norm_modules(model)) - len(_norm_modules(plain))
    assert added >= 1
    outputs = []
    for module in _norm_modules(model):
        module.register_forward_hook(lambda m, args, out: outputs.append((m, args, out)))
    model.train()
    model(tiny_batch)
    assert len(outputs) >= len(_norm_modules(model))
    domain = model.domain_of(model.get_inputs(tiny_batch))
    for module, args, out in outputs:
        x = args[0]
        if isinstance(module, PartitionedNorm):
            groups = [(x[args[1] == s], out[args[1] == s]) for s in range(model.num_domains)]
        elif len(args) > 1:  # a BatchedMLP's norm, each domain's MLPs on that domain's (sorted) rows
            xs, outs, rows_domain = (x, out, args[1]) if x.dim() == 3 else (x[None], out[None], args[1])
            groups = [(xs[j][rows_domain == s], outs[j][rows_domain == s])
                      for j in range(xs.shape[0]) for s in range(len(args[2]))]
        elif x.dim() == 3:  # a BatchedMLP's norm, some of its MLPs on every row
            groups = [(x[j], out[j]) for j in range(x.shape[0])]
        else:
            groups = [(x, out)]
        for rows_in, rows in groups:
            if rows.shape[0] < 2:
                continue
            torch.testing.assert_close(rows.mean(0), torch.zeros(rows.shape[1]), atol=1e-4, rtol=0)
            # var / (var + eps): at FuxiCTR's embedding init (std 1e-4) eps still dominates the first layer
            var_in = rows_in.double().var(0, unbiased=False)
            expected = (var_in / (var_in + module.eps)).float()
            torch.testing.assert_close(rows.var(0, unbiased=False), expected, atol=2e-3, rtol=2e-2)
    assert domain.numel() == tiny_batch[model.feature_map.labels[0]].shape[0]


@pytest.mark.parametrize("name", MODELS)
def test_batch_norm_models_keep_the_contract(tiny, tiny_batch, tmp_path, name):
    from mdl_bench.benchmark import contract

    with pytest.MonkeyPatch.context() as patch:  # every check builds its model with batch_norm on
        build = contract.build_model
        patch.setattr(contract, "build_model", lambda *a, **kw: build(*a, **{"batch_norm": True, **kw}))
        contract.check_gradients(tiny, tiny_batch, f"{name}_test")
        contract.check_one_step(tiny, tiny_batch, f"{name}_test")
        contract.check_checkpoint(tiny, tiny_batch, f"{name}_test", tmp_path)


def test_row_safe_batch_norm_is_batch_norm_and_takes_one_or_no_row():
    from mdl_bench.model_zoo.layers.norms import RowSafeBatchNorm1d

    torch.manual_seed(0)
    x = torch.randn(7, 3) * 4 + 2
    ref, safe = torch.nn.BatchNorm1d(3), RowSafeBatchNorm1d(3)
    safe.load_state_dict(ref.state_dict())
    torch.testing.assert_close(safe(x), ref(x))
    torch.testing.assert_close(safe.running_mean, ref.running_mean)
    torch.testing.assert_close(safe.running_var, ref.running_var)
    before = {k: v.clone() for k, v in safe.state_dict().items()}
    one = safe(x[:1])  # training, one row: running statistics, left unchanged
    expected = (x[:1] - before["running_mean"]) / torch.sqrt(before["running_var"] + safe.eps)
    torch.testing.assert_close(one, expected)
    for key in ("running_mean", "running_var"):
        torch.testing.assert_close(safe.state_dict()[key], before[key])
    assert safe(x[:0]).shape == (0, 3)
    assert set(safe.state_dict()) == set(ref.state_dict())


# ---------------------------------------------------------------------------------------------- validation schedule
def test_evaluations_per_epoch_validates_evenly_and_ends_each_epoch(tiny, tmp_path):
    import math as _math

    from mdl_bench.benchmark.runner import run_expid

    result = run_expid("SharedBottom_test", None, {"epochs": 2, "evaluations_per_epoch": 3, "early_stop_patience": 9,
                                                   "model_root": str(tmp_path), "verbose": 0}, quiet=True)
    history = result.valid_history
    assert [h["epoch"] for h in history] == [1, 1, 1, 2, 2, 2]
    steps = history[2]["batch"]  # the epoch's last batch
    assert [h["batch"] for h in history] == [_math.ceil(k * steps / 3) for k in (1, 2, 3)] * 2
    assert [h["epoch_end"] for h in history] == [False, False, True] * 2
    best = max(h["monitor"] for h in history)
    assert result.best_epoch == next(h["epoch"] for h in history if h["monitor"] == best)


def test_eval_steps_and_evaluations_per_epoch_are_one_choice(tiny):
    with pytest.raises(UserError, match="keep one of them"):
        build_model(tiny, "SharedBottom_test", eval_steps=5, evaluations_per_epoch=2)


def test_table_scope_regularizer_equals_fuxictrs_value_and_gradient(tiny, tiny_batch):
    """The whole-table penalty (computed here as sums of squares) against FuxiCTR's own ``regularization_loss``
    (``torch.norm(w) ** 2``) on the same model, with both an embedding and a net regulariser."""
    from fuxictr.pytorch.models import BaseModel

    model = build_model(tiny, "SharedBottom_test", embedding_regularizer=LAMBDA, net_regularizer="l2(1e-3)",
                        embedding_regularizer_scope="table")
    model.train()
    model(tiny_batch)
    grads = []
    for compute in (model.regularization_loss, lambda: BaseModel.regularization_loss(model)):
        model.zero_grad(set_to_none=True)
        value = compute()
        value.backward()
        grads.append((float(value), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (ours, ours_grads), (theirs, their_grads) = grads
    assert ours == pytest.approx(theirs, rel=1e-6)
    assert ours_grads.keys() == their_grads.keys() and len(ours_grads) == len(list(model.parameters()))
    for name, grad in ours_grads.items():
        torch.testing.assert_close(grad, their_grads[name], rtol=1e-5, atol=1e-8, msg=name)


def test_norm_power_gradient_matches_finite_differences():
    from mdl_bench.model_zoo.base import norm_power

    w = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: norm_power(t, 2), (w,))
    assert float(norm_power(w, 2)) == pytest.approx(float((w.detach() ** 2).sum()), rel=1e-12)
    assert float(norm_power(w, 1)) == pytest.approx(float(w.detach().abs().sum()), rel=1e-12)
