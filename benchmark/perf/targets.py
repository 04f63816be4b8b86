"""The goals of ``mdl-bench perf`` as rows: measured, goal, met, and a note where the machine was busy."""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

CONTENDED = 0.25  # other processes used more than this share of the CPUs during a phase: flag its figures


def _target(name: str, value, goal: float, higher_is_better: bool, fmt: str, note: str = "",
            phases: Sequence[str] = (), others: dict | None = None) -> dict:
    measured = value is not None and not (isinstance(value, float) and np.isnan(value))
    met = (value >= goal if higher_is_better else value <= goal) if measured else None
    busy = max([(others or {}).get(p, 0.0) for p in phases] or [0.0])
    if measured and busy > CONTENDED:
        note = (note + "; " if note else "") + f"other processes used {busy:.0%} of the CPUs meanwhile"
    return {"target": name, "value": value if measured else None, "goal": goal,
            "direction": ">=" if higher_is_better else "<=", "format": fmt, "met": met, "note": note,
            "phases": list(phases)}


def evaluate_targets(result: dict) -> list[dict]:
    """The issue's targets as (measured, goal, met) rows; a section not measured in this run gives ``met=None``;
    a figure measured while other processes used much of the machine carries a note saying so."""
    _target_here = functools.partial(_target, others=(result.get("meta") or {}).get("others_cpu"))
    rows = []
    models = result.get("models") or {}
    if models:
        worst = min(models.items(), key=lambda kv: kv[1]["real_over_bare"])
        rows.append(_target_here(f"training / bare loop, worst model ({worst[0]})", worst[1]["real_over_bare"],
                                 0.9, True, "{:.2f}", phases=["models"]))
    library = (result.get("library") or {}).get("models") or {}
    if library:
        worst = min(library.items(), key=lambda kv: kv[1]["real_over_theirs"])
        rows.append(_target_here(f"training / Scenario-Wise Rec's bare loop, worst matched model ({worst[0]})",
                                 worst[1]["real_over_theirs"], 1.0, True, "{:.2f}", phases=["library"]))
    stock = result.get("stock") or {}
    matched = result.get("matched") or {}
    for name in ("DNN", "MMoE"):
        speed = (stock.get("speedup") or {}).get(name)
        rows.append(_target_here(f"{name}: this package / FuxiCTR stock pipeline", speed, 1.5, True, "{:.2f}x",
                                 "" if speed is not None else "stock run skipped", phases=["matched", "stock"]))
    cov = result.get("covloss") or {}
    rows.append(_target_here(f"Crocodile step / ME-MMoE step (same M = {cov.get('num_tables')})",
                             cov.get("crocodile_over_me_mmoe"), 1.15, False, "{:.2f}", phases=["models"]))
    sampled = (cov.get("settings") or {}).get("32 rows") or {}
    rows.append(_target_here("CovLoss share of a Crocodile step, 32-row sampling", sampled.get("share"), 0.03,
                             False, "{:.1%}", phases=["covloss"]))
    gauc = result.get("gauc") or {}
    rows.append(_target_here(f"gAUC speed-up over fuxictr.metrics ({gauc.get('rows', 0):,} rows)",
                             gauc.get("speedup"), 20, True, "{:.0f}x", phases=["gauc"]))
    rows.append(_target_here("gAUC |this package - fuxictr|", gauc.get("max_abs_diff"), 1e-9, False, "{:.1e}"))
    build = result.get("build") or {}
    rows.append(_target_here(f"build speed-up over FuxiCTR build_dataset ({build.get('rows', 0):,} rows)",
                             build.get("speedup"), 2.0, True, "{:.1f}x",
                             "" if build.get("speedup") is not None else "FuxiCTR build skipped", phases=["build"]))
    rows.append(_target_here("build peak memory / FuxiCTR's", build.get("memory_ratio"), 1.0, False, "{:.2f}",
                        "" if build.get("memory_ratio") is not None else "FuxiCTR build skipped"))
    rows.append(_target_here("Ray processes on the default path", (result.get("ray") or {}).get("default_path"), 0,
                        False, "{:d}"))
    return rows
