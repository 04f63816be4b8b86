"""Single Domain as K independent single-domain models (``model_zoo/SingleDomain.py``), each property against a
reference computed another way: a standalone copy of one domain's model trained by hand on that domain's rows;
the same run with another domain's rows changed; scripted per-domain monitor values through the real ``fit``;
metrics recomputed from the kept predictions; the checkpoint reloaded into a fresh model."""
from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import build_model
from mdl_bench.kernel.errors import UserError
from mdl_bench.model_zoo.core import metrics as metric_lib

EMB_L2, NET_L2, LR = 1.0, 1e-1, 1e-2


def _model(tiny, tmp_path=None, **overrides):
    """SingleDomain_test on the tiny data (its 5 domains), checkpoints under ``tmp_path``."""
    extra = {"model_root": str(tmp_path)} if tmp_path is not None else {}
    return build_model(tiny, "SingleDomain_test", **extra, **overrides)


def _batches(tiny, model, count: int) -> list[dict]:
    """The first ``count`` shuffled training batches (512 rows, every domain mixed)."""
    from mdl_bench.benchmark.runner import make_loaders

    train, _, _ = make_loaders(model.feature_map, tiny.paths, tiny.params)
    return list(itertools.islice(iter(train), count))


def _loaders(tiny, model):
    from mdl_bench.benchmark.runner import make_loaders

    train, valid, _ = make_loaders(model.feature_map, tiny.paths, tiny.params)
    return train, valid


def _domain_params(model, s: int) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.domain_parameters(s)]


class Standalone(nn.Module):
    """Domain ``s``'s model copied out of the run: its table and its DNN, nothing else."""

    def __init__(self, model, s: int):
        super().__init__()
        self.table = copy.deepcopy(model.embedding.tables[s])
        self.dnn = copy.deepcopy(model.dnns[s])

    def forward(self, X: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.dnn(self.table.flat(X)[0])

    def embedding_weights(self) -> dict[str, torch.Tensor]:
        return dict(self.table.embedding.embedding_layer.embedding_layers.named_parameters())

    def penalty(self, X: dict[str, torch.Tensor], scope: str) -> torch.Tensor:
        """L2 by hand: ``EMB_L2 / 2 * ||W||^2`` on the whole tables (scope ``table``) or on the rows ``X`` looks up
        (``batch``), plus ``NET_L2 / 2 * ||w||^2`` on every DNN tensor."""
        total = 0
        for name, weight in self.embedding_weights().items():
            field = name.split(".")[0]
            rows = weight if scope == "table" else weight[X[field].long().unique()]
            total = total + EMB_L2 / 2 * (rows ** 2).sum()
        for param in self.dnn.parameters():
            total = total + NET_L2 / 2 * (param ** 2).sum()
        return total


# ---------------------------------------------------------------------------------------------- independence
def _train_copies(model, copies: list[Standalone], batches: list[dict], scope: str, max_norm: float,
                  weighted: bool = True) -> list[bool]:
    """Each copy trained by hand on its domain's rows of ``batches``: mean BCE + (n_s / B, or 1 when not
    ``weighted``) * its L2, gradient norm clipped to ``max_norm``, Adam at the model's rate. Whether each step was
    clipped."""
    optimizers = [torch.optim.Adam(c.parameters(), lr=LR) for c in copies]
    clipped = []
    for batch in batches:
        X = model.get_inputs(batch)
        domain, y = model.domain_of(X), model.get_labels(batch).view(-1)
        for s, (standalone, optimizer) in enumerate(zip(copies, optimizers)):
            rows = domain == s
            own = {k: v[rows] for k, v in X.items()}
            weight = int(rows.sum()) / len(domain) if weighted else 1.0
            optimizer.zero_grad()
            loss = F.binary_cross_entropy_with_logits(standalone(own), y[rows]) + weight * standalone.penalty(own, scope)
            loss.backward()
            clipped.append(float(torch.nn.utils.clip_grad_norm_(standalone.parameters(), max_norm)) > max_norm)
            optimizer.step()
    return clipped


def _largest_gap(model, copies: list[Standalone]) -> float:
    return max(float((p - q).detach().abs().max()) for s, c in enumerate(copies)
               for p, q in zip(model.domain_parameters(s), c.parameters(), strict=True))


@pytest.mark.parametrize("scope", ["table", "batch"])
def test_each_domain_trains_as_a_standalone_model_on_its_own_rows(tiny, scope):
    """Three steps of the whole model on mixed batches = three steps of each domain's copy on that domain's rows
    only: its mean BCE plus the regulariser weighted n_s / B, its own Adam, its own gradient clipping (a norm
    small enough that every domain is clipped). In float64 (labels too): Adam's first steps are about
    ``lr * sign(g)``, so float32 rounding of a near-zero gradient would move a parameter by a visible fraction of
    a step; in float64 the two agree to 1e-12. Control: copies trained with the regulariser unweighted end far
    outside that, so the match does test the weighting."""
    max_norm = 0.05
    model = _model(tiny, net_dropout=0, batch_norm=False, embedding_regularizer=EMB_L2, net_regularizer=NET_L2,
                   embedding_regularizer_scope=scope, max_gradient_norm=max_norm).double()
    model.get_labels = lambda inputs: type(model).get_labels(model, inputs).double()
    copies = [Standalone(model, s) for s in range(model.num_domains)]
    unweighted = [Standalone(model, s) for s in range(model.num_domains)]
    batches = _batches(tiny, model, 3)
    for batch in batches:
        model.train_step(batch)
    assert all(_train_copies(model, copies, batches, scope, max_norm))
    _train_copies(model, unweighted, batches, scope, max_norm, weighted=False)
    assert _largest_gap(model, copies) <= 1e-12
    assert _largest_gap(model, unweighted) > 1e-4


def test_another_domains_rows_change_nothing_of_a_domain(tiny):
    """The same three steps (batch norm on) with domain 1's labels flipped and its items replaced: every other
    domain's parameters come out bit-identical, domain 1's do not."""
    a, b = _model(tiny), _model(tiny)
    for batch in _batches(tiny, a, 3):
        changed = dict(batch)
        rows = a.domain_of(a.get_inputs(batch)) == 1
        label = a.feature_map.labels[0]
        changed[label] = torch.where(rows.view(batch[label].shape), 1 - batch[label], batch[label])
        changed["item_id"] = torch.where(rows, batch["item_id"].flip(0), batch["item_id"])
        a.train_step(batch)
        b.train_step(changed)
    for s in range(a.num_domains):
        same = all(torch.equal(p, q) for p, q in zip(a.domain_parameters(s), b.domain_parameters(s)))
        assert same == (s != 1), s


def test_regularizer_is_each_domains_weighted_by_its_rows_in_the_batch(tiny, tiny_batch):
    for scope in ("table", "batch"):
        model = _model(tiny, embedding_regularizer=EMB_L2, net_regularizer=NET_L2, embedding_regularizer_scope=scope)
        model.train()
        model(tiny_batch)
        X = model.get_inputs(tiny_batch)
        domain = model.domain_of(X)
        expected = sum(int((domain == s).sum()) / len(domain)
                       * Standalone(model, s).penalty({k: v[domain == s] for k, v in X.items()}, scope)
                       for s in range(model.num_domains))
        torch.testing.assert_close(model.regularization_loss(), expected, rtol=1e-5, atol=0)


def test_one_parameter_group_per_domain_with_the_configured_optimiser(tiny):
    model = _model(tiny)
    groups = model.optimizer.param_groups
    assert isinstance(model.optimizer, torch.optim.Adam) and len(groups) == model.num_domains
    assert [g["domain"] for g in groups] == list(range(model.num_domains)) and all(g["lr"] == LR for g in groups)
    owned = [{id(p) for p in g["params"]} for g in groups]
    assert sum(map(len, owned)) == len(list(model.parameters())) == len(set().union(*owned))
    for s, ids in enumerate(owned):
        assert ids == {id(p) for p in model.embedding.tables[s].parameters()} | {id(p) for p in model.dnns[s].parameters()}


def test_loss_weighting_batch_is_refused_in_one_line(tiny):
    with pytest.raises(UserError) as err:
        _model(tiny, loss_weighting="batch")
    text = str(err.value)
    assert "\n" not in text and "its own mean loss" in text and "loss_weighting: domain" in text
    from mdl_bench.benchmark.runner import resolve

    for expid in ("SingleDomain_default", "SingleDomain_test"):
        assert resolve(expid, None, {"verbose": 0})[0]["loss_weighting"] == "domain"


def test_every_table_is_reported_as_its_domains_own(tiny):
    from mdl_bench.benchmark.measure.probe import embedding_tables

    model = _model(tiny)
    refs = embedding_tables(model, ["item_id"])
    assert [(r.module, r.index, r.domain) for r in refs] == [("embedding", s, s) for s in range(model.num_domains)]
    for s, ref in enumerate(refs):
        own = model.embedding.tables[s].embedding.embedding_layer.embedding_layers["item_id"].weight
        assert ref.weight is own and np.array_equal(ref.view(), own.detach().numpy())


# ---------------------------------------------------------------------------------------------- per-domain stopping
def _by_hand_composite(arrays_at: list[dict], best_at: list[int]) -> float:
    """AUC + gAUC of every domain's rows as predicted at its best validation so far (``best_at[s]``, 0-based)."""
    parts = [{k: v[arrays_at[b]["domain"] == s] for k, v in arrays_at[b].items()} for s, b in enumerate(best_at)]
    whole = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    logs = metric_lib.compute_metrics(["AUC", "gAUC"], whole["y_true"], whole["y_pred"], group=whole["group"])
    return logs["AUC"] + logs["gAUC"]


SCRIPT = [  # per validation (one per epoch), the monitor value of domains 0..4
    [0.5, 0.5, 0.1, 0.1, 0.1],
    [0.6, 0.49, 0.2, 0.2, 0.2],  # domain 1: plateau (lr decays)
    [0.59, 0.6, 0.3, 0.3, 0.3],  # domain 0: plateau 1
    [0.58, 0.7, 0.4, 0.4, 0.4],  # domain 0: plateau 2 -> stops, frozen at validation 2
    [0.9, 0.8, 0.5, 0.5, 0.5],   # domain 0 is no longer decided
    [0.9, 0.9, 0.6, 0.6, 0.6],
]
BEST_SO_FAR = [[0, 0, 0, 0, 0], [1, 0, 1, 1, 1], [1, 2, 2, 2, 2], [1, 3, 3, 3, 3], [1, 4, 4, 4, 4], [1, 5, 5, 5, 5]]


def test_each_domain_stops_decays_and_is_restored_on_its_own(tiny, tmp_path):
    from mdl_bench.benchmark.perf.timing import FirstBatches

    model = _model(tiny, tmp_path, evaluations_per_epoch=1, early_stop_patience=2, reduce_lr_on_plateau=True)
    train, valid = _loaders(tiny, model)
    values, arrays_at, seen = iter(SCRIPT), [], []
    model.domain_monitor_values = lambda arrays: (arrays_at.append(arrays), next(values))[1]
    model.validation_callbacks.append(lambda entry: seen.append(
        (entry, [g["lr"] for g in model.optimizer.param_groups],
         [_domain_params(model, s) for s in range(model.num_domains)])))
    frozen_in_training = []
    model.step_callbacks.append(lambda info: frozen_in_training.append(
        (len(seen), model.dnns[0].training, model.dnns[1].training)))
    model.fit(FirstBatches(train, 2), epochs=len(SCRIPT), validation_data=valid)

    entries, lrs, params = zip(*seen)
    assert [e["domain_stopped"][0] for e in entries] == [False, False, False, True, True, True]
    assert not any(any(e["domain_stopped"][1:]) for e in entries) and not model.state.stop  # the epoch cap ended it
    assert [lr[0] for lr in lrs] == pytest.approx([LR, LR, LR / 10, 0, 0, 0])  # decayed, then frozen at 0
    assert [lr[1] for lr in lrs] == pytest.approx([LR, LR / 10] + [LR / 10] * 4)  # its own plateau only
    assert all(lr[2:] == [LR] * 3 for lr in lrs)
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b))  # noqa: E731
    assert same(params[3][0], params[1][0]) and same(params[5][0], params[1][0])  # restored at its best, frozen
    assert not same(params[5][1], params[4][1]) and not same(params[5][2], params[4][2])  # the others train on
    assert all(not d0 and d1 for v, d0, d1 in frozen_in_training if v >= 4)  # frozen: eval mode (norm statistics)
    final = [list(model.domain_parameters(s)) for s in range(model.num_domains)]
    assert same(final[0], params[1][0]) and all(same(final[s], params[5][s]) for s in range(1, 5))
    assert model.domain_best_epochs == [2, 6, 6, 6, 6] and model.best_epoch == 6
    assert [e["domain_best_epoch"] for e in entries][3] == [2, 4, 4, 4, 4]
    for v, (entry, best_at) in enumerate(zip(entries, BEST_SO_FAR)):
        assert entry["domain_monitor"] == SCRIPT[v]
        assert entry["monitor"] == pytest.approx(_by_hand_composite(arrays_at, best_at), rel=1e-12)
        assert entry["monitor"] == pytest.approx(entry["AUC"] + entry["gAUC"], rel=1e-12)


def test_the_run_stops_when_every_domain_has_stopped(tiny, tmp_path):
    from mdl_bench.benchmark.perf.timing import FirstBatches

    model = _model(tiny, tmp_path, evaluations_per_epoch=1, early_stop_patience=1)
    train, valid = _loaders(tiny, model)
    script = iter([[1.0, 1.0, 1.0, 1.0, 1.0], [0.5, 2.0, 2.0, 2.0, 2.0], [0.5, 1.0, 1.0, 1.0, 1.0]])
    model.domain_monitor_values = lambda arrays: next(script)
    model.fit(FirstBatches(train, 1), epochs=10, validation_data=valid)
    assert model.state.stop and model.state.epochs_run == 3 and model.stopped_by is None
    assert [e["domain_stopped"] for e in model.valid_history] == [
        [False] * 5, [True] + [False] * 4, [True] * 5]
    assert model.domain_best_epochs == [1, 2, 2, 2, 2] and model.best_epoch == 2


def test_a_domains_monitor_is_the_monitor_formula_on_its_rows(tiny):
    model = _model(tiny)
    _, valid = _loaders(tiny, model)
    arrays = model.predict_arrays(valid)
    logs = model.evaluate_arrays(arrays)  # every metric per domain: AUC@S1, gAUC@S1, ...
    expected = [logs[f"AUC@{name}"] + logs[f"gAUC@{name}"] for name in model.domain_names]
    assert model.domain_monitor_values(arrays) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------------------- fit end to end
def test_fit_writes_the_composite_best_model_and_reloading_it_predicts_the_same(tiny, tmp_path):
    import os

    model = _model(tiny, tmp_path)
    train, valid = _loaders(tiny, model)
    model.fit(train, epochs=3, validation_data=valid)
    assert model.checkpoint_written and os.path.exists(model.checkpoint)
    assert model.checkpoint.startswith(str(tmp_path))
    saved = torch.load(model.checkpoint)
    for s, best in enumerate(model.domain_best):  # the file is every domain's kept state
        assert best.state and all(torch.equal(saved[k], v) for k, v in best.state.items())
    assert set(saved) == {k for best in model.domain_best for k in best.state}
    last = model.valid_history[-1]  # the composite model fit returned
    assert dict(model.evaluate(valid, metrics=["AUC", "gAUC"])) == pytest.approx(
        {"AUC": last["AUC"], "gAUC": last["gAUC"]}, rel=1e-12)
    assert model.best_epoch == max(last["domain_best_epoch"])
    fresh = _model(tiny, tmp_path, seed=99)
    fresh.load_weights(model.checkpoint)
    np.testing.assert_array_equal(fresh.predict(valid), model.predict(valid))
