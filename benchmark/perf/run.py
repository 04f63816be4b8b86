"""One ``mdl-bench perf`` session: :func:`run_perf` runs every measurement and writes the JSON result, the Markdown
report and the scaling figure (the command itself is :mod:`mdl_bench.benchmark.cli.perf`)."""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mdl_bench.model_zoo.core import allocator
from mdl_bench.kernel.errors import UserError
from mdl_bench.kernel.paths import bench_home
from .measure import measure_build, measure_covloss, measure_gauc, measure_matched, measure_model, measure_stock
from .library import SKIPPED, load_library, measure_library
from .plot import plot_domain_curve, plot_scaling
from .proc import TreeSampler
from .report import render_markdown
from .scaling import SCALING_MODELS, domain_curve_table, measure_domain_curve, measure_scaling
from .settings import PerfConfig
from .targets import evaluate_targets


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def default_out_path() -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return bench_home() / "perf" / f"perf-{stamp}.json"


def run_domain_scaling(cfg: PerfConfig, out_path: str | os.PathLike | None = None,
                       command: str = "mdl-bench perf --scaling",
                       progress: Callable[[str], None] | None = None) -> dict:
    """Only the K curve (:func:`.scaling.measure_domain_curve`, ``cfg.scaling_domains``) of ``cfg.models``
    (default Crocodile and ME-MMoE): writes the JSON result and a Markdown table (step, towers, rest per model and
    K) next to it; returns the result dict."""
    out_path = Path(out_path) if out_path else bench_home() / "perf" / (
        "scaling-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ".json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger().setLevel(logging.WARNING)
    started = time.perf_counter()
    meta = _meta(cfg, command, allocator.keep_freed_memory())
    work = Path(tempfile.mkdtemp(prefix="perf-", dir=bench_home() if bench_home().exists() else None))
    models = tuple(cfg.models or SCALING_MODELS)
    try:
        curve = measure_domain_curve(cfg, work, models=models, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta["load_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["seconds"] = time.perf_counter() - started
    table = domain_curve_table(curve, models)
    md_path = out_path.with_suffix(".md")
    png = plot_domain_curve(curve, models, out_path.with_suffix(".png"),
                            f"{command} (load {meta['load_start'][0]:.1f})")
    result = _jsonable({"meta": meta, "models": list(models), "domains": curve,
                        "files": {"json": str(out_path), "markdown": str(md_path), "png": png}})
    out_path.write_text(json.dumps(result, indent=2))
    md_path.write_text(f"# K scaling\n\n`{command}`, load {meta['load_start']} -> {meta['load_end']}, "
                       f"{meta['seconds']:.0f} s\n\n{table}\n")
    return result


def _model_names(cfg: PerfConfig) -> list[str]:
    """The models ``cfg`` asks for (all registered ones by default); an unknown name is a user error."""
    from mdl_bench.model_zoo import registry

    known = registry()
    names = list(cfg.models) if cfg.models else list(known)
    for name in names:
        if name not in known:
            from mdl_bench.kernel.errors import close_matches

            raise UserError(f"perf: unknown model {name!r}{close_matches(name, known)}; registered: "
                            f"{', '.join(known)}")
    return names


def _meta(cfg: PerfConfig, command: str, allocator_tuned: bool) -> dict:
    import torch

    from mdl_bench.model_zoo.core.fuxictr_api import version as fuxictr_version

    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "command": command,
            "host": platform.node(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_start": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
            "fuxictr": fuxictr_version(), "python": platform.python_version(),
            "quick": cfg.quick, "allocator_tuned": allocator_tuned, "config": dataclasses.asdict(cfg)}


#: the phases in which this package trains (its peak memory and Ray processes are taken over these)
PROJECT_PHASES = ("models", "covloss", "matched", "scaling")


def _measure_training(cfg: PerfConfig, names: list[str], work: Path, sampler: TreeSampler, say, result: dict):
    """Models, the public library beside them, CovLoss, the matched architectures and FuxiCTR's stock pipeline,
    each in its sampler phase."""
    say("data: default dataset")
    result["models"] = {}
    with sampler.phase("models"):
        for name in names:
            say(f"models: {name}")
            result["models"][name] = measure_model(name, cfg, work)
    if cfg.library_path:  # right after the models, so that both sides see the machine in the same state
        with sampler.phase("library"):
            result["library"] = measure_library(cfg.library_path, cfg, names, work, say)
    else:
        result["library"] = {"skipped": SKIPPED}
    if "Crocodile" in names:
        with sampler.phase("covloss"):
            say("covloss: Crocodile with all rows, 32 rows, none")
            result["covloss"] = measure_covloss(cfg, work, result["models"])
    with sampler.phase("matched"):
        say("matched: DNN and MMoE through this package's path")
        matched = measure_matched(cfg, work)
        result["matched"] = matched
    if cfg.stock:  # right after its counterpart, so that both see the machine in the same state
        with sampler.phase("stock"):
            say("stock: FuxiCTR RankDataLoader + fit (child process, Ray)")
            stock = measure_stock(cfg, work, matched)
            stock["epochs"] = cfg.matched_epochs
            stock["rows_per_epoch"] = next(iter(stock["models"].values()))["rows_per_epoch"]
            stock["speedup"] = {n: matched[n]["real_sps"] / stock["models"][n]["real_sps"]
                                for n in stock["models"]}
            result["stock"] = stock


def _measure_rest(cfg: PerfConfig, work: Path, sampler: TreeSampler, say, result: dict):
    """Scaling, gAUC and the dataset build, each in its sampler phase."""
    with sampler.phase("scaling"):
        say("scaling: M and K")
        result["scaling"] = measure_scaling(cfg, work)
    with sampler.phase("gauc"):
        say(f"gauc: {cfg.gauc_rows:,} rows, {cfg.gauc_users:,} users")
        result["gauc"] = measure_gauc(cfg.gauc_rows, cfg.gauc_users)
    with sampler.phase("build"):
        say(f"build: {cfg.build_rows:,} rows" + (" (and FuxiCTR's build_dataset)" if cfg.build_fuxictr else ""))
        result["build"] = measure_build(cfg, work)


def _write(result: dict, out_path: Path) -> dict:
    """The scaling figure, the JSON (meta and targets first: ratios first) and the Markdown report."""
    png = plot_scaling(result["scaling"], out_path.with_name(out_path.stem + "_scaling.png"))
    md_path = out_path.with_suffix(".md")
    result["files"] = {"json": str(out_path), "markdown": str(md_path), "png": png}
    ordered = {"meta": result.pop("meta"), "targets": result.pop("targets")}
    clean = _jsonable({**ordered, **result})
    out_path.write_text(json.dumps(clean, indent=2))
    md_path.write_text(render_markdown(clean))
    return clean


def run_perf(cfg: PerfConfig, out_path: str | os.PathLike | None = None, command: str = "mdl-bench perf",
             progress: Callable[[str], None] | None = None) -> dict:
    """Run every measurement of ``cfg``; write JSON, Markdown and PNG; return the result dict."""
    say = progress or (lambda message: None)
    out_path = Path(out_path) if out_path else default_out_path()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    names = _model_names(cfg)
    if cfg.library_path:
        load_library(cfg.library_path)  # a wrong path fails now, not after minutes of measurements
    else:
        say(SKIPPED)
    logging.getLogger().setLevel(logging.WARNING)
    started = time.perf_counter()
    tuned = allocator.keep_freed_memory()  # what this package's training path does (MultiDomainModel.fit)
    result: dict[str, Any] = {"meta": _meta(cfg, command, tuned)}
    work = Path(tempfile.mkdtemp(prefix="perf-", dir=bench_home() if bench_home().exists() else None))
    try:
        with TreeSampler() as sampler:
            _measure_training(cfg, names, work, sampler, say, result)
            _measure_rest(cfg, work, sampler, say, result)
        result["memory"] = {"project_peak_rss_bytes": max(sampler.peak[p] for p in PROJECT_PHASES)}
        result["ray"] = {"default_path": max(sampler.ray[p] for p in PROJECT_PHASES)}
        if "stock" in result:
            result["ray"]["stock_path"] = result["stock"]["ray_processes"]
        result["meta"]["others_cpu"] = dict(sampler.others_cpu)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["targets"] = evaluate_targets(result)
    result["meta"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
    result["meta"]["seconds"] = time.perf_counter() - started
    return _write(result, out_path)
