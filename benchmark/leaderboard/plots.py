"""Figure 8 style plots of a board: a metric against a config key, with the lift over a base series.

``x`` (and ``panels``, one subplot per value) name a key of the rows' resolved configs; a dotted key reads into a
mapping (``synth.small_rho``: the generator option of each row's dataset), so a suite over several datasets plots
a metric against a property of the data. ``vs_oracle: true`` plots the gap to the data's oracle (its true click
probability) instead of the metric: ``oracle - value`` (``value - oracle`` for logloss), lower is better.
"""
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
        values = {metric: plot_values(board, spec, metric) for metric in spec["metrics"]}
        panels = sorted({panel for per_metric in values.values() for panel in per_metric}, key=_order)
        fig, axes = plt.subplots(len(spec["metrics"]), max(1, len(panels)), squeeze=False,
                                 figsize=(5.2 * max(1, len(panels)), 3.8 * len(spec["metrics"])))
        for axes_row, metric in zip(axes, spec["metrics"]):
            for ax, panel in zip(axes_row, panels or [None]):
                curves = values[metric].get(panel, {})
                _draw(ax, spec, board, metric, curves)
                if panel is not None:
                    ax.set_title(f"{spec['panels']} = {_fmt_x(panel)}", fontsize=10)
        fig.suptitle(spec.get("title") or f"{board.suite.name}: {', '.join(spec['metrics'])} vs {spec['x']}")
        fig.tight_layout()
        path = out_dir / f"{board.suite.name}_{spec['name']}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths[spec["name"]] = str(path)
    return paths


def _draw(ax, spec: dict, board: Board, metric: str, curves: dict) -> None:
    for name, points in curves.items():
        ax.plot([x for x, _ in points], [y for _, y in points], linestyle="--", marker="o", label=name)
    ax.set_xlabel(spec.get("xlabel") or spec["x"])
    label = f"{column(metric, spec['domain'])} ({board.split})"
    ax.set_ylabel(f"gap to oracle, {label}" if spec.get("vs_oracle") else label)
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


def config_value(params: dict, key: str):
    """``params[key]``, where a dotted key reads into mappings (``synth.small_rho``); ``None`` when absent."""
    value = params
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _order(value):
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


def _fmt_x(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def plot_values(board: Board, spec: dict, metric: str) -> dict:
    """``{panel: {series: [(x, y), ...]}}`` (one panel ``None`` without ``panels``); ``y`` is the mean over seeds,
    or with ``vs_oracle`` its gap to the oracle of the row's dataset."""
    col = column(metric, spec["domain"])
    out: dict = {}
    for table in board.tables:
        oracle = table.oracle.get(col) if spec.get("vs_oracle") else None
        if spec.get("vs_oracle") and (oracle is None or math.isnan(oracle)):
            continue  # no oracle for this data (real data, or a column not shown)
        for row in table.rows:
            series = row.variant.series
            if spec["series"] and series not in spec["series"]:
                continue
            x = config_value(row.variant.params, spec["x"])
            panel = config_value(row.variant.params, spec["panels"]) if spec.get("panels") else None
            if x is None or isinstance(x, (list, dict)) or isinstance(panel, (list, dict)) or not row.run_ids:
                continue
            values = row.values.get(col)
            if values is None:
                continue
            mean = mean_std(values)[0]
            if math.isnan(mean):
                continue
            if oracle is not None:
                mean = (mean - oracle) if metric == "logloss" else (oracle - mean)
            out.setdefault(panel, {}).setdefault(series, []).append((x, mean))
    return {panel: {k: sorted(v, key=lambda p: _order(p[0])) for k, v in curves.items()}
            for panel, curves in out.items()}


def plot_tables(board: Board) -> list:
    """The plotted values as tables, one per plot, metric and panel: ``(title, header, rows)`` with a row per
    series and a column per x value."""
    tables = []
    for spec in board.suite.leaderboard["plots"]:
        for metric in spec["metrics"]:
            for panel, curves in sorted(plot_values(board, spec, metric).items(), key=lambda kv: _order(kv[0])):
                xs = sorted({x for pts in curves.values() for x, _ in pts}, key=_order)
                what = f"gap to oracle in {column(metric, spec['domain'])}" if spec.get("vs_oracle") else \
                    column(metric, spec["domain"])
                title = f"{spec.get('title') or spec['name']}: {what}" + (
                    f", {spec['panels']} = {_fmt_x(panel)}" if panel is not None else "")
                rows = [[name] + [dict(points).get(x) for x in xs] for name, points in curves.items()]
                tables.append((title, [spec.get("xlabel") or spec["x"]] + [_fmt_x(x) for x in xs], rows))
    return tables


def plot_series(board: Board, spec: dict, metric: str) -> dict:
    """``{series: [(x, mean), ...]}`` sorted by x of a plot without panels: the rows whose entry label (or expid)
    is listed in the plot's ``series`` (all rows when empty) and whose resolved config has a value for ``x``."""
    return plot_values(board, dict(spec, panels=None), metric).get(None, {})
