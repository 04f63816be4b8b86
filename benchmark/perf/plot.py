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
