"""Figure 8 style plots of a board: a metric against a config key, with the lift over a base series."""
from __future__ import annotations

import math
from pathlib import Path

from .board import Board, column
from .stats import mean_std


def make_plots(board: Board, out_dir: Path) -> dict:
    """Write each of the suite's plots as ``<out_dir>/<suite>_<name>.png``; ``{name: path}``."""
    specs = board.suite.leaderboard["plots"]
    if not specs:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for spec in specs:
        fig, axes = plt.subplots(1, len(spec["metrics"]), figsize=(5.2 * len(spec["metrics"]), 3.8), squeeze=False)
        for ax, metric in zip(axes[0], spec["metrics"]):
            curves = plot_series(board, spec, metric)
            for name, points in curves.items():
                xs = [x for x, _ in points]
                ax.plot(xs, [y for _, y in points], linestyle="--", marker="o", label=name)
            ax.set_xlabel(spec.get("xlabel") or spec["x"])
            ax.set_ylabel(f"{column(metric, spec['domain'])} ({board.split})")
            if spec["xscale"] == "log":
                ax.set_xscale("log")
            base = spec.get("lift_over")
            if base and base in curves:
                ref = dict(curves[base])
                lifts = [(x, (y - ref[x]) / ref[x] * 100) for name, pts in curves.items() if name != base
                         for x, y in pts if x in ref and ref[x]]
                if lifts:
                    twin = ax.twinx()
                    twin.plot([x for x, _ in lifts], [v for _, v in lifts], color="black", marker="s",
                              label=f"lift over {base} (%)")
                    twin.set_ylabel(f"lift over {base} (%)")
                    twin.legend(loc="lower right", fontsize=8)
            ax.legend(loc="upper left", fontsize=8)
            ax.grid(alpha=0.3)
        fig.suptitle(spec.get("title") or f"{board.suite.name}: {', '.join(spec['metrics'])} vs {spec['x']}")
        fig.tight_layout()
        path = out_dir / f"{board.suite.name}_{spec['name']}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths[spec["name"]] = str(path)
    return paths


def plot_series(board: Board, spec: dict, metric: str) -> dict:
    """``{series: [(x, mean), ...]}`` sorted by x: the rows whose entry label (or expid) is listed in the plot's
    ``series`` (all rows when empty) and whose resolved config has a value for ``x``."""
    col = column(metric, spec["domain"])
    curves: dict[str, list] = {}
    for table in board.tables:
        for row in table.rows:
            series = row.variant.series
            if spec["series"] and series not in spec["series"]:
                continue
            x = row.variant.params.get(spec["x"])
            if x is None or isinstance(x, (list, dict)) or not row.run_ids:
                continue
            values = row.values.get(col)
            if values is None:
                continue
            mean = mean_std(values)[0]
            if not math.isnan(mean):
                curves.setdefault(series, []).append((x, mean))
    return {k: sorted(v) for k, v in curves.items()}


