"""The contract every registered model honours, run over the whole registry.

The checks live in the package (:mod:`mdl_bench.benchmark.contract`), so that ``mdl-bench check-model NAME`` runs
exactly these on a user's model."""
import pytest

from mdl_bench.benchmark import contract
from mdl_bench.model_zoo import model_location, registry

MODELS = sorted(name for name in registry() if model_location(name) is None)  # the built-in models
SPLIT_MODELS = {"Crocodile", "ME_MMoE"}  # the models whose step perf's scaling curves split into parts


def test_registry_finds_models_by_file_name():
    assert "Crocodile" in MODELS
    for name in MODELS:
        cls = registry()[name]
        assert cls.__name__ == name and cls.__module__.endswith("." + name)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_has_default_and_test_configs(name):
    contract.check_config(name, require_default=True)


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_ranges(tiny, tiny_batch, name):
    contract.check_shapes(tiny, tiny_batch, f"{name}_test")


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_is_trained(tiny, tiny_batch, name):
    contract.check_gradients(tiny, tiny_batch, f"{name}_test")


@pytest.mark.parametrize("name", MODELS)
def test_one_step_lowers_the_loss(tiny, tiny_batch, name):
    contract.check_one_step(tiny, tiny_batch, f"{name}_test")


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_round_trip(tiny, tiny_batch, tmp_path, name):
    contract.check_checkpoint(tiny, tiny_batch, f"{name}_test", tmp_path)


@pytest.mark.parametrize("name", MODELS)
def test_step_components_run_and_backpropagate(tiny, tiny_batch, name):
    """A model that splits its step for ``mdl-bench perf`` gives closures that run; the others say they do not."""
    message = contract.check_step_components(tiny, tiny_batch, f"{name}_test")
    assert message.startswith("not split") == (name not in SPLIT_MODELS), message


@pytest.mark.parametrize("name", MODELS)
def test_field_options_select_by_name(tiny, tiny_batch, name):
    """Every option naming fields (prior_fields, epnet_fields, ppnet_prior_fields, aux_fields, domain_fields,
    ...) feeds the model exactly those fields' embeddings, whatever order the option lists them in."""
    contract.check_field_options(tiny, tiny_batch, f"{name}_test")


@pytest.mark.parametrize("name", MODELS)
def test_declared_hooks_give_what_the_tools_read(tiny, tiny_batch, name):
    contract.check_hooks(tiny, tiny_batch, f"{name}_test")


def test_the_hook_check_names_a_wrong_hook(tiny, tiny_batch, monkeypatch):
    from mdl_bench.model_zoo import get_model

    sdem, mmoe = get_model("SDEM"), get_model("ME_MMoE")
    assert contract.declared_hooks(get_model("SharedBottom").__new__(get_model("SharedBottom"))) == []
    monkeypatch.setattr(sdem, "embedding_table_domains", property(lambda self: [0]))
    with pytest.raises(contract.ContractError, match=r"embedding_table_domains lists 1 domains for \d+ tables"):
        contract.check_hooks(tiny, tiny_batch, "SDEM_test")
    plain = mmoe.expert_outputs_for_analysis
    monkeypatch.setattr(mmoe, "expert_outputs_for_analysis", lambda self, X: (plain(self, X)[0], [7] * 99))
    with pytest.raises(contract.ContractError, match="99 bound domains for"):
        contract.check_hooks(tiny, tiny_batch, "ME_MMoE_test")
    monkeypatch.setattr(mmoe, "expert_outputs_for_analysis", lambda self, X: (plain(self, X)[0] * float("nan"),
                                                                              plain(self, X)[1]))
    with pytest.raises(contract.ContractError, match="NaN or inf"):
        contract.check_hooks(tiny, tiny_batch, "ME_MMoE_test")
