"""``mdl-bench analyze``: the paper's analysis (DI, IA, spectra, heatmaps) on stored runs.

Runs come from the results store (``--suite NAME``: every finished run of the suite; ``--run ID``: single runs)
or from checkpoints (``--checkpoint PATH``: the config is read from the ``.result.json`` that ``run-expid`` writes
beside it, or resolved from ``--expid``). The Diversity Index needs a Single Domain run of the same dataset
(``--single-domain RUN_ID|CHECKPOINT``; by default one of the analysed runs, else the newest one in the store).

``--compare A B`` (two run ids or checkpoints) is figure 7 for two runs of the same structure, typically
Crocodile without CovLoss (A, e.g. ``Crocodile_ablation_ME_peg_B`` or ``--set aux_loss=none``) and with it (B):
the CovLoss of every expert pair of both, their ratio A/B, the dimension-level summary and the heatmaps.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

# Only what building the parser needs is imported here: `mdl-bench --help` must not load torch or the models.
SINGLE_DOMAIN_MODEL = "SingleDomain"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("analyze", help="Diversity Index, Information Abundance, spectra and covariance heatmaps "
                                       "of stored runs (figures 1a, 2, 5, 6, 7)")
    src = p.add_argument_group("runs to analyse (one of)")
    src.add_argument("--suite", help="every finished run of this suite in the results store")
    src.add_argument("--run", action="append", metavar="RUN_ID", help="a stored run (repeatable)")
    src.add_argument("--checkpoint", action="append", metavar="PATH",
                     help="a checkpoint (repeatable); its config comes from the .result.json beside it or --expid")
    src.add_argument("--compare", nargs=2, metavar=("A", "B"),
                     help="figure 7 for two runs (run ids or checkpoints) of the same structure, e.g. Crocodile "
                          "without CovLoss (A) and with it (B): CovLoss of every expert pair, the ratio A/B, the "
                          "dimension-level covariance and the heatmaps")
    p.add_argument("--expid", help="with --checkpoint: the expid whose config built it (when no .result.json)")
    p.add_argument("--config", help="with --expid: config folder (default: the packaged config/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="with --expid: config overrides; with --suite: the overrides the suite was run with "
                        "(`mdl-bench run --suite NAME --set ...` changes the runs' hashes)")
    p.add_argument("--store", help="results store (default: the suites' default store)")
    p.add_argument("--single-domain", dest="single_domain", metavar="RUN_ID|CHECKPOINT",
                   help="the Single Domain run defining D(i,j) (default: one of the runs, else the newest stored)")
    p.add_argument("--out", help="output folder (default: the analysis folder of the suite, or "
                                 "$MDL_BENCH_HOME/analysis/<name>)")
    p.add_argument("--rows", type=int, default=20000, help="rows sampled from the split (default 20000; 0 = all)")
    p.add_argument("--split", default="test", help="split the rows come from: train, valid or test (default test)")
    p.add_argument("--seed", type=int, default=0, help="seed of the row sample (default 0)")
    p.add_argument("--tau-top", dest="tau_top", type=float, default=0.75,
                   help="tau_t: quantile of the output norms (default 0.75), or a norm with --tau-absolute")
    p.add_argument("--tau-bottom", dest="tau_bottom", type=float, default=0.25,
                   help="tau_b: quantile of the output norms (default 0.25), or a norm with --tau-absolute")
    p.add_argument("--tau-scope", dest="tau_scope", default="per_expert",
                   help="thresholds of the quantile DI, DI(q): quantiles of each expert's norms (per_expert, "
                        "default) or of all experts' (pooled); the fixed DI, DI(fix), always pools them")
    p.add_argument("--tau-absolute", dest="tau_absolute", action="store_true",
                   help="--tau-top/--tau-bottom are norms, not quantiles")
    p.add_argument("--groups", type=int, default=5, help="exposure-frequency groups of the tables (default 5)")
    p.add_argument("--fields", nargs="+", default=["user_id", "item_id"],
                   help="fields of the spectra and of the summary IA (default user_id item_id)")
    p.set_defaults(func=run_command)
    return p


def options_from(args):
    from ..analysis.report import AnalysisOptions

    return AnalysisOptions(rows=args.rows, split=args.split, seed=args.seed, tau_top=args.tau_top,
                           tau_bottom=args.tau_bottom, tau_scope=args.tau_scope, tau_absolute=args.tau_absolute,
                           groups=args.groups, summary_fields=tuple(args.fields))


# ------------------------------------------------------------------ runs from checkpoints
def run_from_checkpoint(path: str, expid: str | None = None, config_dir=None, overrides: dict | None = None):
    """A :class:`RunRef` for a checkpoint: config from its ``.result.json``, else resolved from ``expid``."""
    from mdl_bench.model_zoo import model_group, registry
    from mdl_bench.kernel.errors import UserError
    from ..runner import RESULT_SUFFIX, resolve
    from ..measure.probe import read_checkpoint
    from ..analysis.report import RunRef

    checkpoint = Path(path).expanduser()
    if checkpoint.is_dir():
        raise UserError(f"checkpoint {checkpoint} is a folder; pass the .model file a run wrote (its path is printed "
                        f"at the end of run-expid)")
    if not checkpoint.is_file():
        raise UserError(f"checkpoint {checkpoint} does not exist; pass the .model file a run wrote "
                        f"(its path is printed at the end of run-expid)")
    read_checkpoint(checkpoint)  # a truncated, empty or foreign file is refused before any data is built
    result = checkpoint.with_suffix(RESULT_SUFFIX)
    if expid is None and result.is_file():
        try:
            stored = json.loads(result.read_text())
        except (OSError, ValueError):
            raise UserError(f"{result} is not readable JSON; pass --expid to resolve the config instead") from None
        from ..schema import validate

        # a result written before the schema may hold "1e-3" as text: convert what can be (never refuse a stored run)
        params = validate(stored["params"], registry().get(str(stored["params"].get("model"))), strict=False)
        label = stored.get("expid") or params.get("model_id") or checkpoint.stem
        seed = stored.get("seed")
    elif expid is not None:
        params, _, _ = resolve(expid, config_dir, overrides)
        label, seed = expid, params.get("seed")
    else:
        raise UserError(f"no {result.name} beside {checkpoint}; pass --expid (and --config/--set) naming the config "
                        f"that trained it")
    return RunRef(label=str(label), params=params, checkpoint=str(checkpoint), seed=seed,
                  group=model_group(params.get("model")),
                  test=(stored.get("test") or None) if expid is None and result.is_file() else None)


# ------------------------------------------------------------------ runs from the results store
def store_runs(store_path, suite: str | None = None, run_ids=None, config_dir=None, model: str | None = None,
               overrides: dict | None = None) -> list:
    """Finished runs of the results store as :class:`RunRef` (via :mod:`.store_bridge`)."""
    from ..analysis import store_bridge

    return store_bridge.runs(store_path, suite=suite, run_ids=run_ids, config_dir=config_dir, model=model,
                             overrides=overrides)


def _single_domain(args, runs: list) -> dict:
    """Per dataset id, the Single Domain run that defines D(i,j)."""
    from mdl_bench.kernel.errors import UserError
    found: dict = {}
    if args.single_domain:
        ref = args.single_domain
        if Path(ref).expanduser().is_file():
            sd = run_from_checkpoint(ref)
        else:
            matches = store_runs(args.store, run_ids=[ref])
            sd = matches[0]
        if sd.params.get("model") != SINGLE_DOMAIN_MODEL:
            raise UserError(f"--single-domain {ref} is a {sd.params.get('model')} run, not {SINGLE_DOMAIN_MODEL}; "
                            f"pass a SingleDomain run")
        return {sd.dataset_id: sd}
    for run in runs:
        if run.params.get("model") == SINGLE_DOMAIN_MODEL:
            found.setdefault(run.dataset_id, run)
    missing = {r.dataset_id for r in runs} - set(found)
    if missing and (args.suite or args.run):
        try:
            stored = store_runs(args.store, model=SINGLE_DOMAIN_MODEL)
        except UserError:
            stored = []
        for run in reversed(stored):  # newest first
            if run.params.get("model") == SINGLE_DOMAIN_MODEL and run.dataset_id in missing:
                found.setdefault(run.dataset_id, run)
    return found


def _compare_ref(ref: str, store):
    """A run of ``--compare``: a checkpoint (config from its ``.result.json``) or a run id of the store."""
    from mdl_bench.kernel.errors import UserError
    from ..runner import RESULT_SUFFIX

    path = Path(ref).expanduser()
    if path.is_file():
        if not path.with_suffix(RESULT_SUFFIX).is_file():
            raise UserError(f"--compare: no {path.with_suffix(RESULT_SUFFIX).name} beside {path}, so its config is "
                            f"unknown; compare checkpoints written by run-expid, or stored runs by their run ids")
        return run_from_checkpoint(str(path))
    if not ref.isdigit():
        raise UserError(f"--compare: {ref} is neither a checkpoint file nor a run id (`mdl-bench runs"
                        + (f" --store {store}" if store else "") + "` lists them)")
    return store_runs(store, run_ids=[ref])[0]


def run_compare(args, options) -> int:
    """``analyze --compare A B``: figure 7 as numbers, printed, with the files beside."""
    from mdl_bench.kernel.errors import UserError
    from mdl_bench.kernel.paths import bench_home, slug
    from ..analysis.report import compare_covariance

    if args.expid or args.set or args.single_domain:
        raise UserError("--compare takes two run ids or checkpoints with their stored configs; --expid, --set and "
                        "--single-domain do not apply")
    first, second = (_compare_ref(ref, args.store) for ref in args.compare)
    out = Path(args.out).expanduser() if args.out else (
        bench_home() / "analysis" / f"compare_{slug(first.label)}_vs_{slug(second.label)}")
    report = compare_covariance(first, second, out, options)
    return _printed(compare_table(report), out / "fig7_compare.json", report["figures"], out)


def _printed(table: str, numbers: Path, figure_names, out: Path) -> int:
    """The command's tail: the table, then where the numbers and figures went."""
    print()
    print(table)
    print(f"\nnumbers: {numbers}")
    print("figures: " + ", ".join(figure_names))
    print(f"(in {out})")
    return 0


def _g(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def compare_table(report: dict) -> str:
    """Figure 7 as text: both runs, what differs, CovLoss per expert pair and its ratio, the dimension level."""
    lines = [f"Figure 7: CovLoss between experts (eq. 7 per pair: ||cov(O^p, O^q)||_1 / d^2, covariance over "
             f"{report['rows']:,} {report['split']} rows; {report['experts']} experts of width {report['width']})"]
    for tag, run in zip("AB", report["runs"]):
        where = f"run {run['run_id']}" if run["run_id"] else run["checkpoint"]
        lines.append(f"  {tag} = {run['label']} ({where}, seed {run['seed']}"
                     + (f", {run['loss']}" if run["loss"] else "") + ")")
    differences = report["differences"]
    if differences:
        lines.append("  config A -> B: " + "; ".join(differences[:8]) + (" ..." if len(differences) > 8 else ""))
    else:
        lines.append("  config A -> B: identical")
    seeds = {run["seed"] for run in report["runs"]}
    if len(seeds) > 1:
        lines.append("  note: the seeds differ; figure 7 compares the same structure and seed")
    head = f"  {'pair':>12s} {'A':>10s} {'B':>10s} {'A/B':>10s}"
    lines += ["", head, "  " + "-" * (len(head) - 2)]
    for row in report["pairs"]:
        lines.append(f"  {row['pair']:>12s} {_g(row['first']):>10s} {_g(row['second']):>10s} {_g(row['ratio']):>10s}")
    for name, key in (("sum p>=q", "total"), ("sum p>q", "total_cross")):
        row = report[key]
        lines.append(f"  {name:>12s} {_g(row['first']):>10s} {_g(row['second']):>10s} {_g(row['ratio']):>10s}")
    a, b = report["dimensions"]["first"], report["dimensions"]["second"]
    lines += ["", f"  dimension level ({a['dims']} dims){'':16s} {'A':>10s} {'B':>10s}"]
    rows = (("mean |cov| across experts", "cross_mean_abs_cov"), ("99th pct |cov| across experts", "cross_p99_abs_cov"),
            ("max |cov| across experts", "cross_max_abs_cov"), ("mean |corr| across experts", "cross_mean_abs_corr"),
            ("mean |cov| within an expert", "within_mean_abs_cov"), ("mean variance", "mean_variance"),
            ("points >= A's 99th pct", "high_cross_points"), ("dead dims (zero variance)", "dead_dims"))
    for name, key in rows:
        lines.append(f"  {name:38s} {_g(a[key]):>10s} {_g(b[key]):>10s}")
    return "\n".join(lines)


def run_command(args) -> int:
    from mdl_bench.kernel.errors import UserError
    from mdl_bench.kernel.paths import check_writable_dir, slug
    from ..analysis.report import analyze_runs

    options = options_from(args)
    options.check()
    sources = [bool(args.suite), bool(args.run), bool(args.checkpoint), bool(args.compare)]
    if sum(sources) != 1:
        raise UserError("analyze needs exactly one of --suite NAME, --run RUN_ID, --checkpoint PATH or --compare A B")
    if args.compare:
        return run_compare(args, options)
    from ..config import parse_set

    if args.checkpoint:
        runs = [run_from_checkpoint(p, args.expid, args.config, parse_set(args.set)) for p in args.checkpoint]
        name = slug(runs[0].label if len(runs) == 1 else "checkpoints")
    else:
        if args.suite and not args.store:  # the suite's own store (its `store:` key), else the default
            from ..suite import load_suite

            args.store = load_suite(args.suite, args.config).store
        runs = store_runs(args.store, suite=args.suite, run_ids=args.run, config_dir=args.config,
                          overrides=parse_set(args.set))
        if not runs:
            if args.suite:
                from ..suite.plan import load_suite, suite_command

                command = suite_command(load_suite(args.suite, args.config), "run", args.config, args.store,
                                        parse_set(args.set))
                raise UserError(f"the results store has no finished run of suite {args.suite!r}; run `{command}` "
                                f"first (or check --store, and pass the --set it ran with)")
            raise UserError("the results store has no finished run of those run ids; `mdl-bench runs"
                            + (f" --store {args.store}" if args.store else "") + "` lists the stored runs")
        name = slug(args.suite or "runs")
    single = _single_domain(args, runs)
    analysed = [r for r in runs if r.params.get("model") != SINGLE_DOMAIN_MODEL] or runs
    out = Path(args.out).expanduser() if args.out else default_out_dir(args, name)
    check_writable_dir(out, "--out" if args.out else "the analysis folder",
                       "pass --out DIR, a writable folder for analysis.json and the figures")
    missing = sorted({r.dataset_id for r in analysed} - set(single))
    for ds in missing:
        print(f"note: no Single Domain run of dataset {ds!r}, so no Diversity Index (D(i,j) of eq. 1 needs one); "
              f"add SingleDomain_default to the suite or pass --single-domain RUN_ID|CHECKPOINT")
    report = analyze_runs(analysed, single, out, options)
    return _printed(summary_table(report), out / "analysis.json", report["figures"], out)


def default_out_dir(args, name: str) -> Path:
    """The suite's analysis folder (where the HTML leaderboard looks for figures), else a named folder."""
    from mdl_bench.kernel.paths import bench_home

    if args.suite:
        from ..analysis import store_bridge

        return store_bridge.suite_analysis_dir(args.store, args.suite, args.config)
    return bench_home() / "analysis" / name


def summary_table(report: dict) -> str:
    """One line per method: group, runs, DI under both threshold rules (eq.), IA of the id tables, mean IA of the
    experts' outputs; a legend line names the two rules."""
    head = (f"{'method':28s} {'group':14s} {'runs':>4s} {'DI(q)':>7s} {'DI(fix)':>7s} {'eq':>3s} {'IA(ids)':>8s} "
            f"{'IA(experts)':>11s}")
    lines = [head, "-" * len(head)]
    equations = {}
    for run in report["runs"]:
        if run.get("diversity_index"):
            equations.setdefault(run["label"], run["diversity_index"]["equation"])

    def fmt(v, width, digits=3):
        return ("-" if v is None else f"{v:.{digits}f}").rjust(width)

    for m in report["methods"]:
        lines.append(f"{m['label'][:28]:28s} {str(m['group'] or '-')[:14]:14s} {m['runs']:>4d} {fmt(m['di'], 7)} "
                     f"{fmt(m.get('di_fixed'), 7)} {str(equations.get(m['label'], '-')):>3s} {fmt(m['ia'], 8)} "
                     f"{fmt(m['expert_ia'], 11)}")
    options = report.get("options", {})
    if options.get("tau_absolute"):
        lines.append(f"DI(q), DI(fix): tau_t / tau_b = norms {options.get('tau_top')} / {options.get('tau_bottom')} "
                     f"(--tau-absolute: both rules alike)")
    else:
        whose = "each expert's own norms" if options.get("tau_scope") != "pooled" else "the pooled norms (--tau-scope)"
        lines.append(f"DI(q): tau_t / tau_b = the {options.get('tau_top')} / {options.get('tau_bottom')} quantiles of "
                     f"{whose}; DI(fix): the same quantiles of the pooled norms of all the model's experts, one "
                     f"threshold pair per model")
    width = min(48, max([28] + [len(m["label"]) for m in report["methods"]]))  # the per-method lines below
    firsts: dict = {}
    for run in report["runs"]:
        if run.get("experts") and run["experts"].get("covloss"):
            firsts.setdefault(run["label"], run["experts"]["covloss"])
    if firsts:
        lines.append("CovLoss between experts (eq. 7, covariance over the analysis rows; every pair in analysis.json):")
    for label, cov in firsts.items():
        pairs = {k: v for k, v in cov["pairs"].items() if k.split(",")[0] != k.split(",")[1]}
        top = max(pairs, key=pairs.get) if pairs else None
        corr = cov["dimensions"]["cross_mean_abs_corr"]
        lines.append(f"  {label[:width]:{width}s} sum p>=q {_g(cov['total'])}, p>q {_g(cov['total_cross'])}"
                     + (f", largest pair ({top}) {_g(pairs[top])}" if top else "")
                     + f", mean |corr| across experts {_g(corr)}")
    terms = {}
    for run in report["runs"]:
        if run.get("loss_terms"):
            terms.setdefault(run["label"], run["loss_terms"])
    if terms:
        lines.append("Loss terms of the trained weights on the analysis rows (the auxiliary term as weighted in "
                     "training):")
    for label, t in terms.items():
        aux = ", ".join(f"{k} {_g(v)}" for k, v in t.items() if k not in ("bce", "aux_share"))
        share = t.get("aux_share")
        lines.append(f"  {label[:width]:{width}s} bce {_g(t['bce'])}, {aux}"
                     + (f" ({100 * share:.3g}% of the loss)" if share is not None else ""))
    if report.get("figure_1a"):
        lines += ["", "Figure 1a beside the paper (KuaiRand-1K: DI from its text, gAUC from its table 2; no IA numbers "
                      "there):", f"  {'method':{width}s} {'paper DI':>8s} {'DI(fix)':>7s} {'DI(q)':>7s} {'IA(ids)':>8s} "
                                 f"{'paper gAUC':>10s} {'gAUC':>7s}"]
        for row in report["figure_1a"]:
            lines.append(f"  {row['label'][:width]:{width}s} {row['paper_di'] or '-':>8s} {fmt(row['di_fixed'], 7)} "
                         f"{fmt(row['di'], 7)} {fmt(row['ia'], 8)} {fmt(row['paper_gauc'], 10, 5)} "
                         f"{fmt(row['gauc'], 7, 4)}")
    notes = {m["label"]: m["di_note"] for m in report["methods"] if m["di"] is None and m.get("di_note")}
    for label, note in notes.items():
        lines.append(f"  {label}: no DI - {note}")
    return "\n".join(lines)
