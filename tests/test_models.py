"""The contract every registered model honours, run over the whole registry."""
import pytest
import torch

from mdl_bench.benchmark.config import ConfigSet
from mdl_bench.model_zoo import registry
from conftest import build_model

MODELS = sorted(registry())


def test_registry_finds_models_by_file_name():
    assert "Crocodile" in MODELS
    for name, cls in registry().items():
        assert cls.__name__ == name and cls.__module__.endswith("." + name)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_has_default_and_test_configs(name):
    config = ConfigSet()
    for expid in (f"{name}_default", f"{name}_test"):
        assert expid in config.models, f"config/model_config.yaml lacks {expid}"
        assert config.model_params(expid)["model"] == name


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_ranges(tiny, tiny_batch, name):
    model = build_model(tiny, f"{name}_test")
    model.eval()
    with torch.no_grad():
        out = model(tiny_batch)
    B = tiny_batch["click"].shape[0]
    assert out["y_pred"].shape == (B, 1) and out["logit"].shape == (B,)
    assert torch.all((out["y_pred"] > 0) & (out["y_pred"] < 1))
    assert set(out["domain"].tolist()) == set(range(model.num_domains))


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_is_trained(tiny, tiny_batch, name):
    model = build_model(tiny, f"{name}_test")
    model.train()
    loss = model.compute_loss(model(tiny_batch), model.get_labels(tiny_batch))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} gets no gradient"
        assert p.grad.abs().sum() > 0, f"{pname} gets a zero gradient"


@pytest.mark.parametrize("name", MODELS)
def test_one_step_lowers_the_loss(tiny, tiny_batch, name):
    model = build_model(tiny, f"{name}_test", learning_rate=1e-3, net_dropout=0.0)
    model._max_gradient_norm = 10.0
    model.train()
    labels = model.get_labels(tiny_batch)
    torch.manual_seed(0)
    with torch.no_grad():
        before = model.add_loss(model(tiny_batch), labels).item()
    model.train_step(tiny_batch)
    torch.manual_seed(0)
    with torch.no_grad():
        after = model.add_loss(model(tiny_batch), labels).item()
    assert after < before


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_round_trip(tiny, tiny_batch, tmp_path, name):
    model = build_model(tiny, f"{name}_test")
    model._max_gradient_norm = 10.0
    model.train_step(tiny_batch)  # move away from the initial weights
    path = str(tmp_path / "m.model")
    model.save_weights(path)
    other = build_model(tiny, f"{name}_test", seed=12345)
    other.load_weights(path)
    model.eval(), other.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(tiny_batch)["y_pred"], other(tiny_batch)["y_pred"], rtol=0, atol=0)
