"""``mdl-bench analyze``: the paper's analysis (DI, IA, spectra, heatmaps) on stored runs.

Runs come from the results store (``--suite NAME``: every finished run of the suite; ``--run ID``: single runs)
or from checkpoints (``--checkpoint PATH``: the config is read from the ``.result.json`` that ``run-expid`` writes
beside it, or resolved from ``--expid``). The Diversity Index needs a Single Domain run of the same dataset
(``--single-domain RUN_ID|CHECKPOINT``; by default one of the analysed runs, else the newest one in the store).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError
from ..paths import bench_home, check_writable_dir

SINGLE_DOMAIN_MODEL = "SingleDomain"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("analyze", help="Diversity Index, Information Abundance, spectra and covariance heatmaps "
                                       "of stored runs (figures 1a, 2, 5, 6, 7)")
    src = p.add_argument_group("runs to analyse (one of)")
    src.add_argument("--suite", help="every finished run of this suite in the results store")
    src.add_argument("--run", action="append", metavar="RUN_ID", help="a stored run (repeatable)")
    src.add_argument("--checkpoint", action="append", metavar="PATH",
                     help="a checkpoint (repeatable); its config comes from the .result.json beside it or --expid")
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
                   help="quantiles of each expert's norms (per_expert, default) or of all experts' (pooled)")
    p.add_argument("--tau-absolute", dest="tau_absolute", action="store_true",
                   help="--tau-top/--tau-bottom are norms, not quantiles")
    p.add_argument("--groups", type=int, default=5, help="exposure-frequency groups of the tables (default 5)")
    p.add_argument("--fields", nargs="+", default=["user_id", "item_id"],
                   help="fields of the spectra and of the summary IA (default user_id item_id)")
    p.set_defaults(func=run_command)
    return p


def options_from(args):
    from .report import AnalysisOptions

    return AnalysisOptions(rows=args.rows, split=args.split, seed=args.seed, tau_top=args.tau_top,
                           tau_bottom=args.tau_bottom, tau_scope=args.tau_scope, tau_absolute=args.tau_absolute,
                           groups=args.groups, summary_fields=tuple(args.fields))


# ------------------------------------------------------------------ runs from checkpoints
def run_from_checkpoint(path: str, expid: str | None = None, config_dir=None, overrides: dict | None = None):
    """A :class:`RunRef` for a checkpoint: config from its ``.result.json``, else resolved from ``expid``."""
    from ..runner import RESULT_SUFFIX, resolve
    from .report import RunRef

    from .probe import read_checkpoint

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
        params = validate(stored["params"], _model_class(stored["params"].get("model")), strict=False)
        label = stored.get("expid") or params.get("model_id") or checkpoint.stem
        seed = stored.get("seed")
    elif expid is not None:
        params, _, _ = resolve(expid, config_dir, overrides)
        label, seed = expid, params.get("seed")
    else:
        raise UserError(f"no {result.name} beside {checkpoint}; pass --expid (and --config/--set) naming the config "
                        f"that trained it")
    return RunRef(label=str(label), params=params, checkpoint=str(checkpoint), seed=seed,
                  group=_group(params.get("model")))


def _model_class(model_name):
    from mdl_bench.model_zoo import registry

    return registry().get(str(model_name))


def _group(model_name) -> str | None:
    cls = _model_class(model_name)
    return getattr(cls, "group", None) if cls is not None else None


# ------------------------------------------------------------------ runs from the results store
def store_runs(store_path, suite: str | None = None, run_ids=None, config_dir=None, model: str | None = None,
               overrides: dict | None = None) -> list:
    """Finished runs of the results store as :class:`RunRef` (via :mod:`.store_bridge`)."""
    from . import store_bridge

    return store_bridge.runs(store_path, suite=suite, run_ids=run_ids, config_dir=config_dir, model=model,
                             overrides=overrides)


def _single_domain(args, runs: list) -> dict:
    """Per dataset id, the Single Domain run that defines D(i,j)."""
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


def run_command(args) -> int:
    from .report import analyze_runs, slug

    options = options_from(args)
    options.check()
    sources = [bool(args.suite), bool(args.run), bool(args.checkpoint)]
    if sum(sources) != 1:
        raise UserError("analyze needs exactly one of --suite NAME, --run RUN_ID or --checkpoint PATH")
    from ..cli import parse_set

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
            what = f"suite {args.suite!r}" if args.suite else "those run ids"
            raise UserError(f"the results store has no finished run of {what}; run `mdl-bench run --suite "
                            f"{args.suite or 'NAME'}` first (or check --store, and pass the --set it ran with)")
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
    print()
    print(summary_table(report))
    print(f"\nnumbers: {out / 'analysis.json'}")
    print("figures: " + ", ".join(report["figures"]))
    print(f"(in {out})")
    return 0


def default_out_dir(args, name: str) -> Path:
    """The suite's analysis folder (where the HTML leaderboard looks for figures), else a named folder."""
    if args.suite:
        from . import store_bridge

        return store_bridge.suite_analysis_dir(args.store, args.suite, args.config)
    return bench_home() / "analysis" / name


def summary_table(report: dict) -> str:
    """One line per method: group, runs, DI (eq.), IA of the id tables, mean IA of the experts' outputs."""
    head = f"{'method':28s} {'group':14s} {'runs':>4s} {'DI':>7s} {'eq':>3s} {'IA(ids)':>8s} {'IA(experts)':>11s}"
    lines = [head, "-" * len(head)]
    equations = {}
    for run in report["runs"]:
        if run.get("diversity_index"):
            equations.setdefault(run["label"], run["diversity_index"]["equation"])

    def fmt(v, width, digits=3):
        return ("-" if v is None else f"{v:.{digits}f}").rjust(width)

    for m in report["methods"]:
        lines.append(f"{m['label'][:28]:28s} {str(m['group'] or '-')[:14]:14s} {m['runs']:>4d} {fmt(m['di'], 7)} "
                     f"{str(equations.get(m['label'], '-')):>3s} {fmt(m['ia'], 8)} {fmt(m['expert_ia'], 11)}")
    notes = {m["label"]: m["di_note"] for m in report["methods"] if m["di"] is None and m.get("di_note")}
    for label, note in notes.items():
        lines.append(f"  {label}: no DI - {note}")
    return "\n".join(lines)
