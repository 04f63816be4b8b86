"""The paper-style leaderboard of a suite: tables 2/3 (per-domain and overall metrics, grouped rows, best in bold,
second underlined, ``*`` when the best is significantly better than the second), tables 4/5 (lift over a base
row) and figure 8 (a metric against a config key, with the lift over a base series), as Markdown, CSV or one
self-contained HTML page.

Numbers come from the results store only; which runs make a row comes from the suite: a row is a variant (one
config hash), its cells are means over the seeds the suite lists. Statistics:

* ``*`` in tables 2/3: paired t-test (``scipy.stats.ttest_rel``) of the best row against the second best, runs
  paired by seed (only the seeds both rows have; at least two), two-sided p < 0.05. Chosen: two-sided,
  because the paper does not say, and with the best row's mean already ahead a one-sided test would halve p.
* ``*`` in lift tables: the same test of each row against the base row.
* Best and second best: highest mean (lowest for logloss) among the rows that have the cell.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mdl_bench.model_zoo.core.errors import UserError, close_matches

P_VALUE = 0.05
PAPER_GROUPS = ("Single Domain", "MTL (SE)", "MTL (ME)", "MDL", "Crocodile")
GROUP_TITLES = {"MTL (SE)": "MTL (SE) for MDR", "MTL (ME)": "MTL (ME) for MDR"}
LOWER_IS_BETTER = ("logloss",)
ORACLE_LABEL = "Oracle (true CTR)"  # synthetic data: the metrics of the generator's true probability


# ================================================================================================ statistics
def mean_std(values: dict) -> tuple[float, float, int]:
    v = np.array([x for x in values.values() if x is not None and not math.isnan(x)], dtype=np.float64)
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"), len(v)


def paired_p(a: dict, b: dict) -> tuple[float, int]:
    """Two-sided p of ``scipy.stats.ttest_rel`` on the seeds both ``{seed: value}`` have; NaN below 2 pairs."""
    from scipy import stats

    common = sorted(s for s in set(a) & set(b) if not (math.isnan(a[s]) or math.isnan(b[s])))
    if len(common) < 2:
        return float("nan"), len(common)
    x = np.array([a[s] for s in common], dtype=np.float64)
    y = np.array([b[s] for s in common], dtype=np.float64)
    with warnings.catch_warnings():  # scipy warns on nearly identical samples; its answer stands
        warnings.simplefilter("ignore", RuntimeWarning)
        # as scipy: constant non-zero differences give p = 0, identical samples p = NaN (never significant)
        return float(stats.ttest_rel(x, y).pvalue), len(common)


def better(metric: str) -> int:
    """+1 when higher is better, -1 when lower is."""
    return -1 if metric.split("@")[0] in LOWER_IS_BETTER else 1


@dataclass
class ColumnMarks:
    """Rows with the best and the second-best mean of a column (several on exact ties) and the paired test of the
    best against the second (``p_value`` is the largest p over the second-best rows)."""

    best: list = field(default_factory=list)
    second: list = field(default_factory=list)
    p_value: float = float("nan")
    pairs: int = 0

    @property
    def significant(self) -> bool:
        # a tie for the best is not "significantly better than the second"
        return len(self.best) == 1 and bool(self.second) and self.p_value < P_VALUE


def column_marks(values: list[dict], metric: str) -> ColumnMarks:
    """Best and second best of one column (a ``{seed: value}`` per row) and the paired test between them."""
    sign = better(metric)
    means = [mean_std(v)[0] for v in values]
    levels = sorted({means[i] for i in range(len(means)) if not math.isnan(means[i])}, key=lambda m: -sign * m)
    marks = ColumnMarks()
    if levels:
        marks.best = [i for i, m in enumerate(means) if m == levels[0]]
    if len(levels) > 1:
        marks.second = [i for i, m in enumerate(means) if m == levels[1]]
        if len(marks.best) == 1:
            tests = [paired_p(values[marks.best[0]], values[j]) for j in marks.second]
            marks.p_value = max(p for p, _ in tests)  # NaN when any test is undefined
            marks.pairs = min(n for _, n in tests)
    return marks


# ================================================================================================ the board
OUTDATED_MARK = "†"
CAP_MARK = "‡"  # a run whose best epoch is its last allowed one: early stopping never said it converged


@dataclass
class Row:
    variant: object
    run_ids: dict            # seed -> run_id
    values: dict             # column -> {seed: value}
    code: str = ""           # the code fingerprint every run of the row was made by (never a mix)
    outdated: bool = False   # no run of the current code yet: the row shows the newest older revision
    capped: int = 0          # runs whose best epoch is the epoch cap (not shown to have converged)

    @property
    def label(self) -> str:
        return self.variant.label

    @property
    def shown_label(self) -> str:
        """The label with the marks of the row: :data:`OUTDATED_MARK` for runs of older code, :data:`CAP_MARK`
        when a run's best epoch is its last allowed one."""
        return self.label + (f" {OUTDATED_MARK}" if self.outdated else "") + (f" {CAP_MARK}" if self.capped else "")

    @property
    def group(self) -> str:
        return self.variant.group


@dataclass
class Table:
    dataset_id: str
    domains: list            # the domain names shown, then "Overall"
    metrics: list
    rows: list
    info_keys: list
    marks: dict = field(default_factory=dict)     # column -> ColumnMarks
    oracle: dict = field(default_factory=dict)    # column -> metric of the data's true probability (synthetic)

    @property
    def columns(self) -> list[str]:
        return [column(m, d) for m in self.metrics for d in self.domains]


def column(metric: str, domain: str) -> str:
    return metric if domain == "Overall" else f"{metric}@{domain}"


@dataclass
class Lift:
    spec: dict
    table: Table
    base: Row
    rows: list               # (row, {metric: (mean, lift %, p)})


@dataclass
class Board:
    suite: object
    split: str
    tables: list
    lifts: list
    planned: int
    found: int
    store_path: Path
    std: bool
    digits: int
    missing: list = field(default_factory=list)

    @property
    def title(self) -> str:
        return self.suite.leaderboard.get("title") or f"Leaderboard: suite {self.suite.name}"


def build_board(suite, store=None, config_dir=None, metrics=None, split=None, std=None, digits=None,
                lift_base=None, extra_overrides: dict | None = None) -> Board:
    """Collect the suite's runs from the store into tables (one per dataset), marks and lift tables."""
    from .data.build import domain_names
    from .store import Store

    lb = suite.leaderboard
    metrics = list(metrics or lb["metrics"])
    from mdl_bench.model_zoo.core import metrics as metric_lib
    for metric in metrics:
        if metric not in metric_lib.BASE_METRICS:
            raise UserError(f"unknown metric {metric!r}{close_matches(metric, metric_lib.BASE_METRICS)}; known "
                            f"metrics: {', '.join(metric_lib.BASE_METRICS)}")
    split = split or lb["split"]
    plan = suite.plan(config_dir, extra_overrides, strict=False)
    db = Store(store or suite.store, create=False)
    try:
        stored = db.stored_keys()
        by_config = db.stored_by_config()
        wanted = {r.key: stored[r.key] for r in plan.runs if r.key in stored}
        rows_runs = {v.index: _row_runs(v, stored, by_config) for v in plan.variants}
        shown = {rid for _, ids, _ in rows_runs.values() for rid in ids.values()}
        values_of = db.metrics_of(shown)
        capped_runs = {r["run_id"] for r in db.list_runs(shown) if _at_cap(r)}
    finally:
        db.close()
    datasets = list(dict.fromkeys(v.dataset_id for v in plan.variants))
    order = list(lb["group_order"]) or list(PAPER_GROUPS)
    tables = []
    for dataset in datasets:
        variants = [v for v in plan.variants if v.dataset_id == dataset]
        names = domain_names(variants[0].params)
        shown = names + ["Overall"] if lb["domains"] == "all" else [d for d in names + ["Overall"]
                                                                   if d in lb["domains"]]
        appearance = list(dict.fromkeys(v.group for v in variants))
        rank = {g: i for i, g in enumerate([g for g in order if g in appearance] +
                                           [g for g in appearance if g not in order])}
        variants.sort(key=lambda v: (rank[v.group], v.index))
        info_keys = list(dict.fromkeys(k for v in variants for k in v.entry.info))
        table = Table(dataset_id=dataset, domains=shown, metrics=metrics, rows=[], info_keys=info_keys)
        for v in variants:
            code, run_ids, outdated = rows_runs[v.index]
            values = {c: {s: values_of[r].get(split, {}).get(c, float("nan")) for s, r in run_ids.items()}
                      for c in table.columns}
            table.rows.append(Row(variant=v, run_ids=run_ids, values=values, code=code, outdated=outdated,
                                  capped=sum(rid in capped_runs for rid in run_ids.values())))
        for c in table.columns:
            table.marks[c] = column_marks([row.values[c] for row in table.rows], c)
        for row in table.rows:  # the data's oracle (same for every run of the dataset): a reference row
            for run_id in row.run_ids.values():
                oracle = values_of[run_id].get("oracle") or {}
                if oracle:
                    table.oracle = {c: oracle.get(c, float("nan")) for c in table.columns}
                    break
            if table.oracle:
                break
        tables.append(table)
    lift_specs = list(lb["lift"])
    if lift_base:
        lift_specs = [{"base": lift_base, "metrics": metrics, "domain": "Overall", "title": None}]
    lifts = []
    for spec in lift_specs:
        for table in tables:
            lifts.append(_lift(spec, table, split, config_dir, suite, values_of, wanted))
    planned = len({r.key for r in plan.runs})
    missing = [r for r in plan.unique_runs() if r.key not in wanted]
    return Board(suite=suite, split=split, tables=tables, lifts=lifts, planned=planned, found=len(wanted),
                 store_path=_store_path(store or suite.store),
                 std=lb["std"] if std is None else std, digits=lb["digits"] if digits is None else digits,
                 missing=missing)


def _at_cap(run: dict) -> bool:
    """Whether a stored run's best epoch is the last epoch it was allowed (``epochs``)."""
    best, cap = run.get("best_epoch"), run.get("epochs")
    return best is not None and cap is not None and int(best) >= int(cap)


def _row_runs(variant, stored: dict, by_config: dict) -> tuple[str, dict, bool]:
    """``(code, {seed: run_id}, outdated)`` of a row: its runs of the current code; when there are none yet, the
    runs of the newest older code revision (every seed from that one revision: a cell never mixes code)."""
    current = {s: stored[(variant.config_hash, s, variant.code)] for s in variant.seeds
               if (variant.config_hash, s, variant.code) in stored}
    if current:
        return variant.code, current, False
    older = [(t, code) for s in variant.seeds for _, code, t in by_config.get((variant.config_hash, s), [])]
    if not older:
        return variant.code, {}, False
    code = max(older)[1]
    runs = {s: rid for s in variant.seeds for rid, c, _ in by_config.get((variant.config_hash, s), []) if c == code}
    return code, runs, True


def _store_path(path):
    from .store import store_path
    return store_path(path)


def find_row(table: Table, ref: str) -> Row:
    """A row by its label, its entry's label (series), its expid or its model's display name."""
    for attr in ("label", "series", "expid", "display_name"):
        hits = [r for r in table.rows if getattr(r.variant, attr) == ref]
        if hits:
            return hits[0]
    known = [r.label for r in table.rows]
    raise UserError(f"lift base {ref!r}{close_matches(ref, known)} is not a row of the leaderboard; rows: "
                    f"{', '.join(known)} (or their expids)")


def _lift(spec: dict, table: Table, split, config_dir, suite, values_of, wanted) -> Lift:
    base = find_row(table, spec["base"])
    domain = spec["domain"]
    rows = []
    for row in table.rows:
        cells = {}
        for metric in spec["metrics"]:
            col = column(metric, domain)
            vals = row.values.get(col)
            base_vals = base.values.get(col)
            if vals is None:  # a column the main table does not show: read it from the runs
                vals = {s: values_of[r].get(split, {}).get(col, float("nan")) for s, r in row.run_ids.items()}
                base_vals = {s: values_of[r].get(split, {}).get(col, float("nan")) for s, r in base.run_ids.items()}
            mean, _, _ = mean_std(vals)
            base_mean, _, _ = mean_std(base_vals)
            lift = (mean - base_mean) / base_mean * 100 if base_mean else float("nan")
            p = float("nan") if row is base else paired_p(vals, base_vals)[0]
            cells[metric] = (mean, lift, p)
        rows.append((row, cells))
    return Lift(spec=spec, table=table, base=base, rows=rows)


# ================================================================================================ rendering
def _num(value: float, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _cell_text(table: Table, board: Board, i: int, col: str) -> tuple[str, str, bool]:
    """(number text, mark: 'best' | 'second' | '', significant star)."""
    mean, std, n = mean_std(table.rows[i].values[col])
    text = _num(mean, board.digits)
    if board.std and n > 1:
        text += f" ± {std:.{board.digits}f}"
    marks = table.marks[col]
    mark = "best" if i in marks.best else "second" if i in marks.second else ""
    return text, mark, mark == "best" and marks.significant


def _seeds_text(row: Row) -> str:
    n, planned = len(row.run_ids), len(row.variant.seeds)
    return str(n) if n == planned else f"{n}/{planned}"


def _header(table: Table) -> list[str]:
    return ["Group", "Method"] + table.info_keys + [f"{m} {d}" for m in table.metrics for d in table.domains] + \
        ["seeds"]


def _notes(board: Board) -> list[str]:
    seeds = sorted({len(r.variant.seeds) for t in board.tables for r in t.rows})
    notes = [f"Means over {'/'.join(map(str, seeds))} seed(s) on the {board.split} split. Bold: best; underline: "
             f"second best; *: the best is significantly better than the second (paired t-test over seeds, "
             f"p < {P_VALUE}; needs 2+ seeds)."]
    if any(t.oracle for t in board.tables):
        notes.append(f"{ORACLE_LABEL}: the metrics of the data's true click probability (synthetic data), a ceiling "
                     f"for reference; not ranked.")
    outdated = [r for t in board.tables for r in t.rows if r.outdated]
    if outdated:
        notes.append(f"{OUTDATED_MARK}: {len(outdated)} row(s) ({', '.join(r.label for r in outdated)}) come from runs "
                     f"of older code (their model, the layers it uses or the run path changed since); every cell of "
                     f"a row comes from one code revision. `mdl-bench run --suite {board.suite.name}` reruns them.")
    capped = [r for t in board.tables for r in t.rows if r.capped]
    if capped:
        notes.append(f"{CAP_MARK}: in {len(capped)} row(s) a run's best epoch is its last allowed one (`epochs`): "
                     f"early stopping never saw validation stop improving, so those runs may not have converged.")
    if board.missing:
        notes.append(f"{len(board.missing)} of {board.planned} runs are not in the store for the current code yet "
                     f"(`mdl-bench run --suite {board.suite.name}`); their rows show the runs found.")
    notes.append(f"Store: {board.store_path}; {board.found} runs.")
    return notes


def render_md(board: Board, images: dict | None = None) -> str:
    out = [f"## {board.title}", ""]
    if board.suite.description:
        out += [board.suite.description, ""]
    for table in board.tables:
        out.append(f"### {table.dataset_id} ({board.split})")
        out.append("")
        header = _header(table)
        lines = [header]
        last_group = None
        for i, row in enumerate(table.rows):
            group = GROUP_TITLES.get(row.group, row.group)
            cells = [group if group != last_group else "", row.shown_label] + \
                [str(row.variant.entry.info.get(k, "")) for k in table.info_keys]
            last_group = group
            for col in table.columns:
                text, mark, star = _cell_text(table, board, i, col)
                if mark == "best":
                    text = f"**{text}**"
                elif mark == "second":
                    text = f"<u>{text}</u>"
                cells.append(text + ("\\*" if star else ""))
            cells.append(_seeds_text(row))
            lines.append(cells)
        if table.oracle:
            lines.append(["", ORACLE_LABEL] + [""] * len(table.info_keys) +
                         [_num(table.oracle[c], board.digits) for c in table.columns] + [""])
        out += _md_table(lines, right_from=2 + len(table.info_keys))
        out.append("")
    for lift in board.lifts:
        out.append(f"### {lift.spec.get('title') or 'Lift over ' + lift.base.label} ({lift.table.dataset_id}, "
                   f"{lift.spec['domain']})")
        out.append("")
        header = ["Method"] + lift.table.info_keys
        for metric in lift.spec["metrics"]:
            header += [metric, "Lift (%)"]
        lines = [header]
        for row, cells in lift.rows:
            line = [row.shown_label] + [str(row.variant.entry.info.get(k, "")) for k in lift.table.info_keys]
            for metric in lift.spec["metrics"]:
                mean, pct, p = cells[metric]
                star = "\\*" if p < P_VALUE else ""
                line += [_num(mean, board.digits) + star, "-" if row is lift.base else _pct(pct)]
            lines.append(line)
        out += _md_table(lines, right_from=1 + len(lift.table.info_keys))
        out.append("")
        out.append(f"Lift = (row - base) / base; \\*: significantly different from the base row (paired t-test over "
                   f"seeds, p < {P_VALUE}).")
        out.append("")
    for name, path in (images or {}).items():
        out += [f"![{name}]({path})", ""]
    out += _notes(board)
    return "\n".join(out) + "\n"


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:+.2f}%"


def _md_table(lines: list[list[str]], right_from: int) -> list[str]:
    widths = [max(len(line[c]) for line in lines) for c in range(len(lines[0]))]
    fmt = lambda line: "| " + " | ".join(cell.rjust(w) if c >= right_from else cell.ljust(w)
                                         for c, (cell, w) in enumerate(zip(line, widths))) + " |"
    rule = "|" + "|".join(("-" * (w + 1) + ":") if c >= right_from else ("-" * (w + 2))
                          for c, w in enumerate(widths)) + "|"
    return [fmt(lines[0]), rule] + [fmt(line) for line in lines[1:]]


def render_csv(board: Board) -> str:
    """One line per row and dataset: each column's mean, standard deviation and mark (best, best*, second), then
    each lift table's mean, lift and significance."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    info_keys = list(dict.fromkeys(k for t in board.tables for k in t.info_keys))
    columns = list(dict.fromkeys(c for t in board.tables for c in t.columns))
    lift_cols = []
    for k, lift in enumerate(board.lifts):
        for metric in lift.spec["metrics"]:
            name = f"lift[{lift.base.label}] {column(metric, lift.spec['domain'])}"
            if name not in lift_cols:
                lift_cols.append(name)
    header = ["dataset", "group", "method", "expid", "config_hash", "code", "outdated", "at_epoch_cap",
              "seeds"] + info_keys
    for c in columns:
        header += [c, f"{c} std", f"{c} mark"]
    for name in lift_cols:
        header += [f"{name} %", f"{name} p"]
    writer.writerow(header)
    for table in board.tables:
        for i, row in enumerate(table.rows):
            line = [table.dataset_id, row.group, row.label, row.variant.expid, row.variant.config_hash, row.code,
                    int(row.outdated), row.capped, len(row.run_ids)] + [row.variant.entry.info.get(k, "")
                                                                       for k in info_keys]
            for c in columns:
                if c not in table.columns:
                    line += ["", "", ""]
                    continue
                mean, std, n = mean_std(row.values[c])
                _, mark, star = _cell_text(table, board, i, c)
                line += ["" if math.isnan(mean) else repr(mean), "" if math.isnan(std) else repr(std),
                         mark + ("*" if star else "")]
            extra = {}
            for lift in board.lifts:
                if lift.table is not table:
                    continue
                for r, cells in lift.rows:
                    if r is row:
                        for metric in lift.spec["metrics"]:
                            _, pct, p = cells[metric]
                            name = f"lift[{lift.base.label}] {column(metric, lift.spec['domain'])}"
                            extra[name] = ("" if math.isnan(pct) else repr(pct), "" if math.isnan(p) else repr(p))
            for name in lift_cols:
                line += list(extra.get(name, ("", "")))
            writer.writerow(line)
        if table.oracle:
            line = [table.dataset_id, "Oracle", ORACLE_LABEL, "", "", "", "", "", ""] + [""] * len(info_keys)
            for c in columns:
                value = table.oracle.get(c, float("nan"))
                line += ["" if math.isnan(value) else repr(value), "", ""]
            writer.writerow(line + ["", ""] * len(lift_cols))
    return buf.getvalue()


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#222;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:13px;margin:.6em 0 1em}
th,td{padding:3px 9px;text-align:right;border-bottom:1px solid #e4e4e4;white-space:nowrap}
th{background:#f4f4f4;font-weight:600}th.l,td.l{text-align:left}
tr.first td{border-top:2px solid #999}td.group{vertical-align:top;font-weight:600;background:#fafafa}
.best{font-weight:bold}.second{text-decoration:underline}.std{color:#888;font-size:11px}
.note{color:#555;font-size:12px;margin:.2em 0}tr.oracle td{font-style:italic;color:#666}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
""".strip()


def render_html(board: Board, images: dict | None = None) -> str:
    """One self-contained page: inline CSS, plots embedded as base64 ``data:`` URIs, no external resource."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(board.title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(board.title)}</h1>"]
    if board.suite.description:
        parts.append(f"<p>{e(board.suite.description)}</p>")
    for table in board.tables:
        parts.append(f"<h2>{e(table.dataset_id)} ({e(board.split)} split)</h2><table>")
        parts.append("<thead><tr><th class='l' rowspan='2'>Group</th><th class='l' rowspan='2'>Method</th>" +
                     "".join(f"<th class='l' rowspan='2'>{e(k)}</th>" for k in table.info_keys) +
                     "".join(f"<th colspan='{len(table.domains)}'>{e(m)}</th>" for m in table.metrics) +
                     "<th rowspan='2'>seeds</th></tr><tr>" +
                     "".join(f"<th>{e(d)}</th>" for _ in table.metrics for d in table.domains) + "</tr></thead><tbody>")
        groups = [GROUP_TITLES.get(r.group, r.group) for r in table.rows]
        for i, row in enumerate(table.rows):
            first = i == 0 or groups[i] != groups[i - 1]
            cells = []
            if first:
                span = 1
                while i + span < len(groups) and groups[i + span] == groups[i]:
                    span += 1
                cells.append(f"<td class='l group' rowspan='{span}'>{e(groups[i])}</td>")
            cells.append(f"<td class='l'>{e(row.shown_label)}</td>")
            cells += [f"<td class='l'>{e(str(row.variant.entry.info.get(k, '')))}</td>" for k in table.info_keys]
            for col in table.columns:
                mean, std, n = mean_std(row.values[col])
                _, mark, star = _cell_text(table, board, i, col)
                text = e(_num(mean, board.digits))
                if mark == "best":
                    text = f"<b class='best'>{text}</b>"
                elif mark == "second":
                    text = f"<u class='second'>{text}</u>"
                if star:
                    text += "*"
                if board.std and n > 1:
                    text += f" <span class='std'>± {std:.{board.digits}f}</span>"
                cells.append(f"<td>{text}</td>")
            cells.append(f"<td>{e(_seeds_text(row))}</td>")
            row_class = " class='first'" if first and i else ""
            parts.append(f"<tr{row_class}>{''.join(cells)}</tr>")
        if table.oracle:
            parts.append(f"<tr class='first oracle'><td class='l group'></td><td class='l'>{e(ORACLE_LABEL)}</td>" +
                         "<td></td>" * len(table.info_keys) +
                         "".join(f"<td>{e(_num(table.oracle[c], board.digits))}</td>" for c in table.columns) +
                         "<td></td></tr>")
        parts.append("</tbody></table>")
    for lift in board.lifts:
        parts.append(f"<h2>{e(lift.spec.get('title') or 'Lift over ' + lift.base.label)} "
                     f"({e(lift.table.dataset_id)}, {e(lift.spec['domain'])})</h2><table><thead><tr>"
                     f"<th class='l'>Method</th>" + "".join(f"<th class='l'>{e(k)}</th>" for k in lift.table.info_keys)
                     + "".join(f"<th>{e(m)}</th><th>Lift (%)</th>" for m in lift.spec["metrics"]) +
                     "</tr></thead><tbody>")
        for row, cells in lift.rows:
            line = f"<td class='l'>{e(row.shown_label)}</td>" + "".join(
                f"<td class='l'>{e(str(row.variant.entry.info.get(k, '')))}</td>" for k in lift.table.info_keys)
            for metric in lift.spec["metrics"]:
                mean, pct, p = cells[metric]
                line += f"<td>{e(_num(mean, board.digits))}{'*' if p < P_VALUE else ''}</td>"
                line += f"<td>{'-' if row is lift.base else e(_pct(pct))}</td>"
            parts.append(f"<tr>{line}</tr>")
        parts.append("</tbody></table><p class='note'>Lift = (row - base) / base; *: significantly different from "
                     f"the base row (paired t-test over seeds, p &lt; {P_VALUE}).</p>")
    for name, path in (images or {}).items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f"<h2>{e(name)}</h2><img alt='{e(name)}' src='data:image/png;base64,{data}'>")
    parts.append(_analysis_section(board))
    parts += [f"<p class='note'>{e(n)}</p>" for n in _notes(board)]
    parts.append(f"<p class='note'>Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by mdl-bench.</p></body></html>")
    return "\n".join(parts) + "\n"


def _analysis_section(board: Board) -> str:
    """The figures of ``mdl-bench analyze --suite`` (issue 6) for this suite, if it was analysed; else ``""``."""
    from .analysis.html import leaderboard_section

    return leaderboard_section(board)


# ================================================================================================ plots
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


def render(board: Board, fmt: str, images: dict | None = None) -> str:
    if fmt == "md":
        return render_md(board, images)
    if fmt == "csv":
        return render_csv(board)
    if fmt == "html":
        return render_html(board, images)
    raise UserError(f"unknown leaderboard format {fmt!r}; use md, csv or html")
