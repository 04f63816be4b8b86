"""The one training step (``model_zoo/core/step.py``): the trainer's and every perf measurement's.

It must stay FuxiCTR's step to the bit (training is compared with FuxiCTR's own ``BaseModel.train_step``), report
its phases in order, go through a wrapper when given one, work on a plain FuxiCTR model, and clip at the model's
own ``max_gradient_norm`` outside ``fit``. The model logs each epoch's training time and rows for perf.
"""
from __future__ import annotations

import torch
from fuxictr.pytorch.models import BaseModel

from mdl_bench.benchmark.perf.stock import TimedEpochs, stock_classes
from mdl_bench.benchmark.perf.timing import FirstBatches, bare_loop, split_steps
from mdl_bench.benchmark.runner import make_loaders, resolve
from mdl_bench.model_zoo.core.step import PHASES, train_step
from conftest import build_model


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_trainers_step_is_fuxictrs_to_the_bit(tiny, tiny_batch):
    ours, reference = build_model(tiny), build_model(tiny)  # same seed: same weights, same dropout stream
    assert _same_weights(ours, reference)
    for _ in range(3):
        torch.manual_seed(5)
        loss = ours.train_step(tiny_batch)
        torch.manual_seed(5)
        expected = BaseModel.train_step(reference, tiny_batch)  # FuxiCTR's own step, same model class
        assert torch.equal(loss, expected)
    assert _same_weights(ours, reference)


def test_adam_is_fused_and_steps_as_the_loop_implementation(tiny, tiny_batch):
    """The trainer's Adam is PyTorch's fused kernel; its step against the per-tensor loop's (FuxiCTR's
    ``get_optimizer`` result) from the same weights and gradients: equal to float rounding. (One step: after it the
    weights differ in the last bit, and a bias followed by batch norm, whose gradient is zero but for rounding
    noise, is then moved by Adam in directions that differ between any two implementations.)"""
    ours, reference = build_model(tiny), build_model(tiny)
    assert ours.optimizer.defaults["fused"] is True
    lr = ours.optimizer.param_groups[0]["lr"]
    reference.optimizer = torch.optim.Adam(reference.parameters(), lr=lr, foreach=False)
    before = {name: value.clone() for name, value in ours.state_dict().items()}
    for model in (ours, reference):
        torch.manual_seed(5)
        model.train_step(tiny_batch)
    moved = 0
    for (name, a), b in zip(ours.state_dict().items(), reference.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
            moved += int(not torch.equal(a, before[name]))
    assert moved > 10  # the step changed the weights


def test_mark_sees_every_phase_in_order_and_module_carries_the_forward(tiny, tiny_batch):
    model = build_model(tiny, "SharedBottom_test")
    marks, forwards = [], []

    def wrapper(batch):  # stands for the DDP wrapper: the forward must go through it
        forwards.append(len(batch))
        return model(batch)

    loss = train_step(model, tiny_batch, model.max_gradient_norm, module=wrapper, mark=marks.append)
    assert marks == list(PHASES) == ["zero_grad", "forward", "backward", "optimizer"]
    assert forwards == [len(tiny_batch)] and torch.isfinite(loss)


def test_max_gradient_norm_is_the_models_outside_fit(tiny, tiny_batch):
    assert build_model(tiny, "SharedBottom_test").max_gradient_norm == 10.0  # FuxiCTR's fit default
    params, _, _ = resolve("SharedBottom_test", None, {"verbose": 0, "max_gradient_norm": 1e-3})
    assert params["max_gradient_norm"] == 1e-3  # a trainer key the config checks accept
    model = build_model(tiny, "SharedBottom_test", max_gradient_norm=1e-3)
    model.train_step(tiny_batch)  # no fit: the norm is the model's
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert 0 < grads.norm() <= 1e-3 * (1 + 1e-4)  # the gradients left after the step are the clipped ones


def test_fit_keeps_the_models_norm_and_logs_every_epoch(tiny):
    # patience past the run: an early stop at a validation inside epoch 2 would cut its batches short
    model = build_model(tiny, "SharedBottom_test", max_gradient_norm=2.0, early_stop_patience=10)
    train, valid, _ = make_loaders(model.feature_map, tiny.paths, tiny.params)
    model.fit(FirstBatches(train, 3), epochs=2, validation_data=FirstBatches(valid, 1))
    assert model.max_gradient_norm == 2.0  # fit without the argument does not reset it to FuxiCTR's 10
    assert [e["epoch"] for e in model.epoch_log] == [1, 2]
    assert all(e["rows"] == 3 * train.batch_size and e["seconds"] > 0 for e in model.epoch_log)
    assert model.train_rows == sum(e["rows"] for e in model.epoch_log)
    assert abs(model.train_seconds - sum(e["seconds"] for e in model.epoch_log)) < 1e-9
    model.fit(FirstBatches(train, 1), epochs=1, validation_data=FirstBatches(valid, 1), max_gradient_norm=4.0)
    assert model.max_gradient_norm == 4.0 and len(model.epoch_log) == 3  # fit's argument wins, as in FuxiCTR


def test_a_plain_fuxictr_model_steps_and_times_its_epochs(tiny, tmp_path):
    """perf's stock side: a FuxiCTR BaseModel subclass through the same step, its epochs timed by a subclass."""
    StockDNN, _ = stock_classes()

    class TimedStockDNN(TimedEpochs, StockDNN):
        pass

    model = TimedStockDNN(tiny.feature_map, hidden_units=[16], embedding_dim=4, optimizer="adam",
                          loss="binary_crossentropy", metrics=["AUC"], verbose=0, model_root=str(tmp_path),
                          reduce_lr_on_plateau=False)
    assert "train_epoch" not in vars(model) and "eval_step" not in vars(model)  # overridden, not patched
    (tmp_path / tiny.feature_map.dataset_id).mkdir()  # FuxiCTR makes it in set_logger(), which is not called here
    train, valid, _ = make_loaders(tiny.feature_map, tiny.paths, tiny.params)
    batches = list(FirstBatches(train, 3))
    assert len(bare_loop(model, batches, 10.0)) == 3
    split = split_steps(model, batches, 3, 10.0)
    assert set(split) == {"data", "forward", "backward", "optimizer", "step"}
    model.fit(FirstBatches(train, 2), epochs=2, validation_data=FirstBatches(valid, 1))
    assert len(model.epoch_seconds) == 2 and all(s > 0 for s in model.epoch_seconds)
