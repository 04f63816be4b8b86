"""The leaderboard of a whole results store (``mdl-bench leaderboard`` without ``--suite``): every stored run,
grouped by dataset, then by expid and resolved config, whatever suite or command stored it.

A row is one expid with one resolved config (its config hash) on one dataset; its cells are means over the seeds
stored for one code revision - the current code's runs where there are any, else the newest older revision's,
marked with :data:`~.board.OUTDATED_MARK` - so a cell never mixes code. Runs whose best epoch is their last
allowed one are marked with :data:`~.board.CAP_MARK`, as in a suite's leaderboard.
"""
from __future__ import annotations

import csv
import html
import io
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .board import CAP_MARK, OUTDATED_MARK
from .render import md_table
from .stats import mean_std


@dataclass
class StoreRow:
    expid: str
    model: str
    config_hash: str
    code: str
    run_ids: dict                      # seed -> run id
    values: dict                       # metric -> {seed: value}
    best_epochs: list
    suites: list
    outdated: bool = False
    capped: int = 0
    show_hash: bool = False            # several configs of this expid on the dataset: tell them apart

    @property
    def label(self) -> str:
        return (self.expid + (f" [{self.config_hash[:8]}]" if self.show_hash else "")
                + (f" {OUTDATED_MARK}" if self.outdated else "") + (f" {CAP_MARK}" if self.capped else ""))


@dataclass
class StoreView:
    store_path: Path
    split: str
    metrics: list
    tables: dict = field(default_factory=dict)   # dataset id -> [StoreRow]
    runs: int = 0
    suites: list = field(default_factory=list)


def build_store_view(store=None, metrics=None, split=None) -> StoreView:
    """Read every run of the store into rows, one table per dataset."""
    from mdl_bench.kernel.errors import UserError, close_matches
    from mdl_bench.model_zoo.core import metrics as metric_lib
    from ..codeid import code_fingerprint
    from ..store import Store

    metrics = list(metrics or ["AUC", "gAUC"])
    for metric in metrics:
        if metric not in metric_lib.BASE_METRICS:
            raise UserError(f"unknown metric {metric!r}{close_matches(metric, metric_lib.BASE_METRICS)}; known "
                            f"metrics: {', '.join(metric_lib.BASE_METRICS)}")
    split = split or "test"
    db = Store(store, create=False)
    try:
        runs = db.list_runs()
        values_of = db.metrics_of([r["run_id"] for r in runs])
    finally:
        db.close()
    view = StoreView(store_path=db.path, split=split, metrics=metrics, runs=len(runs),
                     suites=sorted({r["suite"] for r in runs if r.get("suite")}))
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault((r["dataset_id"], r["expid"], r["config_hash"]), []).append(r)
    current: dict[tuple, str | None] = {}
    for (dataset, expid, chash), members in sorted(groups.items()):
        model, models_from = members[0]["model"], members[0].get("models_from")
        if (model, models_from) not in current:
            try:
                current[(model, models_from)] = code_fingerprint(model, models_from).digest
            except UserError:  # the model cannot be imported here: its runs are shown as stored
                current[(model, models_from)] = None
        now = current[(model, models_from)]
        codes = {r["code_fingerprint"] for r in members}
        if now in codes:
            code, outdated = now, False
        else:  # the newest older revision
            code = max(members, key=lambda r: (r["finished_at"], r["run_id"]))["code_fingerprint"]
            outdated = now is not None
        chosen = {}
        for r in sorted(members, key=lambda r: (r["finished_at"], r["run_id"])):
            if r["code_fingerprint"] == code:
                chosen[r["seed"]] = r  # the newest run of a seed, should one config and seed be stored twice
        row = StoreRow(expid=expid, model=model, config_hash=chash, code=code or "",
                       run_ids={s: r["run_id"] for s, r in sorted(chosen.items())},
                       values={m: {s: values_of[r["run_id"]].get(split, {}).get(m, float("nan"))
                                   for s, r in chosen.items()} for m in metrics},
                       best_epochs=[r["best_epoch"] for r in chosen.values() if r["best_epoch"] is not None],
                       suites=sorted({r["suite"] for r in chosen.values() if r.get("suite")}),
                       outdated=outdated,
                       capped=sum(1 for r in chosen.values() if r["best_epoch"] is not None
                                  and r["epochs"] is not None and int(r["best_epoch"]) >= int(r["epochs"])))
        view.tables.setdefault(dataset, []).append(row)
    for rows in view.tables.values():
        per_expid: dict[str, int] = {}
        for row in rows:
            per_expid[row.expid] = per_expid.get(row.expid, 0) + 1
        for row in rows:
            row.show_hash = per_expid[row.expid] > 1
    return view


def _cell(values: dict, std: bool, digits: int = 4) -> str:
    mean, sd, _ = mean_std(values)
    if mean != mean:  # NaN: the metric is not stored for this split
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if std and len(values) > 1 and sd == sd else "")


def _epochs(row: StoreRow) -> str:
    if not row.best_epochs:
        return "-"
    low, high = min(row.best_epochs), max(row.best_epochs)
    return str(low) if low == high else f"{low}-{high}"


def _header(view: StoreView) -> list[str]:
    return ["Expid", "Model"] + [f"{m} Overall" for m in view.metrics] + ["seeds", "best epoch", "suites", "run ids"]


def _cells(view: StoreView, row: StoreRow, std: bool) -> list[str]:
    return ([row.label, row.model] + [_cell(row.values[m], std) for m in view.metrics]
            + [str(len(row.run_ids)), _epochs(row), ", ".join(row.suites) or "-",
               ", ".join(str(i) for i in row.run_ids.values())])


def notes(view: StoreView, suite_commands: list[str]) -> list[str]:
    out = [f"Every stored run of {view.store_path} ({view.runs} runs), grouped by dataset, expid and config; means "
           f"over the seeds of one code revision on the {view.split} split."]
    if any(r.outdated for rows in view.tables.values() for r in rows):
        out.append(f"{OUTDATED_MARK}: no run of the current code yet; the row shows the newest older revision.")
    if any(r.capped for rows in view.tables.values() for r in rows):
        out.append(f"{CAP_MARK}: a run's best epoch is its last allowed one, so it may not have converged.")
    if any(r.show_hash for rows in view.tables.values() for r in rows):
        out.append("[hash]: the expid was stored with several configs (other overrides); the first 8 characters of "
                   "each config hash tell them apart.")
    if suite_commands:
        out.append("A suite's paper-style table, with significance marks: " + "; ".join(f"`{c}`"
                                                                                     for c in suite_commands))
    return out


def render_store_view(view: StoreView, fmt: str = "md", std: bool = False, suite_commands=()) -> str:
    suite_commands = list(suite_commands)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["dataset", "expid", "model", "config_hash", "code_fingerprint", "outdated", "at_epoch_cap"]
                        + [f"{m}_mean" for m in view.metrics] + [f"{m}_std" for m in view.metrics]
                        + ["seeds", "best_epochs", "suites", "run_ids"])
        for dataset, rows in view.tables.items():
            for row in rows:
                stats = [mean_std(row.values[m]) for m in view.metrics]
                writer.writerow([dataset, row.expid, row.model, row.config_hash, row.code, int(row.outdated),
                                 row.capped] + [st[0] for st in stats] + [st[1] for st in stats]
                                + [len(row.run_ids), " ".join(map(str, row.best_epochs)), " ".join(row.suites),
                                   " ".join(map(str, row.run_ids.values()))])
        return buf.getvalue()
    if fmt == "html":
        parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>mdl-bench: results store</title><style>"
                 "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
                 "td,th{border:1px solid #ccc;padding:4px 8px}td{text-align:right}td:first-child,td:nth-child(2)"
                 "{text-align:left}.note{color:#555}</style></head><body><h1>Results store</h1>"]
        for dataset, rows in view.tables.items():
            parts.append(f"<h2>Dataset {html.escape(dataset)}</h2><table><tr>"
                         + "".join(f"<th>{html.escape(h)}</th>" for h in _header(view)) + "</tr>")
            for row in rows:
                parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(view, row, std))
                             + "</tr>")
            parts.append("</table>")
        parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes(view, suite_commands)]
        return "\n".join(parts + ["</body></html>"]) + "\n"
    out = ["## Results store", ""]
    if not view.tables:
        out += ["(no runs stored yet)", ""]
    for dataset, rows in view.tables.items():
        header = _header(view)
        out += [f"### Dataset {dataset}", ""]
        # names and lists (the suites, the run ids) left, numbers right
        out += md_table([header] + [_cells(view, row, std) for row in rows], right_from=2,
                        left={len(header) - 2, len(header) - 1})
        out.append("")
    out += notes(view, suite_commands)
    return "\n".join(out) + "\n"


def print_store_view(store=None, config_dir=None, fmt: str = "md", out_file: str | None = None, metrics=None,
                     split=None, std: bool = False, stdout=None) -> None:
    """``mdl-bench leaderboard`` without ``--suite``: print (or write to ``out_file``) the whole store's tables."""
    from mdl_bench.kernel.paths import check_writable_file, emit_report
    from ..suite.plan import known_suites

    stdout = stdout or sys.stdout
    target = Path(out_file).expanduser() if out_file else None
    if target is not None:
        check_writable_file(target, "--out", "pass --out FILE in a writable folder, or leave --out out to print")
    view = build_store_view(store, metrics=metrics, split=split)
    findable = set(known_suites(config_dir))  # a suggested command must run as printed: only suites found by name
    extra = (["--config", str(config_dir)] if config_dir else []) + (["--store", str(store)] if store else [])
    commands = [" ".join(shlex.quote(p) for p in ["mdl-bench", "leaderboard", "--suite", name] + extra)
                for name in view.suites if name in findable]
    emit_report(render_store_view(view, fmt, std=std, suite_commands=commands), target, stdout)
