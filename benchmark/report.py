"""Plain-text tables of one run's results, per domain and overall, beside the data's oracle."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC estimated from ``n_pos`` positives and ``n_neg`` negatives."""
    if not (n_pos > 0 and n_neg > 0) or math.isnan(auc):
        return float("nan")
    q1 = auc / (2.0 - auc)
    q2 = 2.0 * auc * auc / (1.0 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def _fmt(value, width: int, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    if isinstance(value, (int, np.integer)):
        return f"{value:,}".rjust(width)
    return f"{value:.{digits}f}".rjust(width)


def domain_table(test: dict, oracle: dict | None, rows: dict, positives: dict, domain_names: Sequence[str],
                 title: str, auc_errors: dict | None = None, error_source: str = "") -> str:
    """Rows: each domain then Overall. Columns: rows, AUC (+- s.e.), gAUC, logloss and the oracle's AUC/gAUC.

    ``auc_errors`` (``{"AUC": se, "AUC@S0": se, ...}``) gives the AUC's standard error, e.g. from the run's
    bootstrap over users (``error_source`` says which, in a last line); without it, Hanley & McNeil's, which takes
    rows as independent and so understates the error where users have many rows."""
    header = ["domain", "rows", "AUC", "+-se", "gAUC", "logloss"]
    if oracle:
        header += ["oracle AUC", "oracle gAUC", "oracle logloss"]
    lines = [title, "  ".join(h.rjust(10) if i else h.ljust(8) for i, h in enumerate(header))]
    for name in list(domain_names) + ["Overall"]:
        suffix = "" if name == "Overall" else f"@{name}"
        auc = test.get(f"AUC{suffix}", float("nan"))
        n, n_pos = rows.get(name, 0), positives.get(name, 0)
        se = (auc_errors or {}).get(f"AUC{suffix}") if auc_errors else auc_standard_error(auc, n_pos, n - n_pos)
        cells = [name.ljust(8), _fmt(int(n), 10), _fmt(auc, 10), _fmt(se, 10),
                 _fmt(test.get(f"gAUC{suffix}"), 10), _fmt(test.get(f"logloss{suffix}"), 10)]
        if oracle:
            cells += [_fmt(oracle.get(f"AUC{suffix}"), 10), _fmt(oracle.get(f"gAUC{suffix}"), 10),
                      _fmt(oracle.get(f"logloss{suffix}"), 10)]
        lines.append("  ".join(cells))
    lines.append(f"+-se: standard error of the AUC, {error_source or 'Hanley & McNeil (rows taken as independent)'}")
    return "\n".join(lines)
