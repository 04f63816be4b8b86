"""The model contract: what every model honours, checked on tiny data.

One implementation, two callers: ``tests/test_models.py`` runs it over every registered model, and
``mdl-bench check-model NAME`` runs it on one model (a user's too, with ``--models-from``/``--config``) and
prints PASS/FAIL per check. Each check takes the tiny data, a batch and an expid, and raises
:class:`ContractError` (an ``AssertionError``, raised explicitly so that ``python -O`` checks as much) with a
message naming what is wrong; :func:`run_contract` turns them into :class:`CheckResult` rows.

The checks (the expid is ``<Name>_test``, a small config on tiny data):

* ``config``: ``<Name>_test`` exists, selects the model, and every key is a parameter of its ``__init__`` (or a
  run/dataset key); the class has a string ``group`` and ``display_name`` (or none: the class name);
* ``logits``: ``logits(X, domain)`` returns the pair ``(logit, aux)``: a tensor of shape ``B`` and a dict of named
  auxiliary losses (``{}`` when there is none); when it does not, the checks after it are not run, since each
  would fail on the same cause;
* ``shapes``: ``y_pred`` is ``B x 1`` in (0, 1), ``logit`` is ``B``, every domain index appears;
* ``gradients``: in a batch covering every domain, every parameter gets a non-zero gradient from eq. (8)'s
  loss (a parameter without one is dead weight or a routing bug);
* ``one step``: one optimiser step on a fixed batch lowers the loss on that batch (dropout off where the model
  takes ``net_dropout``, the same random state before and after);
* ``checkpoint``: weights saved after a step and loaded into a model built with another seed give identical
  predictions;
* ``step components``: a model that splits its step for ``mdl-bench perf``
  (:meth:`~mdl_bench.model_zoo.base.MultiDomainModel.step_components` returns named closures rather than ``None``)
  gives closures that each run, return a finite scalar and backpropagate;
* ``field options``: every ``__init__`` option that names fields (``*_fields``) is taken through a
  :class:`~mdl_bench.model_zoo.layers.FieldSelection`; in a forward pass its slot ``j`` holds the embedding of its
  ``j``-th field, looked up on its own; and the option's fields in another order build the same model (same
  parameters, same predictions);
* ``hooks``: every analysis/perf hook the model declares (overrides; see :mod:`mdl_bench.model_zoo.base`) gives
  what the tools read: ``expert_outputs_for_analysis`` ``E x B x H`` finite outputs with one bound domain (a tower
  index or ``None``) per expert, consistent over batches; ``embedding_table_domains`` one entry per table of
  ``self.embedding``, each a tower index or ``None``.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from mdl_bench.kernel.errors import UserError

TEST_SUFFIX, DEFAULT_SUFFIX = "_test", "_default"


class ContractError(AssertionError):
    """A check of the model contract failed (its message says what is wrong)."""


def require(condition, message: str) -> None:
    """Raise :class:`ContractError` with ``message`` unless ``condition``; unlike ``assert``, ``python -O`` keeps it."""
    if not condition:
        raise ContractError(message)


@dataclass
class CheckResult:
    name: str
    passed: bool
    message: str


def tiny_data(expid: str = "Crocodile_test", config_dir=None) -> SimpleNamespace:
    """The dataset of ``expid`` (``tiny_synth`` for every ``_test`` expid), generated and built on first use under
    ``$MDL_BENCH_HOME``: ``params``, ``feature_map`` and the parquet ``paths``."""
    from .config import ConfigSet
    from .data.build import ensure_dataset
    from .data.build import load_feature_map

    params = ConfigSet(config_dir).load(expid, {"verbose": 0})
    paths = ensure_dataset(params)
    logging.disable(logging.NOTSET)
    return SimpleNamespace(params=params, feature_map=load_feature_map(params), paths=paths)


def tiny_batch(tiny, rows: int = 512, seed: int = 3) -> dict:
    """One shuffled training batch of ``rows`` rows (seeded) that contains every domain."""
    from .data.loader import InMemoryLoader

    loader = InMemoryLoader(tiny.feature_map, tiny.paths["train"], batch_size=rows, shuffle=True, seed=seed)
    return next(iter(loader))


def build_model(tiny, expid: str, config_dir=None, **overrides):
    """A model of ``expid`` on the tiny data (seeded, quiet); ``overrides`` win over the config."""
    from mdl_bench.model_zoo.core.fuxictr_api import seed_everything
    from .runner import resolve

    params, model_class, _ = resolve(expid, config_dir, {"verbose": 0, **overrides})
    seed_everything(int(params.get("seed") or 0))
    return model_class(tiny.feature_map, **params)


# ------------------------------------------------------------------------------------------------ the checks
def check_config(name: str, config_dir=None, require_default: bool = False) -> str:
    from mdl_bench.model_zoo import get_model
    from .config import ConfigSet
    from .runner import resolve

    config = ConfigSet(config_dir)
    wanted = [name + TEST_SUFFIX] + ([name + DEFAULT_SUFFIX] if require_default else [])
    for expid in wanted:
        require(expid in config.models, f"no expid {expid} in the model configs; add a block `{expid}:` with "
                                        f"`model: {name}` to model_config.yaml of your --config folder")
        selected = config.model_params(expid)["model"]
        require(selected == name, f"{expid} ({config.model_files[expid]}) selects model {selected!r}, not {name!r}")
        try:
            resolve(expid, config_dir)
        except UserError as exc:
            raise AssertionError(str(exc)) from None
    cls = get_model(name)
    require(isinstance(cls.group, str) and cls.group, f"{name}.group must be a leaderboard group name (a string)")
    require(cls.display_name is None or isinstance(cls.display_name, str), f"{name}.display_name must be a string")
    return (f"{' and '.join(wanted)} resolve{'s' if len(wanted) == 1 else ''}; every key is a parameter of {name}; group {cls.group!r}, display name "
            f"{cls.display_name or name!r}")


def check_logits(tiny, batch: dict, expid: str, config_dir=None) -> str:
    import torch

    model = build_model(tiny, expid, config_dir)
    model.eval()
    X = model.get_inputs(batch)
    domain = model.domain_of(X)
    with torch.no_grad():
        out = model.logits(X, domain)
    fix = ("logits(X, domain) must return a pair (logit, aux): the logits as a tensor of shape B and a dict of "
           "named auxiliary losses - end it with `return logit, {}` when the model has none")
    if isinstance(out, torch.Tensor):
        raise ContractError(f"logits returned a bare tensor of shape {tuple(out.shape)}; {fix}")
    require(isinstance(out, tuple) and len(out) == 2,
            f"logits returned {type(out).__name__}"
            + (f" of {len(out)} items" if isinstance(out, (tuple, list)) else "") + f"; {fix}")
    logit, aux = out
    require(isinstance(logit, torch.Tensor), f"the first item logits returned is a {type(logit).__name__}, not a "
                                             f"tensor; {fix}")
    require(isinstance(aux, dict), f"the second item logits returned is a {type(aux).__name__}, not a dict; {fix}")
    return f"(logit of shape {tuple(logit.shape)}, aux {sorted(aux) or '{}'}) for a batch of {len(domain)} rows"


def check_shapes(tiny, batch: dict, expid: str, config_dir=None) -> str:
    import torch

    model = build_model(tiny, expid, config_dir)
    model.eval()
    with torch.no_grad():
        out = model(batch)
    B = batch[model.feature_map.labels[0]].shape[0]
    require(tuple(out["y_pred"].shape) == (B, 1),
            f"y_pred has shape {tuple(out['y_pred'].shape)}, expected ({B}, 1)")
    require(tuple(out["logit"].shape) == (B,), f"logit has shape {tuple(out['logit'].shape)}, expected ({B},)")
    require(torch.all((out["y_pred"] > 0) & (out["y_pred"] < 1)), "y_pred has values outside (0, 1)")
    seen = set(out["domain"].tolist())
    require(seen == set(range(model.num_domains)),
            f"the batch's domain indices are {sorted(seen)}, expected 0..{model.num_domains - 1}")
    return f"y_pred {B} x 1 in (0, 1), logit {B}, all {model.num_domains} domains"


def check_gradients(tiny, batch: dict, expid: str, config_dir=None) -> str:
    model = build_model(tiny, expid, config_dir)
    model.train()
    domains = set(model.domain_of(batch).tolist())
    require(domains == set(range(model.num_domains)),
            f"the batch lacks domains {set(range(model.num_domains)) - domains}")
    loss = model.compute_loss(model(batch), model.get_labels(batch))
    loss.backward()
    count = 0
    for pname, p in model.named_parameters():
        require(p.grad is not None, f"{pname} gets no gradient (unused, detached or routed away)")
        require(p.grad.abs().sum() > 0, f"{pname} gets a zero gradient")
        count += 1
    return f"all {count} parameter tensors get a non-zero gradient"


def check_one_step(tiny, batch: dict, expid: str, config_dir=None) -> str:
    import torch
    from .config import model_keys
    from .runner import resolve

    model_class = resolve(expid, config_dir, {"verbose": 0})[1]
    extra = {"net_dropout": 0.0} if "net_dropout" in model_keys(model_class) else {}
    model = build_model(tiny, expid, config_dir, learning_rate=1e-3, **extra)
    model.train()
    labels = model.get_labels(batch)
    torch.manual_seed(0)
    with torch.no_grad():
        before = model.add_loss(model(batch), labels).item()
    model.train_step(batch)
    torch.manual_seed(0)
    with torch.no_grad():
        after = model.add_loss(model(batch), labels).item()
    require(after < before, f"one step (learning rate 1e-3) did not lower the loss: {before:.6f} -> {after:.6f}")
    return f"loss {before:.5f} -> {after:.5f}"


def check_checkpoint(tiny, batch: dict, expid: str, folder, config_dir=None) -> str:
    import torch

    model = build_model(tiny, expid, config_dir)
    model.train_step(batch)  # move away from the initial weights
    path = str(Path(folder) / "contract.model")
    model.save_weights(path)
    other = build_model(tiny, expid, config_dir, seed=12345)
    other.load_weights(path)
    model.eval(), other.eval()
    with torch.no_grad():
        a, b = model(batch)["y_pred"], other(batch)["y_pred"]
    diff = (a - b).abs().max().item()
    require(torch.equal(a, b), f"predictions after save/load differ (max abs difference {diff:.3g})")
    return "identical predictions after save_weights/load_weights into a model built with another seed"


def check_step_components(tiny, batch: dict, expid: str, config_dir=None) -> str:
    """``step_components`` returns ``None`` or ``{name: closure}``; each closure gives a finite scalar whose
    ``backward()`` runs."""
    import torch

    model = build_model(tiny, expid, config_dir)
    model.train()
    X = model.get_inputs(batch)
    parts = model.step_components(X, model.domain_of(X))
    if parts is None:
        return "not split (step_components returns None): perf times the step as a whole"
    require(isinstance(parts, dict) and parts, f"step_components returned {type(parts).__name__}, expected None or "
                                               f"a non-empty dict of {{name: closure}}")
    for name, closure in parts.items():
        require(isinstance(name, str) and callable(closure),
                f"step_components: entry {name!r} must map a part name to a closure, got {type(closure).__name__}")
        out = closure()
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        require(isinstance(out, torch.Tensor) and out.dim() == 0,
                f"step_components[{name!r}]() returned {got}, expected a scalar tensor")
        require(bool(torch.isfinite(out)), f"step_components[{name!r}]() is not finite ({out.item()})")
        require(out.requires_grad, f"step_components[{name!r}]() does not depend on anything trainable: no backward")
        out.backward()
    model.zero_grad(set_to_none=True)
    return f"{len(parts)} parts ({', '.join(parts)}): each a finite scalar that backpropagates"


def field_options(model_class) -> list[str]:
    """The ``__init__`` options of a model that name fields: ``fields`` and every ``*_fields``."""
    import inspect

    return [p for p in inspect.signature(model_class.__init__).parameters if p == "fields" or p.endswith("_fields")]


def check_field_options(tiny, batch: dict, expid: str, config_dir=None) -> str:
    """Each field-naming option is selected by name (compared with each field's own lookup), and its order is
    immaterial."""
    import torch
    from .runner import resolve

    model_class = resolve(expid, config_dir, {"verbose": 0})[1]
    options = field_options(model_class)
    if not options:
        return "no option names fields"
    model = build_model(tiny, expid, config_dir)
    model.eval()
    selections = model.field_selections()
    active = [o for o in options if o in selections]
    for option in options:
        # an option may be inert in some configurations (Crocodile's prior_fields under gating: mmoe)
        require(option in selections or _option_inert(model, option),
                f"option {option!r} names fields but the model takes none through a FieldSelection named "
                f"{option!r}; select them with FieldSelection({option!r}, fields, table)")
    X = model.get_inputs(batch)
    for sel in selections.values():
        sel.record, sel.last = True, None
    try:
        with torch.no_grad():
            model(batch)
        for option in active:
            sel = selections[option]
            require(sel.last is not None, f"FieldSelection {option!r} is not used in the forward pass")
            out = sel.last if sel.last.dim() == 4 else sel.last.unsqueeze(0)  # M x B x n x D
            D = out.shape[-1]
            own = sel.table.embedding.embedding_layer(X)  # field -> B x (M*D), each field looked up alone
            for j, field in enumerate(sel.fields):
                for p in range(out.shape[0]):
                    ref = own[field][:, p * D:(p + 1) * D]
                    require(torch.equal(out[p, :, j], ref),
                            f"{option}: slot {j} of table {p} is not the embedding of {field!r} (max abs difference "
                            f"{(out[p, :, j] - ref).abs().max().item():.3g}); select fields by name, not position")
    finally:
        for sel in selections.values():
            sel.record, sel.last = False, None
    inputs = [n for n, spec in model.feature_map.features.items() if spec.get("type") != "meta"]
    for option in active:
        fields = list(selections[option].fields)
        if len(fields) < 2:  # add one more field so that there is an order to change
            fields += [next(n for n in inputs if n not in fields)]
        a = build_model(tiny, expid, config_dir, **{option: fields})
        b = build_model(tiny, expid, config_dir, **{option: fields[::-1]})
        a.eval(), b.eval()
        sa, sb = a.state_dict(), b.state_dict()
        require(list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa),
                f"{option}: listing its fields as {fields[::-1]} instead of {fields} builds other parameters")
        with torch.no_grad():
            require(torch.equal(a(batch)["y_pred"], b(batch)["y_pred"]),
                    f"{option}: listing its fields as {fields[::-1]} instead of {fields} changes the predictions")
    return (f"{', '.join(active)}: every slot is its field's own embedding; field order changes nothing"
            if active else f"{', '.join(options)} unused in this configuration")


def declared_hooks(model) -> list[str]:
    """The analysis/perf hooks ``model``'s class overrides (the base class's defaults are not declarations)."""
    from mdl_bench.model_zoo.base import MultiDomainModel

    return [name for name in HOOKS if getattr(type(model), name, None) is not getattr(MultiDomainModel, name)]


HOOKS = ("expert_outputs_for_analysis", "embedding_table_domains")


def _domain_index_or_none(value, K: int) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and 0 <= value < K)


def check_hooks(tiny, batch: dict, expid: str, config_dir=None) -> str:
    """Each declared hook returns what the analysis and perf tools read (see the module docstring)."""
    import torch

    model = build_model(tiny, expid, config_dir)
    model.eval()
    K, said = model.num_domains, []
    hooks = declared_hooks(model)
    if "expert_outputs_for_analysis" in hooks:
        X = model.get_inputs(batch)
        B = int(next(iter(X.values())).shape[0])
        with torch.no_grad():
            got = model.expert_outputs_for_analysis(X)
            half = model.expert_outputs_for_analysis({k: v[: B // 2] for k, v in X.items()})
        if got is None:
            require(half is None, "expert_outputs_for_analysis returns None for one batch and outputs for another")
            said.append("expert_outputs_for_analysis: no experts in this configuration")
        else:
            require(isinstance(got, tuple) and len(got) == 2,
                    "expert_outputs_for_analysis must return (outputs E x B x H, bound domains) or None")
            O, bound = got
            require(isinstance(O, torch.Tensor) and O.dim() == 3 and O.shape[1] == B,
                    f"expert_outputs_for_analysis: outputs of shape {tuple(getattr(O, 'shape', ()))}, expected "
                    f"E x {B} x H")
            require(bool(torch.isfinite(O).all()), "expert_outputs_for_analysis: outputs hold NaN or inf")
            bound = list(bound)
            require(len(bound) == O.shape[0], f"expert_outputs_for_analysis: {len(bound)} bound domains for "
                                              f"{O.shape[0]} experts")
            require(all(_domain_index_or_none(b, K) for b in bound),
                    f"expert_outputs_for_analysis: bound domains {bound} must each be a tower index 0..{K - 1} or None")
            require(half is not None and tuple(half[0].shape) == (O.shape[0], B // 2, O.shape[2])
                    and list(half[1]) == bound, "expert_outputs_for_analysis: another batch gives other experts")
            shared = sum(b is None for b in bound)
            said.append(f"expert_outputs_for_analysis: {O.shape[0]} experts x {O.shape[2]} ({shared} shared)")
    if "embedding_table_domains" in hooks:
        domains = model.embedding_table_domains
        tables = getattr(getattr(model, "embedding", None), "num_tables", None)
        require(tables is not None, "embedding_table_domains is declared but the model has no multi-embedding "
                                    "`self.embedding`")
        if domains is not None:
            domains = list(domains)
            require(len(domains) == tables, f"embedding_table_domains lists {len(domains)} domains for {tables} "
                                            f"tables of self.embedding")
            require(all(_domain_index_or_none(d, K) for d in domains),
                    f"embedding_table_domains {domains} must each be a tower index 0..{K - 1} or None")
        said.append(f"embedding_table_domains: {domains}")
    return "; ".join(said) if said else "no hook declared"


def _option_inert(model, option: str) -> bool:
    """An option a model declares but does not use in its current configuration (it says so itself)."""
    return option in getattr(model, "unused_options", ())


# ------------------------------------------------------------------------------------------------ all of them
def _attempt(name: str, check: Callable[[], str]) -> CheckResult:
    try:
        return CheckResult(name, True, check())
    except AssertionError as exc:
        return CheckResult(name, False, str(exc) or "assertion failed")
    except UserError as exc:
        return CheckResult(name, False, str(exc))
    except Exception as exc:  # a crash of the model's code is a failed check, reported in one line
        text = " ".join(str(exc).split())
        return CheckResult(name, False, f"{type(exc).__name__}: {text}"[:500])


def run_contract(name: str, config_dir=None, require_default: bool = False) -> list[CheckResult]:
    """Every check on model ``name`` with its ``<name>_test`` expid; later checks are skipped (failed) when the
    config or the data cannot be had."""
    from mdl_bench.model_zoo import get_model

    get_model(name)  # an unknown or broken model is a UserError, not a list of failures
    expid = name + TEST_SUFFIX
    results = [_attempt("config", lambda: check_config(name, config_dir, require_default))]
    if not results[0].passed:
        return results
    state = {}

    def data():
        state["tiny"] = tiny_data(expid, config_dir)
        state["batch"] = tiny_batch(state["tiny"])
        return f"{state['tiny'].params['dataset_id']}, a batch of {len(next(iter(state['batch'].values())))} rows"

    results.append(_attempt("data", data))
    if not results[-1].passed:
        return results
    tiny, batch = state["tiny"], state["batch"]
    results.append(_attempt("logits", lambda: check_logits(tiny, batch, expid, config_dir)))
    if not results[-1].passed:  # every check below calls logits: one clear failure, not the same one five times
        return results
    with tempfile.TemporaryDirectory(prefix="mdl-bench-check-") as folder:
        for label, check in (("shapes", lambda: check_shapes(tiny, batch, expid, config_dir)),
                             ("gradients", lambda: check_gradients(tiny, batch, expid, config_dir)),
                             ("one step", lambda: check_one_step(tiny, batch, expid, config_dir)),
                             ("checkpoint", lambda: check_checkpoint(tiny, batch, expid, folder, config_dir)),
                             ("step components", lambda: check_step_components(tiny, batch, expid, config_dir)),
                             ("field options", lambda: check_field_options(tiny, batch, expid, config_dir)),
                             ("hooks", lambda: check_hooks(tiny, batch, expid, config_dir))):
            results.append(_attempt(label, check))
    return results
