"""The one adapter to FuxiCTR (``model_zoo/core/fuxictr_api.py``) and the training loop's own state and rule.

If a FuxiCTR release renames or removes a name, a ``BaseModel`` method parameter or a constructor attribute the
package relies on, a test here fails and names it. The early-stopping rule is checked against FuxiCTR's own
``BaseModel.checkpoint_and_earlystop`` run on the same sequence of monitor values.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import logging
import math
from pathlib import Path

import pytest
import torch

from mdl_bench.model_zoo.core import fuxictr_api, training

ROOT = Path(__file__).resolve().parents[1]
ADAPTER = ROOT / "model_zoo" / "core" / "fuxictr_api.py"


def test_every_listed_name_exists_in_the_installed_fuxictr():
    for name, (module, attribute) in fuxictr_api.NAMES.items():
        assert hasattr(importlib.import_module(module), attribute), f"fuxictr {module}.{attribute} ({name}) is gone"
        assert getattr(fuxictr_api, name) is getattr(importlib.import_module(module), attribute)


def test_unknown_names_are_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'NotAName'"):
        fuxictr_api.NotAName  # noqa: B018


@pytest.mark.parametrize("method, parameters", sorted(fuxictr_api.BASE_MODEL_METHODS.items()))
def test_base_model_methods_take_the_parameters_used_here(method, parameters):
    base = importlib.import_module("fuxictr.pytorch.models").BaseModel
    assert method in vars(base), f"BaseModel.{method} is gone"
    names = list(inspect.signature(getattr(base, method)).parameters)
    missing = [p for p in parameters if p not in names]
    assert not missing, f"BaseModel.{method} no longer takes {missing}"


def test_base_model_sets_the_attributes_trainer_settings_reads(tiny):
    from mdl_bench.benchmark.runner import resolve

    params, model_class, _ = resolve("SharedBottom_test", None, {"verbose": 0, "early_stop_patience": 3,
                                                                  "monitor_mode": "max", "eval_steps": 7,
                                                                  "evaluations_per_epoch": None})
    model = model_class(tiny.feature_map, **params)
    for attribute in fuxictr_api.BASE_MODEL_ATTRIBUTES:
        assert attribute in vars(model), f"BaseModel.__init__ no longer sets {attribute}"
    settings = fuxictr_api.trainer_settings(model)
    assert (settings.early_stop_patience, settings.monitor_mode, settings.eval_steps, settings.verbose) == (
        3, "max", 7, 0)
    assert settings.monitor.get_value({"AUC": 0.7, "logloss": 0.4}) == pytest.approx(
        model._monitor.get_value({"AUC": 0.7, "logloss": 0.4}))


def _fuxictr_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "fuxictr"]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "fuxictr":
            found.append(node.module)
    return found


def test_no_module_but_the_adapter_imports_fuxictr():
    offenders = {}
    for folder in ("kernel", "model_zoo", "benchmark"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path != ADAPTER and _fuxictr_imports(path):
                offenders[str(path.relative_to(ROOT))] = _fuxictr_imports(path)
    assert offenders == {}


def test_the_checker_sees_a_direct_import(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from fuxictr.pytorch.layers import MLP_Block\nimport fuxictr.utils\n")
    assert sorted(_fuxictr_imports(source)) == ["fuxictr.pytorch.layers", "fuxictr.utils"]


# ------------------------------------------------------------------ the early-stopping rule, against FuxiCTR's
class _FuxiRule:
    """FuxiCTR's ``checkpoint_and_earlystop`` run on a stand-in object (its weights saving and lr decay recorded)."""

    def __init__(self, mode: str, patience: int):
        from fuxictr.utils import Monitor

        base = importlib.import_module("fuxictr.pytorch.models").BaseModel
        self._rule = base.checkpoint_and_earlystop
        self._monitor, self._monitor_mode, self._early_stop_patience = Monitor("AUC"), mode, patience
        self._best_metric = math.inf if mode == "min" else -math.inf
        self._stopping_steps, self._stop_training = 0, False
        self._reduce_lr_on_plateau, self._save_best_only = True, True
        self._epoch_index, self.checkpoint, self.saved, self.decays = 0, "x", 0, 0

    def save_weights(self, checkpoint):
        self.saved += 1

    def lr_decay(self):
        self.decays += 1
        return 0.0

    def step(self, value: float):
        self._rule(self, {"AUC": value})


@pytest.mark.parametrize("mode", ["max", "min"])
def test_the_early_stopping_rule_is_fuxictrs(mode):
    logging.disable(logging.INFO)
    try:
        values = [0.5, 0.6, 0.6 + 5e-7, 0.6 + 1e-6, 0.59, 0.7, 0.7, 0.69, 0.71, 0.71, 0.71, 0.71]
        for patience in (1, 2, 3):
            fuxi = _FuxiRule(mode, patience)
            state = training.TrainingState.start(10, None, mode)
            saved = decays = 0
            for value in values:
                if state.stop:
                    break
                fuxi.step(value)
                improved = training.record_validation(state, value, mode, patience)
                saved, decays = saved + improved, decays + (not improved)
                assert (state.best_metric, state.stopping_steps, state.stop) == (
                    fuxi._best_metric, fuxi._stopping_steps, fuxi._stop_training), (mode, patience, value)
                assert (saved, decays) == (fuxi.saved, fuxi.decays)
    finally:
        logging.disable(logging.NOTSET)


def test_learning_rate_decay_has_a_floor():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-6)
    assert training.decay_learning_rate(opt) == pytest.approx(1e-6)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-6)


def test_fit_keeps_its_state_in_the_models_own_fields(tiny, tmp_path):
    """After fit: the state says how many epochs ran and which one was kept; DDP attaches through its declared
    method and the module tree does not hold it."""
    from mdl_bench.benchmark.runner import make_loaders, resolve

    params, model_class, _ = resolve("SharedBottom_test", None, {"verbose": 0, "epochs": 2,
                                                                  "model_root": str(tmp_path)})
    model = model_class(tiny.feature_map, **params)
    train, valid, _ = make_loaders(tiny.feature_map, tiny.paths, params)
    model.fit(train, validation_data=valid, **params)
    assert model.state.epochs_run == 2 and model.best_epoch in (1, 2)
    assert sorted({e["epoch"] for e in model.valid_history}) == [1, 2] and model.checkpoint_written
    last = model.valid_history[-1]  # the epoch's end, unless early stopping ended training at a mid-epoch validation
    assert last["epoch_end"] == model.state.at_epoch_end and (last["epoch_end"] or model.state.stop)
    assert model.data_parallel is None
    marker = torch.nn.Linear(1, 1)
    model.attach_data_parallel(marker)
    assert model.data_parallel is marker and all(m is not marker for m in model.modules())
