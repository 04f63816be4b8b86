"""PNG figures of the analysis (matplotlib, headless): figures 1a, 2, 5, 6 and 7 of the paper.

Each function takes plain numbers (what ``analysis.json`` holds) and a path, writes one PNG and returns the path.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

# One caption per figure file prefix; the HTML report shows them under the images.
CAPTIONS = {
    "fig1a_di_fixed": "Figure 1a with the fixed-threshold Diversity Index (one tau_t / tau_b per model: quantiles of "
                      "the pooled norms of all its experts).",
    "fig1a": "Figure 1a: Diversity Index (per-expert quantile thresholds) vs Information Abundance of every method "
             "(the dilemma).",
    "fig2": "Figure 2: log IA over training epochs: (a) experts, (b) item-id tables per exposure group.",
    "fig5": "Figure 5: singular value spectra log(sigma) of the id embeddings (smallest domain's table where "
            "the model has domain tables, else the mean over tables).",
    "fig6": "Figure 6: Diversity Index of every domain pair (i, j), in descending order.",
    "fig7_compare": "Figure 7 for two runs (A without, B with CovLoss): CovLoss between experts of each and their "
                    "ratio A/B (top), |covariance| of all dimensions of all experts (bottom).",
    "fig7": "Figure 7: CovLoss between experts (left) and |covariance| of all dimensions of all experts (right).",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(number: int) -> dict:
    """Distinct line styles for many series: ten colours, then the same colours dashed, then dotted."""
    return {"color": f"C{number % 10}", "linestyle": ("-", "--", ":")[(number // 10) % 3]}


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def di_vs_ia(points: Sequence[dict], path, xlabel: str = "Diversity Index") -> Path:
    """Figure 1a: one point per method, ``{"label", "di", "ia"}`` (points with a missing value are skipped)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    shown = [p for p in points if p.get("di") is not None and p.get("ia") is not None]
    for number, p in enumerate(shown):
        ax.scatter(p["di"], p["ia"], s=36, color=f"C{number % 10}", marker="os^"[(number // 10) % 3])
        ax.annotate(p["label"], (p["di"], p["ia"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    missing = [p["label"] for p in points if p not in shown]
    if missing:
        ax.text(0.01, 0.01, "no DI: " + ", ".join(missing), transform=ax.transAxes, fontsize=7, va="bottom")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Information Abundance (id tables)")
    ax.set_title("Domain distinctiveness vs sufficient learning")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def di_sorted(curves: dict[str, Sequence[float]], path) -> Path:
    """Figure 6: for each method, its DI_(i,j) sorted in descending order."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for number, (label, values) in enumerate(curves.items()):
        if values:
            ax.plot(range(1, len(values) + 1), values, marker="o", ms=3, label=label, **_style(number))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("domain pair (i, j), sorted")
    ax.set_ylabel("Diversity Index")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def spectra(curves: dict[str, Sequence[float]], field: str, path) -> Path:
    """Figure 5: ``log(sigma)`` (descending) of one field's table per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for number, (label, sigma) in enumerate(curves.items()):
        sigma = np.asarray(sigma, dtype=np.float64)
        ax.plot(range(1, len(sigma) + 1), np.log(np.clip(sigma, 1e-12, None)), marker=".", label=label,
                **_style(number))
    ax.set_xlabel("singular value index")
    ax.set_ylabel("log(sigma)")
    ax.set_title(f"Singular value spectrum of the {field} embeddings")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _log_norm(*arrays: np.ndarray, floor_ratio: float = 0.0):
    """A shared ``LogNorm`` over the positive finite entries of ``arrays`` (``None`` if there are none to span);
    with ``floor_ratio`` its low end is at least that fraction of the largest entry."""
    from matplotlib.colors import LogNorm

    values = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    positive = values[np.isfinite(values) & (values > 0)]
    if not positive.size:
        return None
    top = float(positive.max())
    low = max(float(positive.min()), top * floor_ratio) if floor_ratio else float(positive.min())
    return LogNorm(vmin=low, vmax=top) if low < top else None


def _block_panel(fig, ax, blocks: np.ndarray, norm, title: str, cmap: str = "viridis", color: str = "w") -> None:
    """An ``E x E`` heatmap of per-expert-pair values (experts numbered from 1; values written when ``E <= 8``)."""
    blocks = np.asarray(blocks, dtype=np.float64)
    im = ax.imshow(np.where(np.isfinite(blocks) & (blocks > 0), blocks, np.nan), cmap=cmap, norm=norm)
    E = blocks.shape[0]
    ax.set_xticks(range(E), [str(e + 1) for e in range(E)])
    ax.set_yticks(range(E), [str(e + 1) for e in range(E)])
    if E <= 8:
        for p in range(E):
            for q in range(E):
                ax.text(q, p, f"{blocks[p, q]:.2g}", ha="center", va="center", fontsize=7, color=color)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("expert")
    ax.set_ylabel("expert")
    fig.colorbar(im, ax=ax, fraction=0.046)


def _dims_panel(fig, ax, dims: np.ndarray, num_experts: int, norm, title: str) -> None:
    """The ``E*H x E*H`` ``|covariance|`` heatmap, expert blocks outlined."""
    dims = np.asarray(dims, dtype=np.float64)
    floor = norm.vmin if norm is not None else 1e-12
    im = ax.imshow(np.clip(dims, floor, None), cmap="magma", norm=norm)
    H = dims.shape[0] // max(num_experts, 1)
    for e in range(1, num_experts):
        ax.axhline(e * H - 0.5, color="w", lw=0.4)
        ax.axvline(e * H - 0.5, color="w", lw=0.4)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)


def cov_heatmaps(blocks: np.ndarray, dims: np.ndarray, title: str, path) -> Path:
    """Figure 7: ``E x E`` CovLoss block norms (left) and ``E*H x E*H`` |covariance| (right), log colour scales."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"wspace": 0.4})
    E = np.asarray(blocks).shape[0]
    _block_panel(fig, left, blocks, _log_norm(blocks), "CovLoss between experts")
    _dims_panel(fig, right, dims, E, _log_norm(dims, floor_ratio=1e-6), "|covariance| of all dimensions of all experts")
    fig.suptitle(title)
    return _save(fig, path)


def cov_compare(blocks_a: np.ndarray, blocks_b: np.ndarray, ratio: np.ndarray, dims_a: np.ndarray,
                dims_b: np.ndarray, labels: Sequence[str], path) -> Path:
    """Figure 7 for two runs: top row the ``E x E`` CovLoss of A and of B (one log colour scale) and the ratio
    A/B; bottom row ``|cov|`` of all ``E*H`` dimensions of A and of B (one log colour scale, floor 1e-6 of the
    largest)."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(16, 9.6), gridspec_kw={"wspace": 0.35, "hspace": 0.3})
    E = np.asarray(blocks_a).shape[0]
    shared = _log_norm(blocks_a, blocks_b)
    _block_panel(fig, axes[0, 0], blocks_a, shared, f"CovLoss between experts\n{labels[0]}")
    _block_panel(fig, axes[0, 1], blocks_b, shared, f"CovLoss between experts\n{labels[1]}")
    _block_panel(fig, axes[0, 2], ratio, _log_norm(ratio), "CovLoss per pair, ratio A / B", cmap="coolwarm",
                 color="k")
    dims_norm = _log_norm(dims_a, dims_b, floor_ratio=1e-6)
    _dims_panel(fig, axes[1, 0], dims_a, E, dims_norm, f"|covariance| of all dimensions of all experts\n{labels[0]}")
    _dims_panel(fig, axes[1, 1], dims_b, E, dims_norm, f"|covariance| of all dimensions of all experts\n{labels[1]}")
    axes[1, 2].axis("off")
    fig.suptitle("Figure 7: with and without CovLoss")
    return _save(fig, path)


def ia_epochs(record: dict, title: str, path, field: str = "item_id") -> Path:
    """Figure 2: (a) log IA of each expert and (b) log IA of ``field``'s tables per exposure group, vs epoch."""
    plt = _pyplot()
    snaps = record.get("snapshots", [])
    epochs = [s["epoch"] for s in snaps]
    names = record.get("domain_names", [])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    n_experts = max((len(s.get("experts", [])) for s in snaps), default=0)
    for e in range(n_experts):
        values = [s["experts"][e]["ia"] if len(s.get("experts", [])) > e else None for s in snaps]
        bound = next((s["experts"][e]["bound"] for s in snaps if len(s.get("experts", [])) > e), None)
        label = f"expert {e + 1}" + (f" ({names[bound]})" if bound is not None and bound < len(names) else "")
        a.plot(epochs, [math.log(v) if v else np.nan for v in values], marker="o", label=label)
    a.set_title("(a) experts")
    a.set_xlabel("epoch")
    a.set_ylabel("log IA")
    a.grid(alpha=0.3)
    if n_experts:
        a.legend(fontsize=7)
    tables = {}
    for s in snaps:
        for t in s.get("tables", []):
            if t["field"] == field and t["module"] == "embedding":
                tables.setdefault(t["table"], []).append(t)
    any_domain = any(entries[0]["domain"] is not None for entries in tables.values())
    for number, (name, entries) in enumerate(tables.items()):
        dom = entries[0]["domain"]
        if dom is not None and dom < len(names):
            label = names[dom]
        else:
            label = "shared" if any_domain else name.split("[")[-1].rstrip("]")
        lines = [("all", [t["ia"] for t in entries], "-")]
        groups = [t.get("ia_groups") or [] for t in entries]
        if groups and groups[0]:
            lines.append(("high", [g[0] if g else None for g in groups], "--"))
            lines.append(("low", [g[-1] if g else None for g in groups], ":"))
        for tag, values, style in lines:
            b.plot(epochs[:len(values)], [math.log(v) if v else np.nan for v in values], style, marker=".",
                   color=f"C{number % 10}", label=f"table {label} {tag}")
    b.set_title(f"(b) {field} tables by exposure group")
    b.set_xlabel("epoch")
    b.set_ylabel("log IA")
    b.grid(alpha=0.3)
    if tables:
        b.legend(fontsize=6, ncol=2)
    fig.suptitle(title)
    return _save(fig, path)
