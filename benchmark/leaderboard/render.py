"""The board as Markdown, CSV or one self-contained HTML page."""
from __future__ import annotations

import base64
import csv
import html
import io
import math
import time
from pathlib import Path

from mdl_bench.kernel.errors import UserError
from .board import CAP_MARK, ORACLE_LABEL, OUTDATED_MARK, Board, Row, Table, column
from .plots import plot_tables
from .stats import ALPHA, MIN_CLASS_ROWS, MIN_USERS, mean_std

GROUP_TITLES = {"MTL (SE)": "MTL (SE) for MDR", "MTL (ME)": "MTL (ME) for MDR"}


def _num(value: float, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


UP, DOWN, THIN_MARK = "▲", "▼", "°"


def _cell(table: Table, board: Board, i: int, col: str) -> dict:
    """One cell's figures and marks: ``mean``, ``std`` (over seeds), ``half`` (95 % half-width, seeds and test
    split), ``bold`` (not separable from the best row), ``direction`` (+1/-1: significantly better/worse than the
    reference row after Holm), ``thin`` (too few users or clicks to rank), and as text ``number`` and ``marks``
    (the interval and the marks that follow it)."""
    stats = table.marks[col]
    mean, std, n = mean_std(table.rows[i].values[col])
    thin = stats.thin[i]
    half = stats.estimates[i].half_width()
    direction = stats.direction(i)
    marks = ""
    if not math.isnan(half) and not math.isnan(mean):
        marks += f" ±{half:.{board.digits}f}"
    if board.std and n > 1:
        marks += f" (sd {std:.{board.digits}f})"
    marks += {1: f" {UP}", -1: f" {DOWN}", 0: ""}[direction] + (f" {THIN_MARK}" if thin else "")
    return {"mean": mean, "std": std, "half": half, "bold": stats.bold(i), "direction": direction, "thin": thin,
            "number": _num(mean, board.digits), "marks": marks}


def _rank_text(stats, i: int) -> str:
    low, high = stats.rank_low[i], stats.rank_high[i]
    if low is None:
        return "-"
    return str(low) if low == high else f"{low}–{high}"


def _rank_columns(table: Table) -> list[str]:
    """The columns whose rank and tie group the main table shows: each metric's Overall column."""
    return [column(m, "Overall") for m in table.metrics if "Overall" in table.domains]


def _seeds_text(row: Row) -> str:
    n, planned = len(row.run_ids), len(row.variant.seeds)
    return str(n) if n == planned else f"{n}/{planned}"


def _header(table: Table) -> list[str]:
    return ["Group", "Method"] + table.info_keys + [f"{m} {d}" for m in table.metrics for d in table.domains] + \
        [f"{c} {part}" for c in _rank_columns(table) for part in ("rank", "group")] + ["seeds"]


def _notes(board: Board) -> list[str]:
    seeds = sorted({len(r.variant.seeds) for t in board.tables for r in t.rows})
    references = sorted({t.reference.label for t in board.tables if t.reference is not None})
    with_test = any(ev.replicates for t in board.tables for r in t.rows for ev in r.evidence.values())
    seed_part = "the spread over seeds" if max(seeds, default=0) > 1 else "no spread over seeds (one seed: training " \
        "randomness unmeasured, so no row is compared)"
    source = (f"{seed_part} and the test split's own sampling error (a bootstrap over users, paired across rows)"
              if with_test else f"{seed_part} only (no stored test-split bootstrap: runs of the valid split, or "
                                f"stored by an older mdl-bench)")
    notes = [f"Means over {'/'.join(map(str, seeds))} seed(s) on the {board.split} split; ± is the 95 % interval "
             f"of the row's own figure, from {source}. Rows are compared in pairs on the same users, which cancels "
             f"the error they share: two overlapping intervals can still differ significantly (the marks below)."]
    notes.append(f"Bold: the rows the data cannot separate from the best one (no significant difference after Holm "
                 f"over all pairs of the column, p < {ALPHA}); none is bold when no row can be told apart.")
    if references:
        notes.append(f"{UP} / {DOWN}: significantly better / worse than the reference row {', '.join(references)} "
                     f"(both error sources, Holm over the rows of the column, p < {ALPHA}; needs 2+ seeds).")
    notes.append("rank: the 95 % interval of the row's rank (1 = best) over joint draws of seeds and test users; "
                 "group: rows sharing a letter cannot be separated (bars of a critical-difference diagram).")
    thin = [(r.label, c) for t in board.tables for i, r in enumerate(t.rows) for c in t.columns
            if t.marks[c].thin[i]]
    if thin:
        notes.append(f"{THIN_MARK}: computed on too few data to rank ({len(thin)} cell(s)): fewer than "
                     f"{MIN_CLASS_ROWS} clicks or non-clicks (AUC, logloss) or {MIN_USERS} users with both (gAUC) "
                     f"in the test split; never bold, no comparison or rank. '-': the domain has no rows there.")
    if any(t.oracle for t in board.tables):
        notes.append(f"{ORACLE_LABEL}: the metrics of the data's true click probability (synthetic data), a ceiling "
                     f"for reference; not ranked.")
    outdated = [r for t in board.tables for r in t.rows if r.outdated]
    if outdated:
        notes.append(f"{OUTDATED_MARK}: {len(outdated)} row(s) ({', '.join(r.label for r in outdated)}) come from runs "
                     f"of older code (their model, the layers it uses or the run path changed since); every cell of "
                     f"a row comes from one code revision. `{board.command}` reruns them.")
    capped = [r for t in board.tables for r in t.rows if r.capped]
    if capped:
        notes.append(f"{CAP_MARK}: in {len(capped)} row(s) a run's best epoch is its last allowed one (`epochs`): "
                     f"early stopping never saw validation stop improving, so those runs may not have converged.")
    if board.missing:
        notes.append(f"{len(board.missing)} of {board.planned} runs are not in the store for the current code yet "
                     f"(`{board.command}`); their rows show the runs found.")
    notes.append(f"Store: {board.store_path}; {board.found} runs.")
    return notes


def _domain_ranks(table: Table) -> tuple[list[str], list[list[str]]]:
    """The per-domain rank intervals and tie groups: a header and one line per row."""
    header = ["Method"] + table.columns
    lines = []
    for i, row in enumerate(table.rows):
        cells = [row.shown_label]
        for c in table.columns:
            stats = table.marks[c]
            cells.append("-" if stats.rank_low[i] is None else f"{_rank_text(stats, i)} {stats.groups[i]}")
        lines.append(cells)
    return header, lines


CAPACITY_KEYS = ("embedding_parameters", "dense_parameters", "train_flops_per_row")
SIZE_RULE = ("Capacity: trainable parameters of the embedding tables and of the dense layers, and the FLOPs of one "
             "training step per row (forward, loss and backward; matrix products counted, a multiply-add = 2), "
             "measured on one batch of each row's first run. The size rule of the packaged configs equalises the "
             "widths (embedding dimension per table, every expert / bottom MLP, every tower; one expert per domain "
             "in the mixtures), not these totals: methods with more tables or experts per row have more.")


def _capacity_lines(table: Table) -> list[list[str]]:
    """The capacity table of ``table`` (header first), or ``[]`` when no row's runs stored one."""
    if not any(row.capacity for row in table.rows):
        return []
    lines = [["Method", "embedding params", "dense params", "train MFLOP/row"]]
    for row in table.rows:
        cap = row.capacity
        lines.append([row.shown_label] + ([f"{cap['embedding_parameters']:,}", f"{cap['dense_parameters']:,}",
                                           f"{cap['train_flops_per_row'] / 1e6:.2f}"] if cap else ["-"] * 3))
    return lines


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
                cell = _cell(table, board, i, col)
                cells.append((f"**{cell['number']}**" if cell["bold"] else cell["number"]) + cell["marks"])
            for col in _rank_columns(table):
                cells += [_rank_text(table.marks[col], i), table.marks[col].groups[i] or "-"]
            cells.append(_seeds_text(row))
            lines.append(cells)
        if table.oracle:
            lines.append(["", ORACLE_LABEL] + [""] * len(table.info_keys) +
                         [_num(table.oracle[c], board.digits) for c in table.columns] +
                         [""] * (2 * len(_rank_columns(table))) + [""])
        out += md_table(lines, right_from=2 + len(table.info_keys))
        out.append("")
        header, lines = _domain_ranks(table)
        out += [f"#### Rank intervals and tie groups per column ({table.dataset_id})", ""]
        out += md_table([header] + lines, right_from=1)
        out.append("")
        capacity = _capacity_lines(table)
        if capacity:
            out += [f"#### Capacity ({table.dataset_id})", ""] + md_table(capacity, right_from=1) + ["", SIZE_RULE, ""]
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
                star = "\\*" if p < ALPHA else ""
                line += [_num(mean, board.digits) + star, "-" if row is lift.base else _pct(pct)]
            lines.append(line)
        out += md_table(lines, right_from=1 + len(lift.table.info_keys))
        out.append("")
        out.append(f"Lift = (row - base) / base; \\*: significantly different from the base row (seeds and the "
                   f"test split's sampling error, Holm over the rows, p < {ALPHA}).")
        out.append("")
    for name, path in (images or {}).items():
        out += [f"![{name}]({path})", ""]
    for title, header, rows in plot_tables(board):  # the plotted numbers, so a reader need not read them off
        out += [f"### {title}", ""]
        out += md_table([header] + [[name] + [_num(v, board.digits) if v is not None else "-" for v in values]
                                     for name, *values in rows], right_from=1)
        out.append("")
    out += _notes(board)
    return "\n".join(out) + "\n"


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:+.2f}%"


def md_table(lines: list[list[str]], right_from: int, left: set[int] = frozenset()) -> list[str]:
    """A Markdown table (the header first), padded to its widths: columns from ``right_from`` on are numbers,
    right-aligned, except the ``left`` ones."""
    widths = [max(len(line[c]) for line in lines) for c in range(len(lines[0]))]
    right = [c >= right_from and c not in left for c in range(len(widths))]
    fmt = lambda line: "| " + " | ".join(cell.rjust(w) if right[c] else cell.ljust(w)
                                         for c, (cell, w) in enumerate(zip(line, widths))) + " |"
    rule = "|" + "|".join(("-" * (w + 1) + ":") if right[c] else ("-" * (w + 2))
                          for c, w in enumerate(widths)) + "|"
    return [fmt(lines[0]), rule] + [fmt(line) for line in lines[1:]]


CSV_PARTS = ("std", "ci_low", "ci_high", "p_vs_reference", "vs_reference", "rank_low", "rank_high", "group",
             "bold", "thin", "rows", "positives", "users")


def _csv_cell(table: Table, board: Board, i: int, c: str) -> list:
    cell = _cell(table, board, i, c)
    stats = table.marks[c]
    counts = table.rows[i].evidence[c].counts or {}
    number = lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(v)
    half = cell["half"]
    return [number(cell["mean"]), number(cell["std"]),
            number(cell["mean"] - half) if not math.isnan(half) else "",
            number(cell["mean"] + half) if not math.isnan(half) else "",
            number(stats.p_reference[i]) if stats.p_reference else "", cell["direction"],
            number(stats.rank_low[i]), number(stats.rank_high[i]), stats.groups[i], int(cell["bold"]),
            int(cell["thin"]), number(counts.get("rows")), number(counts.get("positives")), number(counts.get("users"))]


def _lift_name(lift, metric: str) -> str:
    return f"lift[{lift.base.label}] {column(metric, lift.spec['domain'])}"


def _csv_lifts(board: Board, table, row) -> dict[str, tuple[str, str]]:
    """``{lift column: (lift %, p)}`` of one row of ``table`` over every lift table drawn on it."""
    extra = {}
    for lift in board.lifts:
        if lift.table is not table:
            continue
        for r, cells in lift.rows:
            if r is not row:
                continue
            for metric in lift.spec["metrics"]:
                _, pct, p = cells[metric]
                extra[_lift_name(lift, metric)] = ("" if math.isnan(pct) else repr(pct),
                                                   "" if math.isnan(p) else repr(p))
    return extra


def render_csv(board: Board) -> str:
    """One line per row and dataset: each column's mean and its marks (:data:`CSV_PARTS`: standard deviation over
    seeds, the 95 % interval, the Holm-adjusted p against the reference row and its direction, the rank interval,
    tie-group letters, bold, thin, and what the cell rests on), then each lift table's lift and significance."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    info_keys = list(dict.fromkeys(k for t in board.tables for k in t.info_keys))
    columns = list(dict.fromkeys(c for t in board.tables for c in t.columns))
    lift_cols = list(dict.fromkeys(_lift_name(lift, metric) for lift in board.lifts
                                   for metric in lift.spec["metrics"]))
    header = ["dataset", "group", "method", "expid", "config_hash", "code", "outdated", "at_epoch_cap",
              "seeds"] + list(CAPACITY_KEYS) + info_keys
    for c in columns:
        header += [c] + [f"{c} {part}" for part in CSV_PARTS]
    for name in lift_cols:
        header += [f"{name} %", f"{name} p"]
    writer.writerow(header)
    for table in board.tables:
        for i, row in enumerate(table.rows):
            line = [table.dataset_id, row.group, row.label, row.variant.expid, row.variant.config_hash, row.code,
                    int(row.outdated), row.capped, len(row.run_ids)]
            line += [row.capacity.get(k, "") for k in CAPACITY_KEYS] + [row.variant.entry.info.get(k, "")
                                                                       for k in info_keys]
            for c in columns:
                line += _csv_cell(table, board, i, c) if c in table.columns else [""] * (1 + len(CSV_PARTS))
            extra = _csv_lifts(board, table, row)
            for name in lift_cols:
                line += list(extra.get(name, ("", "")))
            writer.writerow(line)
        if table.oracle:
            line = [table.dataset_id, "Oracle", ORACLE_LABEL, "", "", "", "", "", ""] + [""] * len(CAPACITY_KEYS) + \
                [""] * len(info_keys)
            for c in columns:
                value = table.oracle.get(c, float("nan"))
                line += ["" if math.isnan(value) else repr(value)] + [""] * len(CSV_PARTS)
            writer.writerow(line + ["", ""] * len(lift_cols))
    return buf.getvalue()


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#222;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:13px;margin:.6em 0 1em}
th,td{padding:3px 9px;text-align:right;border-bottom:1px solid #e4e4e4;white-space:nowrap}
th{background:#f4f4f4;font-weight:600}th.l,td.l{text-align:left}
tr.first td{border-top:2px solid #999}td.group{vertical-align:top;font-weight:600;background:#fafafa}
.best{font-weight:bold}.std{color:#888;font-size:11px}
.note{color:#555;font-size:12px;margin:.2em 0}tr.oracle td{font-style:italic;color:#666}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
""".strip()


def _html_table(board: Board, table) -> list[str]:
    """One dataset's leaderboard table, then its rank intervals and tie groups per column."""
    e = html.escape
    parts = []
    parts.append(f"<h2>{e(table.dataset_id)} ({e(board.split)} split)</h2><table>")
    parts.append("<thead><tr><th class='l' rowspan='2'>Group</th><th class='l' rowspan='2'>Method</th>" +
                 "".join(f"<th class='l' rowspan='2'>{e(k)}</th>" for k in table.info_keys) +
                 "".join(f"<th colspan='{len(table.domains)}'>{e(m)}</th>" for m in table.metrics) +
                 "".join(f"<th rowspan='2'>{e(c)} rank</th><th rowspan='2'>{e(c)} group</th>"
                         for c in _rank_columns(table)) +
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
            cell = _cell(table, board, i, col)
            text = f"<b class='best'>{e(cell['number'])}</b>" if cell["bold"] else e(cell["number"])
            if cell["marks"]:
                text += f" <span class='std'>{e(cell['marks'].lstrip())}</span>"
            cells.append(f"<td>{text}</td>")
        for col in _rank_columns(table):
            cells += [f"<td>{e(_rank_text(table.marks[col], i))}</td>",
                      f"<td>{e(table.marks[col].groups[i] or '-')}</td>"]
        cells.append(f"<td>{e(_seeds_text(row))}</td>")
        row_class = " class='first'" if first and i else ""
        parts.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    if table.oracle:
        parts.append(f"<tr class='first oracle'><td class='l group'></td><td class='l'>{e(ORACLE_LABEL)}</td>" +
                     "<td></td>" * len(table.info_keys) +
                     "".join(f"<td>{e(_num(table.oracle[c], board.digits))}</td>" for c in table.columns) +
                     "<td></td>" * (2 * len(_rank_columns(table))) + "<td></td></tr>")
    parts.append("</tbody></table>")
    header, lines = _domain_ranks(table)
    parts.append(f"<h3>Rank intervals and tie groups per column ({e(table.dataset_id)})</h3><table><thead><tr>" +
                 "".join(f"<th{' class=l' if k == 0 else ''}>{e(h)}</th>" for k, h in enumerate(header)) +
                 "</tr></thead><tbody>" + "".join(
                     "<tr>" + "".join(f"<td{' class=l' if k == 0 else ''}>{e(v)}</td>" for k, v in enumerate(line))
                     + "</tr>" for line in lines) + "</tbody></table>")
    capacity = _capacity_lines(table)
    if capacity:
        parts.append(f"<h3>Capacity ({e(table.dataset_id)})</h3><table><thead><tr>" +
                     "".join(f"<th{' class=l' if k == 0 else ''}>{e(h)}</th>" for k, h in enumerate(capacity[0])) +
                     "</tr></thead><tbody>" + "".join(
                         "<tr>" + "".join(f"<td{' class=l' if k == 0 else ''}>{e(v)}</td>" for k, v in enumerate(line))
                         + "</tr>" for line in capacity[1:]) + f"</tbody></table><p class='note'>{e(SIZE_RULE)}</p>")
    return parts


def _html_lift(board: Board, lift) -> list[str]:
    """One lift table: each row's mean and lift over the base row, significance marked."""
    e = html.escape
    parts = []
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
            line += f"<td>{e(_num(mean, board.digits))}{'*' if p < ALPHA else ''}</td>"
            line += f"<td>{'-' if row is lift.base else e(_pct(pct))}</td>"
        parts.append(f"<tr>{line}</tr>")
    parts.append("</tbody></table><p class='note'>Lift = (row - base) / base; *: significantly different from "
                 f"the base row (seeds and the test split's sampling error, Holm over the rows, "
                 f"p &lt; {ALPHA}).</p>")
    return parts


def render_html(board: Board, images: dict | None = None) -> str:
    """One self-contained page: inline CSS, plots embedded as base64 ``data:`` URIs, no external resource."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(board.title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(board.title)}</h1>"]
    if board.suite.description:
        parts.append(f"<p>{e(board.suite.description)}</p>")
    for table in board.tables:
        parts += _html_table(board, table)
    for lift in board.lifts:
        parts += _html_lift(board, lift)
    for name, path in (images or {}).items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f"<h2>{e(name)}</h2><img alt='{e(name)}' src='data:image/png;base64,{data}'>")
    for title, header, rows in plot_tables(board):
        parts.append(f"<h2>{e(title)}</h2><table><thead><tr>" + "".join(
            f"<th{' class=l' if i == 0 else ''}>{e(h)}</th>" for i, h in enumerate(header)) + "</tr></thead><tbody>")
        for name, *values in rows:
            parts.append(f"<tr><td class='l'>{e(name)}</td>" + "".join(
                f"<td>{e(_num(v, board.digits)) if v is not None else '-'}</td>" for v in values) + "</tr>")
        parts.append("</tbody></table>")
    parts.append(_analysis_section(board))
    parts += [f"<p class='note'>{e(n)}</p>" for n in _notes(board)]
    parts.append(f"<p class='note'>Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by mdl-bench.</p></body></html>")
    return "\n".join(parts) + "\n"


def _analysis_section(board: Board) -> str:
    """The figures of ``mdl-bench analyze --suite`` for this suite, if it was analysed; else ``""``."""
    from ..analysis.html import leaderboard_section

    return leaderboard_section(board)



def render(board: Board, fmt: str, images: dict | None = None) -> str:
    if fmt == "md":
        return render_md(board, images)
    if fmt == "csv":
        return render_csv(board)
    if fmt == "html":
        return render_html(board, images)
    raise UserError(f"unknown leaderboard format {fmt!r}; use md, csv or html")
