"""The measurements of ``mdl-bench perf``: models, CovLoss, the matched and stock comparison, gAUC, the build.

Each ``measure_*`` returns the JSON-ready section of the result (see :func:`.command.run_perf`); the FuxiCTR side
and the builds run in child processes (:mod:`.stock`), so that their Ray processes, memory and allocator settings
are their own.
"""
from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from mdl_bench.model_zoo.core.step import now
from mdl_bench.kernel.paths import bench_home
from .proc import run_child
from .settings import PerfConfig
from .timing import FirstBatches, bare_loop, batch_rows, median, silent, split_steps, time_closures

#: the child process's module (started by name: importing it here would load nothing the parent needs)
STOCK_MODULE = "mdl_bench.benchmark.perf.stock"


def stock_task(task: str, spec: dict, work: Path) -> dict:
    """Run one task of :mod:`.stock` in a child process; its JSON result plus the tree measurements."""
    spec_path, out_path = work / f"{task}.spec.json", work / f"{task}.out.json"
    spec_path.write_text(json.dumps(spec))
    child = run_child([sys.executable, "-m", STOCK_MODULE, task, str(spec_path), str(out_path)])
    if child["returncode"] != 0 or not out_path.exists():
        raise RuntimeError(f"perf child {task!r} failed (exit {child['returncode']}):\n{child['log_tail']}")
    result = json.loads(out_path.read_text())
    result.update({k: child[k] for k in ("wall_seconds", "peak_rss_bytes", "child_maxrss_bytes", "ray_processes")})
    return result


# ---------------------------------------------------------------------------------------------- models
def base_overrides(cfg: PerfConfig, work: Path) -> dict:
    over = {"model_root": str(work / "checkpoints"), "early_stop_patience": 10 ** 6}
    if cfg.dataset_id:
        over["dataset_id"] = cfg.dataset_id
    return over


def prepare(expid: str, overrides: dict):
    """Resolved params, model class, built paths and feature map of ``expid`` (the dataset built if needed)."""
    from ..data.build import ensure_dataset, load_feature_map
    from ..runner import resolve

    params, model_class, _ = resolve(expid, None, overrides)
    paths = ensure_dataset(params, log=lambda message: None)
    return params, model_class, paths, load_feature_map(params)


def new_model(model_class, feature_map, params: dict):
    from mdl_bench.model_zoo.core.fuxictr_api import seed_everything

    seed_everything(int(params.get("seed") or 0))
    return model_class(feature_map, **params)


def measure_training(model, params: dict, paths: dict, batches: int | None, epochs: int,
                     bare_batches: int | None = None, interleave_bare: bool = True,
                     min_epoch_seconds: float = 0.0) -> dict:
    """Real path (``make_loaders`` + ``fit``, one epoch of ``batches`` batches per call, ``epochs`` calls) with
    the bare loop on the same number of in-memory batches after each epoch. ``batches=None``: full epochs;
    ``min_epoch_seconds``: more batches for a fast model (from the warm-up step time)."""
    from ..runner import make_loaders

    train, valid, test = make_loaders(model.feature_map, paths, params)
    max_norm = model.max_gradient_norm
    warm = list(itertools.islice(iter(train), 3))
    step = bare_loop(model, warm, max_norm)[-1]  # warm-up: allocations, optimiser state
    if batches is not None and min_epoch_seconds > 0:
        batches = int(min(len(train), max(batches, np.ceil(min_epoch_seconds / max(step, 1e-6)))))
    n_bare = bare_batches or batches or len(train)
    in_memory = list(itertools.islice(iter(train), n_bare))
    first_epoch = len(model.epoch_log)  # the model logs each epoch's time and rows, evaluation excluded
    bare_sps, bare_steps = [], []
    fit_params = {k: v for k, v in params.items() if k != "epochs"}
    for _ in range(epochs):
        with silent():
            model.fit(FirstBatches(train, batches), epochs=1, validation_data=FirstBatches(valid, 2), **fit_params)
        if interleave_bare:
            steps = bare_loop(model, in_memory, max_norm)
            bare_sps.append(sum(batch_rows(b) for b in in_memory) / sum(steps))
            bare_steps.extend(steps)
    epochs_run = model.epoch_log[first_epoch:]
    real = [e["rows"] / e["seconds"] for e in epochs_run if e["seconds"] > 0]
    return {"real_sps": median(real), "real_sps_repeats": real, "bare_sps": median(bare_sps),
            "bare_sps_repeats": bare_sps, "bare_step_ms": 1000 * median(bare_steps),
            "real_step_ms": 1000 * median([e["seconds"] * train.batch_size / e["rows"] for e in epochs_run
                                           if e["rows"]]),
            "model_counter_sps": float(model.train_samples_per_second),
            "batches": batches if batches is not None else len(train),
            "loaders": (train, valid, test), "in_memory": in_memory}


def num_tables(model) -> int | None:
    """The number of tables of the model's main multi-embedding ``self.embedding`` (the tables that
    ``embedding_table_domains`` describes); ``None`` for a model without a multi-embedding."""
    from mdl_bench.model_zoo.layers.embedding import MultiEmbedding

    declared = model.embedding_table_domains
    if declared is not None:
        return len(declared)
    embedding = getattr(model, "embedding", None)
    return embedding.num_tables if isinstance(embedding, MultiEmbedding) else None


def measure_model(name: str, cfg: PerfConfig, work: Path) -> dict:
    """Real vs bare throughput, step split, evaluation speed of one registered model."""
    params, model_class, paths, feature_map = prepare(name + cfg.expid_suffix, base_overrides(cfg, work))
    model = new_model(model_class, feature_map, params)
    out = measure_training(model, params, paths, cfg.batches, cfg.repeats, min_epoch_seconds=cfg.min_epoch_seconds)
    train, valid, test = out.pop("loaders")
    out.pop("in_memory")
    out["split_ms"] = split_steps(model, FirstBatches(train, out["batches"] + 1), out["batches"],
                                  model.max_gradient_norm)
    eval_sps = []
    for _ in range(max(2, cfg.repeats)):
        subset = FirstBatches(test, cfg.eval_batches)
        rows = min(cfg.eval_batches * test.batch_size, test.num_samples)
        tick = now(model.device)
        with silent():
            model.evaluate(subset)
        eval_sps.append(rows / (now(model.device) - tick))
    display = model_class.display_name or name
    out.update({"display_name": display, "expid": name + cfg.expid_suffix, "batch_size": train.batch_size,
                "repeats": cfg.repeats, "eval_sps": median(eval_sps),
                "real_over_bare": out["real_sps"] / out["bare_sps"], "num_parameters": model.num_parameters(),
                "num_tables": num_tables(model)})
    return out


# ---------------------------------------------------------------------------------------------- CovLoss
def measure_covloss(cfg: PerfConfig, work: Path, models: dict) -> dict:
    """Crocodile's step with CovLoss on all rows, on 32 sampled rows and without it; CovLoss's own
    forward+backward time on the step's expert outputs (Crocodile's ``cov`` step component); its share of the
    step."""
    from ..runner import make_loaders

    expid = "Crocodile" + cfg.expid_suffix
    base_params, model_class, paths, feature_map = prepare(expid, base_overrides(cfg, work))
    default_rows = int(base_params.get("cov_sample_rows") or 0)
    out = {"default_sample_rows": default_rows, "settings": {}}
    for label, over in (("all rows", {"cov_sample_rows": 0}), ("32 rows", {"cov_sample_rows": 32}),
                        ("no CovLoss", {"aux_loss": "none"})):
        params = dict(base_params, **over)
        model = new_model(model_class, feature_map, params)
        train, _, _ = make_loaders(feature_map, paths, params)
        batches = list(itertools.islice(iter(train), cfg.batches + 1))
        max_norm = model.max_gradient_norm
        bare_loop(model, batches[:1], max_norm)
        steps = [t for _ in range(max(1, cfg.repeats - 1)) for t in bare_loop(model, batches[1:], max_norm)]
        entry = {"step_ms": 1000 * median(steps), "sample_rows": params.get("cov_sample_rows", 0)}
        X = model.get_inputs(batches[1])
        cov = (model.step_components(X, model.domain_of(X)) or {}).get("cov")  # absent without CovLoss
        if cov is not None:
            entry["cov_ms"] = time_closures({"cov": cov}, model.device, cfg.cov_repeats)["cov"]
            entry["share"] = entry["cov_ms"] / entry["step_ms"]
            model.zero_grad(set_to_none=True)
        out["settings"][label] = entry
    croc, me = models.get("Crocodile"), models.get("ME_MMoE")
    if croc and me:
        out["crocodile_over_me_mmoe"] = croc["bare_step_ms"] / me["bare_step_ms"]
        out["num_tables"] = croc.get("num_tables")
    return out


# ---------------------------------------------------------------------------------------------- matched vs stock
def _matched_dnn_class():
    from mdl_bench.model_zoo.core.fuxictr_api import MLP_Block

    from mdl_bench.model_zoo.base import MultiDomainModel
    from mdl_bench.model_zoo.layers import MultiEmbedding, single

    class MatchedDNN(MultiDomainModel):
        """The stock comparison's plain DNN on this package's path: one embedding table, MLP -> logit.

        Not a benchmark model (no domain towers); it exists so that FuxiCTR's DNN has an exact counterpart."""

        def __init__(self, feature_map, model_id="MatchedDNN", gpu=-1, learning_rate=1e-3, embedding_dim=16,
                     dnn_hidden_units=(256, 128, 64), **kwargs):
            super().__init__(feature_map, model_id=model_id, gpu=gpu, learning_rate=learning_rate,
                             embedding_dim=embedding_dim, **kwargs)
            self.embedding = MultiEmbedding(feature_map, embedding_dim, 1)
            self.mlp = MLP_Block(self.embedding.output_dim, list(dnn_hidden_units), hidden_activations="ReLU",
                                 output_dim=1)
            self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
            self.reset_parameters()
            self.model_to_device()

        def logits(self, X, domain):
            return self.mlp(single(self.embedding.flat(X))).view(-1), {}

    return MatchedDNN


DNN_HIDDEN_UNITS = [256, 128, 64]  # the size rule's bottom [256, 128] plus its tower [64], as Single Domain's DNN
#: the stock models are FuxiCTR's plain MLP_Blocks: our matched MMoE runs without batch norm and dropout too, whatever
#: its tuned ``_default`` block says, and the stock MMoE gets our number of experts (``measure_stock``)
STOCK_MATCHED = {"batch_norm": False, "net_dropout": 0.0}


def measure_matched(cfg: PerfConfig, work: Path) -> dict:
    """This package's side of the stock comparison: the matched DNN and MMoE through its real path."""
    out = {}
    over = base_overrides(cfg, work)
    for name in ("DNN", "MMoE"):
        if name == "DNN":
            params, _, paths, feature_map = prepare("SharedBottom" + cfg.expid_suffix, over)
            params = dict(params, model_id="MatchedDNN", dnn_hidden_units=DNN_HIDDEN_UNITS)
            model = new_model(_matched_dnn_class(), feature_map, params)
        else:
            params, model_class, paths, feature_map = prepare("MMoE" + cfg.expid_suffix, {**over, **STOCK_MATCHED})
            model = new_model(model_class, feature_map, params)
        result = measure_training(model, params, paths, cfg.matched_batches, cfg.matched_epochs,
                                  bare_batches=cfg.stock_bare_batches, interleave_bare=False)
        result.pop("loaders")
        in_memory = result.pop("in_memory")
        steps = bare_loop(model, in_memory, model.max_gradient_norm)
        result["bare_sps"] = sum(batch_rows(b) for b in in_memory) / sum(steps)
        result["bare_step_ms"] = 1000 * median(steps)
        result["num_parameters"] = model.num_parameters()
        if name == "MMoE":
            result["num_experts"] = int(model.num_experts)
        out[name] = result
    out["_spec"] = {"params": params, "paths": paths, "feature_map_dir": feature_map.data_dir}
    return out


def measure_stock(cfg: PerfConfig, work: Path, matched: dict) -> dict:
    """FuxiCTR's stock pipeline on the same built data and architectures, in a child process."""
    spec_src = matched["_spec"]
    params, paths = spec_src["params"], spec_src["paths"]
    from ..config import ConfigSet

    mmoe = ConfigSet().load("MMoE" + cfg.expid_suffix, {"dataset_id": params["dataset_id"]})
    spec = {"dataset_id": params["dataset_id"], "data_dir": spec_src["feature_map_dir"],
            "train_data": paths["train"], "valid_data": paths["valid"], "batch_size": int(params["batch_size"]),
            "embedding_dim": int(params["embedding_dim"]), "epochs": cfg.matched_epochs,
            "bare_batches": cfg.stock_bare_batches, "model_root": str(work / "stock_checkpoints"),
            "embedding_regularizer": params.get("embedding_regularizer"),
            "net_regularizer": params.get("net_regularizer"), "seed": int(params.get("seed") or 0),
            "domain_field": params["domain_field"], "domains": list(params["domains"]),
            "group_id": params.get("group_id"),
            "dnn_hidden_units": DNN_HIDDEN_UNITS, "expert_hidden_units": list(mmoe["expert_hidden_units"]),
            "tower_hidden_units": list(mmoe["tower_hidden_units"]),
            "num_experts": int(matched["MMoE"]["num_experts"]), "models": ["DNN", "MMoE"]}
    result = stock_task("train", spec, work)
    for name, entry in result["models"].items():
        entry["real_sps"] = median(entry["samples_per_second"])
        steps = entry["bare_step_seconds"]
        entry["bare_sps"] = sum(entry["bare_rows"]) / sum(steps) if steps else float("nan")
        entry["bare_step_ms"] = 1000 * median(steps)
    return result


# ---------------------------------------------------------------------------------------------- gAUC
def gauc_data(rows: int, users: int, seed: int = 7):
    """Labels, scores with ties (3 decimals) and Zipf-like user ids for the gAUC comparison."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, users + 1) ** 0.8
    group = rng.choice(users, size=rows, p=weights / weights.sum())
    y = (rng.random(rows) < 0.25).astype(np.float64)
    score = np.round(np.clip(0.3 + 0.15 * y + rng.normal(0.0, 0.2, rows), 0.0, 1.0), 3)
    return y, score, group


def measure_gauc(rows: int, users: int, repeats: int = 3) -> dict:
    from mdl_bench.model_zoo.core.fuxictr_api import evaluate_metrics

    from mdl_bench.model_zoo.core.metrics import gauc_score

    y, score, group = gauc_data(rows, users)
    times, value = [], None
    for _ in range(repeats):
        tick = time.perf_counter()
        value = gauc_score(y, score, group)
        times.append(time.perf_counter() - tick)
    tick = time.perf_counter()
    reference = float(evaluate_metrics(y, score, ["gAUC"], group)["gAUC"])
    fuxictr_seconds = time.perf_counter() - tick
    return {"rows": rows, "users": users, "groups_with_rows": int(np.unique(group).shape[0]),
            "project_seconds": median(times), "fuxictr_seconds": fuxictr_seconds,
            "speedup": fuxictr_seconds / median(times), "project_value": value, "fuxictr_value": reference,
            "max_abs_diff": abs(value - reference)}


# ---------------------------------------------------------------------------------------------- build
def measure_build(cfg: PerfConfig, work: Path) -> dict:
    """This package's build and FuxiCTR's ``build_dataset`` on the same raw rows, each in a child process."""
    from ..config import ConfigSet
    from ..data import synth
    from ..data.build import expand_feature_cols

    rows = cfg.build_rows
    n_valid = n_test = rows // 10
    spec = synth.make_spec("kuairand_like", n_train=rows - n_valid - n_test, n_valid=n_valid, n_test=n_test)
    raw = bench_home() / "raw" / f"perf_build_{rows}"
    synth.ensure_raw(spec, raw)
    dataset = ConfigSet().dataset_params("kuairand_like")
    oracle = dataset.get("oracle_field")
    # FuxiCTR 2.3.10 cannot build a `remap: False` meta column (KeyError __OOV__), so both sides build the same
    # columns without the oracle probability.
    cols = [c for c in expand_feature_cols(dataset["feature_cols"]) if c["name"] != oracle]
    files = {f"{s}_data": str(raw / f"{s}.csv") for s in ("train", "valid", "test")}
    common = dict(dataset_id="perf_build", feature_cols=cols, label_col=dataset["label_col"],
                  group_id=dataset.get("group_id"), min_categr_count=dataset.get("min_categr_count", 1), **files)
    out = {"rows": rows, "splits": {"train": rows - 2 * n_valid, "valid": n_valid, "test": n_test}}
    project = dict(common, data_root=str(work / "build_project"), domain_field=dataset["domain_field"],
                   domains=dataset["domains"])
    out["project"] = stock_task("build_project", project, work)
    if cfg.build_fuxictr:
        out["fuxictr"] = stock_task("build_fuxictr", dict(common, data_root=str(work / "build_fuxictr")), work)
        out["speedup"] = out["fuxictr"]["seconds"] / out["project"]["seconds"]
        out["memory_ratio"] = out["project"]["peak_rss_bytes"] / out["fuxictr"]["peak_rss_bytes"]
    return out
