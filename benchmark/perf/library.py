"""This package's training beside a public multi-domain library's bare loop (``mdl-bench perf --library-path DIR``).

The library is Scenario-Wise Rec (``github.com/Xiaopengli1/Scenario-Wise-Rec``, package ``scenario_wise_rec``),
imported from a checkout whose path is given on the command line: it is never a dependency of this package, and
nothing of it is copied here. For every model both have (:data:`MATCHES`), the library's model is built with the
same embedding width, hidden widths, batch norm and input fields as this package's ``<Model>_default`` on the
default data, and its bare loop is timed: zero_grad, forward, its BCE loss, backward and Adam step (its trainer's
step, ``CTRTrainer.train_one_epoch``) on batches already in memory as torch tensors, in this process with the same
torch threads. Against it stands this package's end-to-end training (``make_loaders`` + ``fit``, as
:func:`.measure.measure_model` measures it), right before, on the same batch size.
"""
from __future__ import annotations

import importlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mdl_bench.kernel.errors import UserError
from .settings import PerfConfig

#: the library's package and the modules read from it
PACKAGE = "scenario_wise_rec"
MODELS_MODULE = f"{PACKAGE}.models.multi_domain"
FEATURES_MODULE = f"{PACKAGE}.basic.features"
#: the key under which the library's models read a row's domain (a tower index 0..K-1)
DOMAIN_KEY = "domain_indicator"
#: its trainer's optimiser defaults (``CTRTrainer``: Adam, weight decay 1e-5); the learning rate is ours
WEIGHT_DECAY = 1e-5

#: our side of every pair runs with these, whatever its ``_default`` block says, so that both sides time the same
#: network: the library's MLPs always have batch norm, and its models are built here without dropout
MATCHED_RECIPE = {"batch_norm": True, "net_dropout": 0.0}

SKIPPED = "beside a public library: skipped (give --library-path DIR, a checkout of Scenario-Wise-Rec)"


@dataclass(frozen=True)
class Library:
    """An imported checkout: its models and feature classes, where it is and at which commit."""

    root: Path
    commit: str | None
    models: Any
    features: Any


@dataclass(frozen=True)
class Inputs:
    """What the library's constructors take, from this package's feature map: every model input as the library's
    feature object, the domain fields' (its "scenario" features) and the rest (its "agnostic" features)."""

    all: list
    domain: list
    other: list
    num_domains: int


def _mlp(dims) -> dict:
    # the library's MLP always has batch norm; so do today's defaults (build_theirs checks)
    return {"dims": list(dims), "activation": "relu", "dropout": 0}


def _shared_bottom(lib: Library, x: Inputs, p: dict):
    return lib.models.SharedBottom(x.all, x.num_domains, bottom_params=_mlp(p["bottom_hidden_units"]),
                                   tower_params=_mlp(p["tower_hidden_units"]))


def _mmoe(lib: Library, x: Inputs, p: dict):
    return lib.models.MMOE(x.all, x.num_domains, n_expert=int(p.get("num_experts") or x.num_domains),
                           expert_params=_mlp(p["expert_hidden_units"]), tower_params=_mlp(p["tower_hidden_units"]))


def _ple(lib: Library, x: Inputs, p: dict):
    # the library's levels repeat the whole expert MLP, ours split it over the levels: both run one level of the
    # whole MLP (ours with num_levels 1, see MATCHES), the same experts, gates and towers
    return lib.models.PLE(x.all, x.num_domains, n_level=1, n_expert_specific=int(p["num_specific_experts"]),
                          n_expert_shared=int(p["num_shared_experts"]), expert_params=_mlp(p["expert_hidden_units"]),
                          tower_params=_mlp(p["tower_hidden_units"]))


def _star(lib: Library, x: Inputs, p: dict):
    return lib.models.Star(x.all, x.num_domains, fcn_dims=list(p["star_hidden_units"]),
                           aux_dims=list(p["aux_hidden_units"]))


def _adasparse(lib: Library, x: Inputs, p: dict):
    return lib.models.AdaSparse(x.domain, x.other, mlp_params=_mlp(p["hidden_units"]),
                                form=str(p["weighting"]).capitalize(), epsilon=float(p["epsilon"]),
                                beta=float(p["beta"]), alpha=float(p["alpha_init"]))


@dataclass(frozen=True)
class Match:
    """One of our models and the library's class that matches it; ``how`` says how the architecture was matched."""

    ours: str
    theirs: str
    build: Callable[[Library, Inputs, dict], Any]
    how: str
    #: our keys set to what the library's model can express (beside :data:`MATCHED_RECIPE`)
    ours_overrides: tuple[tuple[str, Any], ...] = ()


MATCHES = (
    Match("SharedBottom", "SharedBottom", _shared_bottom, "bottom and towers at our widths"),
    Match("MMoE", "MMOE", _mmoe, "E = K experts, our expert and tower widths"),
    Match("PLE", "PLE", _ple, "our specific and shared experts, the whole expert MLP as one level on both "
                              "sides (ours with num_levels 1)", (("num_levels", 1),)),
    Match("STAR", "Star", _star, "star FCN and auxiliary network at our widths"),
    Match("AdaSparse", "AdaSparse", _adasparse, "domain field as the scenario feature, our DNN widths, "
                                                "Fusion weighting with our epsilon, beta, alpha"),
)
#: our models without a counterpart there, and why
UNMATCHED = {"PEPNet": "the library has EPNet and PPNet as separate models, not PEPNet (both together)",
             "HiNet": "not in the library", "Crocodile": "not in the library", "ME_MMoE": "not in the library",
             "ME_PLE": "not in the library", "SDEM": "not in the library", "SingleDomain": "not in the library"}


def load_library(path: str | Path | None) -> Library:
    """Import the library from a checkout; a missing or wrong path is a one-line error."""
    if not path:
        raise UserError(SKIPPED)
    root = Path(path).expanduser().resolve()
    if not (root / PACKAGE.replace(".", "/") / "__init__.py").is_file():
        raise UserError(f"--library-path {path}: no {PACKAGE} package there; give the root of a checkout of "
                        f"Scenario-Wise-Rec (the folder that holds {PACKAGE}/)")
    sys.path.insert(0, str(root))
    try:
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]  # another checkout imported earlier in this process
        models = importlib.import_module(MODELS_MODULE)
        features = importlib.import_module(FEATURES_MODULE)
    except ImportError as exc:
        raise UserError(f"--library-path {path}: cannot import {PACKAGE} ({exc})") from None
    finally:
        sys.path.remove(str(root))
    return Library(root, _commit(root), models, features)


def _commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def matched(lib: Library, names: list[str]) -> list[Match]:
    """The matches among ``names`` whose class the library has."""
    return [m for m in MATCHES if m.ours in names and hasattr(lib.models, m.theirs)]


def library_inputs(lib: Library, model) -> Inputs:
    """The library's feature objects for the fields our ``model`` embeds (its ``self.embedding``), at its width."""
    spec = model.feature_map.features
    dim = model.embedding.embedding_dim

    def feature(name):
        if spec[name].get("type") == "numeric":
            return lib.features.DenseFeature(name)
        return lib.features.SparseFeature(name, vocab_size=int(spec[name]["vocab_size"]), embed_dim=dim)

    fields = list(model.embedding.fields)
    domain_fields = [model.domain_field] if model.domain_field in fields else []
    return Inputs(all=[feature(n) for n in fields], domain=[feature(n) for n in domain_fields],
                  other=[feature(n) for n in fields if n not in domain_fields], num_domains=model.num_domains)


def build_theirs(lib: Library, match: Match, model, params: dict):
    """The library's model matching our ``model`` built from ``params`` (its resolved expid)."""
    if not params.get("batch_norm"):
        raise UserError(f"{match.ours}: the library's MLPs always use batch norm; compare with batch_norm: true")
    return match.build(lib, library_inputs(lib, model), params)


def library_batches(model, batches: list[dict]) -> list[tuple[dict, Any]]:
    """Our in-memory batches as the library reads them: ``{field: int64 tensor, domain_indicator: tower index}``
    and the float labels (converted before timing, so that its step pays no conversion)."""
    out = []
    for batch in batches:
        X = model.get_inputs(batch)
        x = {name: X[name].long() for name in model.embedding.fields}
        x[DOMAIN_KEY] = model.domain_of(X).long()
        out.append((x, model.get_labels(batch).float().reshape(-1)))
    return out


def their_bare_loop(net, optimizer, criterion, batches: list[tuple[dict, Any]]) -> list[float]:
    """Seconds of each step of the library trainer's loop: zero_grad, forward, loss, backward, optimiser step."""
    from mdl_bench.model_zoo.core.step import now

    net.train()
    times = []
    for x, y in batches:
        tick = now()
        y_pred = net(x)
        loss = criterion(y_pred, y)
        net.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(now() - tick)
    return times


def measure_pair(lib: Library, match: Match, cfg: PerfConfig, work: Path) -> dict:
    """Our real and bare throughput (as :func:`.measure.measure_model`, with :data:`MATCHED_RECIPE`), then the
    library's bare loop on the same number of in-memory batches of our loader, ``cfg.repeats`` passes each."""
    import itertools

    import torch

    from .measure import base_overrides, measure_training, new_model, prepare
    from .timing import batch_rows, median

    overrides = {**base_overrides(cfg, work), **MATCHED_RECIPE, **dict(match.ours_overrides)}
    params, model_class, paths, feature_map = prepare(match.ours + cfg.expid_suffix, overrides)
    ours = new_model(model_class, feature_map, params)
    out = measure_training(ours, params, paths, cfg.batches, cfg.repeats, min_epoch_seconds=cfg.min_epoch_seconds)
    train, _, _ = out.pop("loaders")
    out.pop("in_memory")
    batches = library_batches(ours, list(itertools.islice(iter(train), out["batches"] + 1)))
    torch.manual_seed(int(params.get("seed") or 0))
    net = build_theirs(lib, match, ours, params).to(ours.device)
    optimizer = torch.optim.Adam(net.parameters(), lr=float(params["learning_rate"]), weight_decay=WEIGHT_DECAY)
    criterion = torch.nn.BCELoss()
    their_bare_loop(net, optimizer, criterion, batches[:1])  # warm-up: allocations, optimiser state
    rows = sum(batch_rows(x) for x, _ in batches[1:])
    passes = [rows / sum(their_bare_loop(net, optimizer, criterion, batches[1:])) for _ in range(cfg.repeats)]
    return {"ours": match.ours, "display_name": model_class.display_name or match.ours, "theirs": match.theirs,
            "how": match.how, "recipe": dict(MATCHED_RECIPE),
            "ours_overrides": dict(match.ours_overrides), "batch_size": train.batch_size, "batches": len(batches) - 1,
            "real_sps": out["real_sps"], "bare_sps": out["bare_sps"], "theirs_bare_sps": median(passes),
            "theirs_bare_sps_repeats": passes, "real_over_theirs": out["real_sps"] / median(passes),
            "num_parameters": ours.num_parameters(),
            "theirs_num_parameters": sum(p.numel() for p in net.parameters() if p.requires_grad)}


def measure_library(path: str | Path | None, cfg: PerfConfig, names: list[str], work: Path,
                    say: Callable[[str], None] = lambda message: None) -> dict:
    """Every matched model among ``names``: ours end to end against the library's bare loop."""
    lib = load_library(path)
    out: dict[str, Any] = {"library": "Scenario-Wise Rec", "package": PACKAGE, "path": str(lib.root),
                           "commit": lib.commit, "models": {},
                           "unmatched": {n: UNMATCHED[n] for n in names if n in UNMATCHED}}
    out["unmatched"].update({m.ours: f"the library has no {m.theirs}" for m in MATCHES
                             if m.ours in names and not hasattr(lib.models, m.theirs)})
    for match in matched(lib, names):
        say(f"library: {match.ours} beside {PACKAGE}'s {match.theirs}")
        out["models"][match.ours] = measure_pair(lib, match, cfg, work)
    return out
