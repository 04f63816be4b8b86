"""The paper-style leaderboard of a suite: tables 2/3 (per-domain and overall metrics, grouped rows, intervals,
comparisons with a reference row, rank intervals and tie groups), tables 4/5 (lift over a base row) and figure 8
(a metric against a config key, with the lift over a base series), as Markdown, CSV or one self-contained HTML
page.

Numbers come from the results store only; which runs make a row comes from the suite: a row is a variant (one
config hash), its cells are means over the seeds the suite lists. The statistics (:mod:`.stats`) combine the
spread over seeds with the test split's own sampling error (each run's stored bootstrap over users) and correct
every family of comparisons with Holm; :mod:`.budget` gives a tuning suite's budget curves.
"""
from __future__ import annotations

from .board import (CAP_MARK, ORACLE_LABEL, OUTDATED_MARK, PAPER_GROUPS, Board, Lift, Row, Table, build_board,
                    column, find_row)
from .plots import make_plots, plot_series, plot_tables, plot_values
from .render import render, render_csv, render_html, render_md
from .stats import ALPHA, column_stats, holm, mean_std

__all__ = ["CAP_MARK", "ORACLE_LABEL", "OUTDATED_MARK", "PAPER_GROUPS", "ALPHA", "Board", "Lift", "Row", "Table",
           "build_board", "column", "column_stats", "holm", "find_row", "make_plots", "mean_std", "plot_series",
           "plot_tables", "plot_values",
           "render", "render_csv", "render_html", "render_md"]
