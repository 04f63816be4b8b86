"""The scaling figure of ``mdl-bench perf``: step time of each model and Crocodile's parts as M and K grow."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_scaling(scaling: dict, path: Path) -> str | None:
    """Two panels (M, K): step time of each model (solid) and Crocodile's parts (dashed). Returns the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is a dependency, but a report without the figure beats no report
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (axis, label) in zip(axes, (("tables", "embedding tables M"), ("domains", "domains K"))):
        values = scaling[axis]["values"]
        for name in scaling["models"]:
            points = scaling[axis].get(name) or []
            if not points:
                continue
            ax.plot(values[:len(points)], [p["step_ms"] for p in points], marker="o", lw=2,
                    label=f"{(scaling.get('display') or {}).get(name, name)} step")
        croc = scaling[axis].get("Crocodile") or []
        if croc and croc[0]["components_ms"]:  # None: Crocodile's step not split into parts
            parts = list(croc[0]["components_ms"]) + ["optimizer"]
            for part in parts:
                ys = [p["optimizer_ms"] if part == "optimizer" else p["components_ms"].get(part, np.nan)
                      for p in croc]
                ax.plot(values[:len(croc)], ys, ls="--", lw=1, marker=".", label=f"Crocodile {part}")
        ax.set_xlabel(label + (f" (M = {scaling['domains']['fixed_tables']})" if axis == "domains" else ""))
        ax.set_ylabel("ms per step (batch 4096)" if axis == "tables" else "ms per step")
        ax.set_xticks(values)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("mdl-bench perf: step time as M and K grow (forward+backward+optimiser)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plot_domain_curve(curve: dict, models, path: Path, title: str = "") -> str | None:
    """The K curve alone: per model, the step and its domain towers (the fastest measured step, the least
    disturbed on a shared machine) against the number of domains K, on a log2 axis. Returns the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    values = curve["values"]
    for name in models:
        points = curve.get(name) or []
        if not points:
            continue
        xs = values[:len(points)]
        ax.plot(xs, [p.get("step_min_ms", p["step_ms"]) for p in points], marker="o", lw=2, label=f"{name} step")
        towers = [((p.get("components_min_ms") or p.get("components_ms") or {}).get("towers")) for p in points]
        if any(t is not None for t in towers):
            ax.plot(xs, [np.nan if t is None else t for t in towers], ls="--", marker=".", label=f"{name} towers")
    ax.set_xscale("log", base=2)
    ax.set_xticks(values)
    ax.set_xticklabels([str(v) for v in values])
    ax.set_xlabel("domains K")
    ax.set_ylabel("ms per training step (fastest of the measured steps)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Step time as the number of domains grows", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
