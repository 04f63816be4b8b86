"""The analysis figures as a section of a self-contained HTML page (PNG files inlined as base64 data URIs).

The HTML leaderboard calls :func:`figures_section` with the suite's analysis folder (the folder
``mdl-bench analyze --suite NAME`` writes); it returns ``""`` when there is nothing to show, so a suite that was
never analysed renders as before.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from mdl_bench.kernel.paths import slug
from .figures import CAPTIONS

ORDER = ("fig1a", "fig6", "fig5", "fig2", "fig7")


def _caption(name: str) -> str:
    for prefix, text in CAPTIONS.items():
        if name.startswith(prefix + "_") or name.startswith(prefix + "."):
            suffix = name[len(prefix):].strip("_").rsplit(".", 1)[0]
            return text + (f" [{suffix}]" if suffix and prefix in ("fig2", "fig5", "fig7") else "")
    return name


def _rank(path: Path) -> tuple:
    for i, prefix in enumerate(ORDER):
        if path.name.startswith(prefix):
            return (i, path.name)
    return (len(ORDER), path.name)


def _summary(folder: Path) -> str:
    """The per-method DI / IA numbers of ``analysis.json`` as a small table."""
    path = folder / "analysis.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""

    def cell(v):
        return "-" if v is None else f"{v:.3f}"

    rows = "".join(f"<tr><td>{html.escape(str(m['label']))}</td><td>{html.escape(str(m.get('group') or '-'))}</td>"
                   f"<td>{cell(m.get('di'))}</td><td>{cell(m.get('di_fixed'))}</td><td>{cell(m.get('ia'))}</td>"
                   f"<td>{cell(m.get('expert_ia'))}</td></tr>"
                   for m in report.get("methods", []))
    return ("<table class='analysis'><thead><tr><th>method</th><th>group</th><th>DI (per-expert quantiles)</th>"
            "<th>DI (fixed thresholds)</th>"
            "<th>IA (id tables)</th><th>IA (experts)</th></tr></thead><tbody>" + rows + "</tbody></table>")


def figures_section(folder) -> str:
    """An HTML ``<section>`` with every PNG of ``folder`` (inlined) and the DI/IA table; ``""`` if none."""
    folder = Path(folder)
    pngs = sorted(folder.glob("*.png"), key=_rank) if folder.is_dir() else []
    if not pngs:
        return ""
    parts = ["<section class='analysis'>", "<h2>Analysis: Diversity Index and Information Abundance</h2>",
             _summary(folder)]
    for png in pngs:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{html.escape(png.name)}' src='data:image/png;base64,{data}' "
                     f"style='max-width:100%'><figcaption>{html.escape(_caption(png.name))}</figcaption></figure>")
    parts.append("</section>")
    return "\n".join(parts)


def suite_analysis_dir(suite, store_path) -> Path:
    """``<store folder>/analysis/<suite name>/`` for a loaded suite and its resolved store file: where
    ``mdl-bench analyze --suite`` writes and the HTML leaderboard looks."""
    return Path(store_path).parent / "analysis" / slug(suite.name)


def leaderboard_section(board) -> str:
    """The hook of the HTML leaderboard: the suite's analysis figures, or ``""`` if it was not analysed."""
    return figures_section(suite_analysis_dir(board.suite, board.store_path))
