"""Analyse a set of trained runs: Diversity Index, Information Abundance, spectra, covariance heatmaps.

:func:`analyze_runs` loads each run's model from its config and checkpoint, measures it on a fixed sample of
rows of one split (the same rows for every model of a dataset, and for its Single Domain reference), and writes
into ``out_dir``:

* ``analysis.json``: every number (per run, and per method averaged over seeds);
* ``fig1a_di_vs_ia.png``, ``fig5_spectra_<field>.png``, ``fig6_di_sorted.png``, ``fig7_cov_<method>.png``
  (+ ``.npz`` with the full matrices), ``fig2_ia_epochs_<method>.png`` for runs recorded with ``record_ia``.

Defaults, each an option: 20,000 random rows of the test split (seed 0); the Diversity Index under both threshold
rules (:func:`~.measures.diversity_index`): ``diversity_index`` with the 0.75 / 0.25 quantiles of each expert's
(each Single Domain network's) own output norms ("quantile"), ``diversity_index_fixed`` with one ``tau_t`` /
``tau_b`` per model, the 0.75 / 0.25 quantiles of the pooled norms of all its experts ("fixed"); 5 exposure
groups; the IA
of a model in figure 1a = the mean IA over its user-id and item-id tables (all rows, every table of the main
multi-embedding).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mdl_bench.kernel.errors import UserError
from mdl_bench.kernel.paths import slug
from . import figures
from ..measure.epochs import read_ia_epochs
from ..measure.quantities import (covloss_total, cross_expert_mask, dim_covariance_summary, diversity_index,
                       information_abundance, singular_values)
from ..measure.probe import (analysis_rows, batches, collect_experts, embedding_tables, frequency_groups, load_model,
                             loss_terms, train_frequencies)

JSON_NAME = "analysis.json"


@dataclass
class RunRef:
    """A trained run to analyse: its resolved config and checkpoint, and how to show it."""

    label: str
    params: dict
    checkpoint: str
    run_id: str | None = None
    seed: int | None = None
    group: str | None = None
    test: dict | None = None  # the run's test metrics (gAUC labels figure 1a's points), when known

    @property
    def dataset_id(self) -> str:
        return str(self.params["dataset_id"])


@dataclass
class AnalysisOptions:
    """Choices of the analysis (see the module docstring for the defaults)."""

    rows: int = 20000
    split: str = "test"
    seed: int = 0
    tau_top: float = 0.75
    tau_bottom: float = 0.25
    tau_scope: str = "per_expert"
    tau_absolute: bool = False
    groups: int = 5
    summary_fields: Sequence[str] = ("user_id", "item_id")
    batch_size: int = 4096

    def check(self) -> None:
        if self.split not in ("train", "valid", "test"):
            raise UserError(f"--split must be train, valid or test, got {self.split!r}")
        if self.tau_scope not in ("per_expert", "pooled"):
            raise UserError(f"--tau-scope must be per_expert or pooled, got {self.tau_scope!r}")
        if not self.tau_absolute and not (0.0 <= self.tau_bottom < self.tau_top <= 1.0):
            raise UserError(f"thresholds are quantiles: need 0 <= --tau-bottom < --tau-top <= 1, got "
                            f"{self.tau_bottom} and {self.tau_top} (or pass --tau-absolute for norms)")
        if self.tau_absolute and not self.tau_bottom < self.tau_top:
            raise UserError(f"need --tau-bottom < --tau-top, got {self.tau_bottom} and {self.tau_top}")
        if self.rows < 0 or self.groups < 1:
            raise UserError("--rows must be >= 0 and --groups >= 1")


def _num(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class _Dataset:
    """Per dataset: the analysis rows of the chosen split and the training frequencies of every table row."""

    def __init__(self, params: dict, options: AnalysisOptions):
        from ..data.build import ensure_dataset
        from ..data.loader import load_columns
        from ..data.build import load_feature_map

        paths = ensure_dataset(params)
        self.feature_map = load_feature_map(params)
        self.columns = load_columns(self.feature_map, paths[options.split])
        n = int(next(iter(self.columns.values())).shape[0])
        self.rows = analysis_rows(n, options.rows, options.seed)
        self._train_path = paths["train"]
        self._train: dict | None = None
        self._frequencies: dict = {}
        self.domain_rows: np.ndarray | None = None

    @property
    def train(self) -> dict:
        """The training split's columns, read on first use (the frequencies need them; ``--compare`` does not)."""
        if self._train is None:
            from ..data.loader import load_columns

            self._train = load_columns(self.feature_map, self._train_path)
        return self._train

    def frequencies(self, model) -> dict:
        """Training counts of every categorical field's rows, overall and per domain (cached per dataset)."""
        if not self._frequencies:
            domain = model.domain_lookup.cpu()[self.train[model.domain_field].long()].numpy()
            self.domain_rows = np.bincount(domain, minlength=model.num_domains)
            fields = [n for n, s in self.feature_map.features.items() if s.get("type") == "categorical"]
            vocab = {f: int(self.feature_map.features[f]["vocab_size"]) for f in fields}
            self._frequencies = train_frequencies(self.train, fields, vocab, domain, model.num_domains)
        return self._frequencies

    def batches(self, batch_size: int):
        return batches(self.columns, self.rows, batch_size)


def table_information(model, frequencies: dict, groups: int, spectra_fields: Sequence[str]) -> list[dict]:
    """IA of every embedding table (all rows; per exposure group for the main embedding), one table at a time:
    each table is a view of its field's weight, reduced to a ``D x D`` Gram matrix chunk by chunk, so at most one
    table-sized buffer (a CUDA table's copy) exists at any moment."""
    out = []
    cached_groups: dict = {}  # the groups depend on (field, domain), not on the table
    for ref in embedding_tables(model):
        view = ref.view()
        sigma = singular_values(view)
        entry = {"table": ref.name, "module": ref.module, "field": ref.field, "index": ref.index,
                 "domain": ref.domain, "rows": int(view.shape[0]), "ia": _num(information_abundance(sigma))}
        per = frequencies.get(ref.field)
        if per is not None and ref.module == "embedding":
            key = (ref.field, "all" if ref.domain is None else ref.domain)
            if key not in cached_groups:
                cached_groups[key] = frequency_groups(per[key[1]], groups)
            parts = cached_groups[key]
            entry["group_rows"] = [int(len(p)) for p in parts]
            entry["ia_groups"] = [_num(information_abundance(singular_values(view, p))) for p in parts]
        if ref.field in spectra_fields:
            entry["sigma"] = [float(s) for s in sigma]
        out.append(entry)
        del view, sigma
    return out


def _spectrum(tables: list[dict], field: str, smallest_domain: int | None):
    """Figure 5's curve of one model: the smallest domain's table if it has one, else the geometric mean over
    the main embedding's tables of ``field``."""
    chosen = [t for t in tables if t["module"] == "embedding" and t["field"] == field and "sigma" in t]
    if not chosen:
        return None, None
    own = [t for t in chosen if t["domain"] is not None and t["domain"] == smallest_domain]
    if own:
        return own[0]["sigma"], own[0]["table"]
    logs = np.log(np.clip(np.array([t["sigma"] for t in chosen]), 1e-30, None)).mean(axis=0)
    return [float(v) for v in np.exp(logs)], f"mean of {len(chosen)} table(s)"


def analyze_model(model, dataset: _Dataset, options: AnalysisOptions, sd_norms: np.ndarray | None) -> dict:
    """Every measure of one loaded model (numbers only; the caller adds figures)."""
    result: dict = {}
    stats = collect_experts(model, dataset.batches(options.batch_size))
    if stats is None:
        result["diversity_index"] = None
        result["di_note"] = "the model exposes no experts (expert_outputs_for_analysis returns None)"
        result["experts"] = None
    else:
        sigmas = stats.moments.expert_singular_values()
        blocks = stats.moments.cov_block_norms()
        result["experts"] = {"count": len(stats.bound), "bound": stats.bound, "width": stats.moments.H,
                             "ia": [_num(information_abundance(s)) for s in sigmas],
                             "sigma": [[float(v) for v in s] for s in sigmas],
                             "cov_blocks": blocks.tolist(),
                             "covloss": covloss_summary(stats.moments),
                             "norm_quantiles": {q: np.quantile(stats.norms, float(q), axis=1).tolist()
                                                for q in ("0.25", "0.5", "0.75")}}
        result["_moments"] = stats.moments
        if sd_norms is None:
            result["diversity_index"] = None
            result["di_note"] = "no Single Domain run of this dataset to define D(i,j)"
        else:
            for key, scope in (("diversity_index", options.tau_scope), ("diversity_index_fixed", "pooled")):
                di = diversity_index(sd_norms, stats.norms, stats.bound, options.tau_top, options.tau_bottom,
                                     scope, options.tau_absolute)
                result[key] = di.to_dict(model.domain_names)
    terms = loss_terms(model, dataset.batches(options.batch_size))
    if terms is not None:  # how much of the loss the auxiliary term is (CovLoss inert or dominant)
        aux = sum(v for k, v in terms.items() if k != "bce")
        terms["aux_share"] = aux / (aux + terms["bce"]) if aux + terms["bce"] else None
    result["loss_terms"] = terms
    frequencies = dataset.frequencies(model)
    tables = table_information(model, frequencies, options.groups, options.summary_fields)
    result["tables"] = tables
    summary = [t["ia"] for t in tables if t["module"] == "embedding" and t["field"] in options.summary_fields
               and t["ia"] is not None]
    result["ia_summary"] = float(np.mean(summary)) if summary else None
    return result


def covloss_summary(moments, high: float | None = None) -> dict:
    """Figure 7 of one model as numbers: eq. (7)'s term of every expert pair ``p >= q`` (experts numbered from 1,
    as in the paper; ``||cov(O^p, O^q)||_1 / H^2`` with the covariance over the analysis rows, i.e. divided by
    ``N``), its totals over ``p >= q`` and ``p > q``, and the dimension-level summary."""
    blocks = moments.cov_block_norms()
    E = blocks.shape[0]
    return {"pairs": {f"{p + 1},{q + 1}": float(blocks[p, q]) for p in range(E) for q in range(p + 1)},
            "total": covloss_total(blocks), "total_cross": covloss_total(blocks, "p>q"),
            "dimensions": dim_covariance_summary(moments.covariance(), E, high)}


def _loss_of(params: dict) -> str:
    """``aux_loss=cov alpha=0.0001``-style description of a run's auxiliary loss (empty when it has none)."""
    if "aux_loss" not in params and "cov_alpha" not in params:
        return ""
    name = str(params.get("aux_loss", "cov"))
    alpha = params.get("aux_alpha")
    alpha = params.get("cov_alpha") if alpha is None else alpha
    return f"aux_loss={name}" if name == "none" or alpha is None else f"aux_loss={name} alpha={float(alpha):g}"


IGNORED_IN_DIFF = ("model_id", "model_root", "verbose", "data_root", "train_data", "valid_data", "test_data")


def config_differences(a: dict, b: dict) -> list[str]:
    """``key: A -> B`` for every config key whose value differs between two runs (paths and names left out)."""
    keys = sorted((set(a) | set(b)) - set(IGNORED_IN_DIFF))
    return [f"{k}: {a.get(k, '-')} -> {b.get(k, '-')}" for k in keys if a.get(k) != b.get(k)]


def compare_covariance(first: RunRef, second: RunRef, out_dir, options: AnalysisOptions | None = None,
                       log=print) -> dict:
    """Figure 7 for two runs of the same structure (e.g. Crocodile without CovLoss, ``first``, and with it,
    ``second``) on the same analysis rows: both models' per-pair CovLoss, the ratio ``first / second`` of every
    pair (how many times lower the second one's is), the dimension-level summaries (the "high-value points" are
    the cross-expert entries at or above the first run's 99th percentile), ``fig7_compare.png`` (heatmaps on
    shared colour scales and the ratio), ``fig7_compare.npz`` (the matrices) and ``fig7_compare.json``."""
    options = options or AnalysisOptions()
    options.check()
    if first.params.get("model") != second.params.get("model"):
        raise UserError(f"--compare needs two runs of the same model; {first.label} is a {first.params.get('model')} "
                        f"run and {second.label} a {second.params.get('model')} run")
    if first.dataset_id != second.dataset_id:
        raise UserError(f"--compare needs two runs on the same data; {first.label} is on {first.dataset_id!r} and "
                        f"{second.label} on {second.dataset_id!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = _Dataset(first.params, options)
    moments = []
    for run in (first, second):
        log(f"analysis: {run.label} ({run.params['model']}, seed {run.seed}, {run.run_id or run.checkpoint})")
        model = load_model(run.params, run.checkpoint)
        stats = collect_experts(model, dataset.batches(options.batch_size))
        del model
        if stats is None:
            raise UserError(f"{run.label} ({run.params['model']}) exposes no experts, so it has no CovLoss between "
                            f"experts; --compare two runs of a model with experts (e.g. Crocodile with aux_loss: none "
                            f"and with aux_loss: cov)")
        moments.append(stats.moments)
    a, b = moments
    if (a.E, a.H) != (b.E, b.H):
        raise UserError(f"--compare needs the same expert structure: {first.label} has {a.E} experts of width {a.H}, "
                        f"{second.label} {b.E} of width {b.H}")
    blocks_a, blocks_b = a.cov_block_norms(), b.cov_block_norms()
    ratio = np.divide(blocks_a, blocks_b, out=np.full_like(blocks_a, np.nan), where=blocks_b > 0)
    cov_a, cov_b = a.covariance(), b.covariance()
    cross = cross_expert_mask(a.E, a.H)
    high = float(np.quantile(np.abs(cov_a)[cross], 0.99)) if cross.any() else None
    summary_a, summary_b = covloss_summary(a, high), covloss_summary(b, high)

    def describe(run: RunRef) -> dict:
        return {"label": run.label, "run_id": run.run_id, "checkpoint": run.checkpoint, "seed": run.seed,
                "model": run.params.get("model"), "loss": _loss_of(run.params)}

    E = a.E
    report = {"split": options.split, "rows": int(len(dataset.rows)), "experts": E, "width": a.H,
              "runs": [describe(first), describe(second)],
              "differences": config_differences(first.params, second.params),
              "pairs": [{"pair": f"{p + 1},{q + 1}", "first": float(blocks_a[p, q]), "second": float(blocks_b[p, q]),
                         "ratio": _num(ratio[p, q])} for p in range(E) for q in range(p + 1)],
              "total": {"first": summary_a["total"], "second": summary_b["total"],
                        "ratio": _num(summary_a["total"] / summary_b["total"]) if summary_b["total"] > 0 else None},
              "total_cross": {"first": summary_a["total_cross"], "second": summary_b["total_cross"],
                              "ratio": (_num(summary_a["total_cross"] / summary_b["total_cross"])
                                        if summary_b["total_cross"] > 0 else None)},
              "dimensions": {"first": summary_a["dimensions"], "second": summary_b["dimensions"]}}
    labels = (f"A: {first.label}", f"B: {second.label}")
    figure = figures.cov_compare(blocks_a, blocks_b, ratio, np.abs(cov_a), np.abs(cov_b), labels,
                                 out / "fig7_compare.png")
    np.savez_compressed(out / "fig7_compare.npz", cov_blocks_first=blocks_a, cov_blocks_second=blocks_b,
                        ratio=ratio, dim_covariance_first=np.abs(cov_a), dim_covariance_second=np.abs(cov_b))
    report["figures"] = [figure.name, "fig7_compare.npz"]
    (out / "fig7_compare.json").write_text(json.dumps(report, indent=1))
    return report


def analyze_runs(runs: Sequence[RunRef], single_domain: dict[str, RunRef], out_dir,
                 options: AnalysisOptions | None = None, log=print) -> dict:
    """Analyse ``runs`` (Single Domain references per dataset id in ``single_domain``) into ``out_dir``."""
    options = options or AnalysisOptions()
    options.check()
    if not runs:
        raise UserError("nothing to analyse: no finished runs were found; run the suite first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    datasets: dict[str, _Dataset] = {}
    sd_norms: dict[str, np.ndarray | None] = {}
    report = {"options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
              "datasets": {}, "runs": [], "methods": [], "figures": []}
    for ds_id in sorted({r.dataset_id for r in runs}):
        first = next(r for r in runs if r.dataset_id == ds_id)
        datasets[ds_id] = _Dataset(first.params, options)
        entry = {"split": options.split, "rows": int(len(datasets[ds_id].rows)), "single_domain": None}
        sd = single_domain.get(ds_id)
        sd_norms[ds_id] = None
        if sd is not None:
            log(f"analysis: Single Domain reference {sd.label} ({sd.run_id or sd.checkpoint})")
            sd_model = load_model(sd.params, sd.checkpoint)
            stats = collect_experts(sd_model, datasets[ds_id].batches(options.batch_size))
            sd_norms[ds_id] = stats.norms
            entry["single_domain"] = {"label": sd.label, "run_id": sd.run_id, "checkpoint": sd.checkpoint,
                                      "expert_output": "last hidden layer of each domain's DNN, on every row",
                                      "norm_quantiles": {q: np.quantile(stats.norms, float(q), axis=1).tolist()
                                                         for q in ("0.25", "0.5", "0.75")}}
            del sd_model
        report["datasets"][ds_id] = entry
    moments_by_label: dict[str, object] = {}
    smallest: dict[str, int | None] = {}
    for run in runs:
        log(f"analysis: {run.label} ({run.params['model']}, seed {run.seed}, {run.run_id or run.checkpoint})")
        model = load_model(run.params, run.checkpoint)
        dataset = datasets[run.dataset_id]
        measured = analyze_model(model, dataset, options, sd_norms[run.dataset_id])
        moments = measured.pop("_moments", None)
        if moments is not None and run.label not in moments_by_label:
            moments_by_label[run.label] = moments
        if dataset.domain_rows is not None:
            smallest[run.dataset_id] = int(np.argmin(dataset.domain_rows))
        record = read_ia_epochs(run.checkpoint)
        report["runs"].append({"label": run.label, "run_id": run.run_id, "seed": run.seed, "model": run.params["model"],
                               "group": run.group, "dataset_id": run.dataset_id, "checkpoint": run.checkpoint,
                               "test": {k: run.test[k] for k in ("AUC", "gAUC") if k in (run.test or {})},
                               "domain_names": list(model.domain_names), **measured,
                               "ia_epochs": record})
        del model
    report["methods"] = _methods(report["runs"])
    report["figure_1a"] = figure_1a_table(report["methods"])
    report["figures"] = _figures(report, moments_by_label, smallest, options, out)
    (out / JSON_NAME).write_text(json.dumps(report, indent=1))
    return report


# Figure 1a of the paper (KuaiRand-1K): the Diversity Index its text gives (section 2; "less than 0.3" for HiNet,
# STAR, PEPNet and PLE) and each method's overall gAUC of its table 2 (the figure labels its points with gAUC, in
# a layout the text extraction garbles). The paper gives no Information Abundance values as numbers.
PAPER_FIGURE_1A = {
    "PLE": {"di": "0.284", "gauc": 0.66093}, "ME_PLE": {"di": "0.403", "gauc": 0.66075},
    "MMoE": {"di": "0.615", "gauc": 0.66057}, "ME_MMoE": {"di": "0.716", "gauc": 0.66188},
    "SDEM": {"di": "0.904", "gauc": 0.66096}, "HiNet": {"di": "< 0.3", "gauc": 0.66131},
    "STAR": {"di": "< 0.3", "gauc": 0.65652}, "PEPNet": {"di": "< 0.3", "gauc": 0.66018},
    "Crocodile": {"di": None, "gauc": 0.66373},
}


def figure_1a_table(methods: list[dict]) -> list[dict]:
    """Figure 1a side by side: for every analysed method the paper plots, the paper's DI and gAUC beside this
    run's DI (both threshold rules), IA of the id tables and test gAUC."""
    rows = []
    for m in methods:
        paper = PAPER_FIGURE_1A.get(m["model"])
        if paper is None:
            continue
        rows.append({"label": m["label"], "model": m["model"], "paper_di": paper["di"], "paper_gauc": paper["gauc"],
                     "di_fixed": m.get("di_fixed"), "di": m.get("di"), "ia": m.get("ia"), "gauc": m.get("gauc")})
    return rows


def _methods(runs: list[dict]) -> list[dict]:
    """Per label: DI and IA averaged over its runs (seeds)."""
    methods = []
    for label in dict.fromkeys(r["label"] for r in runs):
        mine = [r for r in runs if r["label"] == label]
        di, di_fixed = ([r[key]["mean"] for r in mine if r.get(key) and r[key]["mean"] is not None]
                        for key in ("diversity_index", "diversity_index_fixed"))
        ia = [r["ia_summary"] for r in mine if r.get("ia_summary") is not None]
        shares = [r["loss_terms"]["aux_share"] for r in mine if (r.get("loss_terms") or {}).get("aux_share") is not None]
        gauc = [r["test"]["gAUC"] for r in mine if (r.get("test") or {}).get("gAUC") is not None]
        expert_ia = [np.mean([v for v in r["experts"]["ia"] if v is not None]) for r in mine if r.get("experts")]
        methods.append({"label": label, "model": mine[0]["model"], "group": mine[0]["group"], "runs": len(mine),
                        "di": float(np.mean(di)) if di else None,
                        "di_fixed": float(np.mean(di_fixed)) if di_fixed else None,
                        "ia": float(np.mean(ia)) if ia else None,
                        "expert_ia": float(np.mean(expert_ia)) if expert_ia else None,
                        "aux_share": float(np.mean(shares)) if shares else None,
                        "gauc": float(np.mean(gauc)) if gauc else None,
                        "di_note": None if di else mine[0].get("di_note")})
    return methods


def _figures(report: dict, moments_by_label: dict, smallest: dict, options: AnalysisOptions, out: Path) -> list[str]:
    written = []
    methods = report["methods"]
    variants = [("di", "fig1a_di_vs_ia.png", "Diversity Index (per-expert quantile thresholds)"),
                ("di_fixed", "fig1a_di_fixed_vs_ia.png", "Diversity Index (fixed thresholds: pooled-norm quantiles)")]
    for key, name, xlabel in variants:
        if key == "di" or any(m.get(key) is not None for m in methods):
            points = [{"label": m["label"] + (f" ({m['gauc']:.4f})" if m.get("gauc") is not None else ""),
                       "di": m.get(key), "ia": m["ia"]} for m in methods]
            written.append(figures.di_vs_ia(points, out / name, xlabel).name)
    firsts = {}
    for r in report["runs"]:
        firsts.setdefault(r["label"], r)
    curves = {label: r["diversity_index"]["sorted"] for label, r in firsts.items() if r.get("diversity_index")}
    if curves:
        written.append(figures.di_sorted(curves, out / "fig6_di_sorted.png").name)
    for field_name in options.summary_fields:
        spectra, sources = {}, {}
        for label, r in firsts.items():
            sigma, source = _spectrum(r["tables"], field_name, smallest.get(r["dataset_id"]))
            if sigma is not None:
                spectra[label] = sigma
                sources[label] = source
        if spectra:
            written.append(figures.spectra(spectra, field_name, out / f"fig5_spectra_{slug(field_name)}.png").name)
            report.setdefault("spectra_sources", {})[field_name] = sources
    for label, moments in moments_by_label.items():
        name = f"fig7_cov_{slug(label)}"
        blocks, dims = moments.cov_block_norms(), moments.dim_covariance()
        written.append(figures.cov_heatmaps(blocks, dims, label, out / f"{name}.png").name)
        np.savez_compressed(out / f"{name}.npz", cov_blocks=blocks, dim_covariance=dims)
    for label, r in firsts.items():
        if r.get("ia_epochs"):
            written.append(figures.ia_epochs(r["ia_epochs"], label, out / f"fig2_ia_epochs_{slug(label)}.png").name)
    return written
