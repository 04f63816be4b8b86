"""``mdl-bench perf``'s scaling curves: step time and its parts as the number of tables M and of domains K grow.

The parts are the model's own (:meth:`MultiDomainModel.step_components`); a model that does not split its step
is reported as a whole ("not split").
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from .measure import base_overrides, new_model, num_tables, prepare
from .settings import PerfConfig
from .timing import bare_loop, batch_rows, component_times, median, split_steps


def _k_domain_data(K: int, cfg: PerfConfig, work: Path) -> dict:
    """Dataset overrides for synthetic data with ``K`` domains (long-tailed sizes, one conflicting domain)."""
    domains = list(range(K))
    sizes = [round(1.0 / (i + 1) ** 0.8, 4) for i in range(K)]
    rho = [0.8 if i % 4 != 3 else -0.6 for i in range(K)]
    offset = [-0.8] * K
    root = work / f"k{K}"
    n_small = max(1000, cfg.scaling_rows // 10)
    return {"data_root": str(root / "data"), "train_data": str(root / "raw" / "train.csv"),
            "valid_data": str(root / "raw" / "valid.csv"), "test_data": str(root / "raw" / "test.csv"),
            "synth": {"preset": "kuairand_like", "seed": 11, "n_train": cfg.scaling_rows, "n_valid": n_small,
                      "n_test": n_small, "domains": domains, "domain_sizes": sizes, "domain_rho": rho,
                      "domain_offset": offset},
            "domains": domains}


def _scale_point(name: str, overrides: dict, cfg: PerfConfig, work: Path) -> dict:
    """Step time, its phases and the model's own parts (``components_ms``; ``None``: the model does not split its
    step) of one model at one configuration."""
    from ..runner import make_loaders

    params, model_class, paths, feature_map = prepare(name + cfg.expid_suffix,
                                                       {**base_overrides(cfg, work), **overrides})
    model = new_model(model_class, feature_map, params)
    train, _, _ = make_loaders(feature_map, paths, params)
    batches = list(itertools.islice(iter(train), cfg.scaling_steps + 1))
    batches = list(itertools.islice(itertools.cycle(batches), cfg.scaling_steps + 1))  # a small dataset: again
    bare_loop(model, batches[:1], model.max_gradient_norm)
    split = split_steps(model, batches[1:], cfg.scaling_steps, model.max_gradient_norm, with_min=True)
    split.pop("data", None)
    step_min = split.pop("step_min", None)
    calls = component_times(model, batches[1], max(2, cfg.scaling_steps), stat=list)
    components = {k: median(v) for k, v in calls.items()} if calls is not None else None
    components_min = {k: min(v) for k, v in calls.items()} if calls is not None else None
    return {"step_ms": split.pop("step"), **{f"{k}_ms": v for k, v in split.items()},
            "step_min_ms": step_min, "components_ms": components, "components_min_ms": components_min,
            "num_parameters": model.num_parameters(), "num_tables": num_tables(model), "num_domains": model.num_domains,
            "batch_size": batch_rows(batches[1])}


SCALING_MODELS = ("Crocodile", "ME_MMoE")


def measure_domain_curve(cfg: PerfConfig, work: Path, models=SCALING_MODELS,
                         progress=None) -> dict:
    """The K curve alone: ``{"values": K values, "fixed_tables": M, model: [point per K]}`` (see
    :func:`_scale_point`), on synthetic data with ``cfg.scaling_domains`` domains and ``M`` fixed (for the models
    that have ``num_embeddings``; any registered model can be measured)."""
    import inspect

    from mdl_bench.model_zoo import get_model

    out: dict[str, Any] = {"values": list(cfg.scaling_domains), "fixed_tables": cfg.scaling_fixed_tables}
    for name in models:
        tables = ({"num_embeddings": cfg.scaling_fixed_tables}
                  if "num_embeddings" in inspect.signature(get_model(name).__init__).parameters else {})
        out[name] = []
        for K in cfg.scaling_domains:
            if progress:
                progress(f"scaling: {name}, K = {K}")
            out[name].append(_scale_point(name, {**_k_domain_data(K, cfg, work), **tables}, cfg, work))
    return out


def domain_curve_table(curve: dict, models=SCALING_MODELS) -> str:
    """Markdown table of a K curve: per model and K, the step, the towers' forward+backward and the rest (the
    step less the towers), in ms; the minimum over the measured steps and calls (the least disturbed on a shared
    machine) and the median."""
    lines = ["| model | K | step ms (min) | towers ms (min) | rest ms (min) | step ms (median) | towers ms (median) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    cell = lambda v: "-" if v is None else f"{v:.1f}"
    for name in models:
        for K, point in zip(curve["values"], curve.get(name) or []):
            step, towers = point.get("step_min_ms"), (point.get("components_min_ms") or {}).get("towers")
            rest = step - towers if step is not None and towers is not None else None
            lines.append(f"| {name} | {K} | {cell(step)} | {cell(towers)} | {cell(rest)} | {cell(point['step_ms'])} "
                         f"| {cell((point['components_ms'] or {}).get('towers'))} |")
    return "\n".join(lines)


def measure_scaling(cfg: PerfConfig, work: Path) -> dict:
    from mdl_bench.model_zoo import get_model

    out: dict[str, Any] = {"models": list(SCALING_MODELS),
                           "display": {n: get_model(n).display_name or n for n in SCALING_MODELS},
                           "tables": {"values": list(cfg.scaling_tables)}}
    for name in SCALING_MODELS:
        out["tables"][name] = [_scale_point(name, {"num_embeddings": M}, cfg, work) for M in cfg.scaling_tables]
    out["domains"] = measure_domain_curve(cfg, work)
    out["explanation"] = explain_scaling(out)
    return out


REASONS = {
    "embedding": "one lookup per field returns all M tables side by side (width M*D): the gather, its "
                 "scatter-add backward and the M x B x F*D re-layout grow with M; K does not enter",
    "experts": "M expert MLPs, each over the whole batch (one bmm per layer): compute grows linearly in M",
    "gate": "ME-MMoE's gate reads all M tables (M*F*D inputs); Crocodile's PEG maps the prior embedding to "
            "M x d weights per domain: both grow with M; per row only its own domain's gate is computed "
            "(DomainGroups), so K adds K small matmuls, not K times the work",
    "towers": "rows are routed: tower s runs on the rows of domain s only (one matmul per domain and layer on "
              "its block of rows sorted by domain, batch norm with each domain's own statistics), so the work "
              "is one tower's on B rows whatever K is; K adds K small matmuls and a sort",
    "cov": "CovLoss's Gram over the sampled rows is (M*d)^2: quadratic in M but tiny on 32 rows",
    "optimizer": "Adam, clipping and the embedding L2 term touch every parameter every step: they grow with the "
                 "parameter count (embedding tables x M; gates and towers x K)",
}


def explain_scaling(scaling: dict) -> str:
    """Which parts grow between the smallest and largest M and K, from the measured parts, and why."""
    lines = []
    for axis, label in (("tables", "M"), ("domains", "K")):
        values = scaling[axis]["values"]
        if len(values) < 2:
            continue
        for name in scaling["models"]:
            points = scaling[axis].get(name) or []
            if len(points) < 2:
                continue
            first, last = points[0], points[-1]
            first_parts, last_parts = first["components_ms"] or {}, last["components_ms"] or {}
            growth = {part: last_parts[part] - first_parts[part] for part in set(first_parts) & set(last_parts)}
            growth["optimizer"] = last["optimizer_ms"] - first["optimizer_ms"]
            top = sorted(growth.items(), key=lambda kv: -kv[1])
            grown = ", ".join(f"{part} +{ms:.0f} ms" for part, ms in top if ms > 0.5) or "nothing measurable"
            shown = (scaling.get("display") or {}).get(name, name)
            unsplit = "" if first["components_ms"] is not None else " (step not split into parts)"
            lines.append(f"- {shown}, {label} {values[0]} -> {values[-1]}: step {first['step_ms']:.0f} -> "
                         f"{last['step_ms']:.0f} ms ({last['step_ms'] / first['step_ms']:.2f}x){unsplit}; "
                         f"grew: {grown}.")
    lines.append("")
    lines.append("Why:")
    lines.extend(f"- {part}: {text}." for part, text in REASONS.items())
    return "\n".join(lines)
