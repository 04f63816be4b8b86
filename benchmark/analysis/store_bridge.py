"""Reading finished runs from the results store (issue 4's SQLite store) for the analysis."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def runs(store_path, suite: str | None = None, run_ids=None) -> list:
    raise UserError("the results store is not available in this version; analyse checkpoints with --checkpoint")


def suite_analysis_dir(store_path, suite: str) -> Path:
    from ..paths import bench_home

    return bench_home() / "analysis" / suite
