"""``mdl-bench run``, ``leaderboard``, ``runs`` and ``rerun``: the suite subcommands (wired in by ``cli.py``)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Nothing heavy at import time: `mdl-bench --help` builds this module's parsers without loading torch or the models.


def _overrides(args) -> dict:
    """``--set`` and ``--nproc``: the same on ``run``, ``leaderboard`` and ``runs``, so they find the same runs."""
    from mdl_bench.kernel.errors import UserError
    from ..config import parse_set

    overrides = parse_set(getattr(args, "set", None))
    nproc = getattr(args, "nproc", None)
    if nproc is not None:
        if nproc < 1:
            raise UserError(f"--nproc must be a positive number of processes, got {nproc}")
        overrides["nproc"] = nproc
    return overrides


def _reports_dir(suite) -> Path:
    from mdl_bench.kernel.paths import bench_home

    return bench_home() / "reports" / suite.name


def print_leaderboard(suite, store=None, config_dir=None, fmt: str = "md", out_file: str | None = None,
                      metrics=None, split=None, std=None, lift_base=None, stdout=None, reference=None,
                      extra_overrides: dict | None = None) -> None:
    from mdl_bench.kernel.errors import UserError
    from ..leaderboard import build_board, make_plots, render
    from mdl_bench.kernel.paths import check_writable_dir, check_writable_file, emit_report

    stdout = stdout or sys.stdout
    target = Path(out_file).expanduser() if out_file else None
    if target is not None:  # checked before the store is read, so nothing is computed for nothing
        check_writable_file(target, "--out", "pass --out FILE in a writable folder, or leave --out out to print")
    plots = fmt in ("md", "html")
    if target is None and plots and suite.leaderboard["plots"]:
        try:
            check_writable_dir(_reports_dir(suite), "the plot folder", "pass --out FILE in a writable folder for "
                                                                        "the plots")
        except UserError as exc:  # reading a store must work on a read-only machine: the table, without plots
            print(f"note: {exc}; printing the table without its plots", file=sys.stderr)
            plots = False
    if suite.tuner is not None:  # a tuning suite: its trials and the chosen values, not a leaderboard
        from ..leaderboard.budget import budget_curves, plot_budget
        from ..leaderboard.tuning import build_tuning, render_tuning

        tuned = build_tuning(suite, store, config_dir, extra_overrides)
        images = {}
        if fmt == "md" and target is not None:  # the plot beside the report
            png = plot_budget(budget_curves(tuned), target.parent / f"{target.stem}_budget.png")
            if png is not None:
                images = {"budget curves": png.name}
        text = render_tuning(tuned, suite, fmt, images, config_dir)
    else:
        board = build_board(suite, store=store, config_dir=config_dir, metrics=metrics, split=split, std=std,
                            lift_base=lift_base, extra_overrides=extra_overrides, reference=reference)
        images = make_plots(board, target.parent if target else _reports_dir(suite)) if plots else {}
        if target is not None and fmt == "md":  # relative image links next to the Markdown file
            images = {k: Path(v).name for k, v in images.items()}
        text = render(board, fmt, images)
    emit_report(text, target, stdout, f" and {len(images)} plot(s) beside it" if images else "")


def cmd_run(args) -> int:
    from mdl_bench.kernel.errors import UserError
    from ..suite import run_suite

    suite = _load_suite(args)
    started = time.time()
    overrides = _overrides(args)
    if args.nproc is not None and args.nproc > 1 and args.jobs > 1:
        raise UserError("--nproc and --jobs both split the cores; use one of them")
    outcome = run_suite(suite, config_dir=args.config, store=args.store, jobs=args.jobs,
                        extra_overrides=overrides, dry_run=args.dry_run)
    if args.dry_run:
        return 0
    elapsed = time.time() - started
    rerun_outdated = sum(1 for r in outcome.outdated if r in outcome.stored_now)
    print(f"Suite {suite.name}: {len(outcome.stored_now)} runs stored now"
          f"{f' ({rerun_outdated} of them in place of outdated runs)' if rerun_outdated else ''}, "
          f"{outcome.stored_before} were stored already, {len(outcome.stored_elsewhere)} stored by another process, "
          f"{len(outcome.failed)} failed ({elapsed:.0f}s).")
    for run, message in outcome.failed:
        print(f"  FAILED {run.describe()}: {message} (log: {run.log_file})")
    if not args.no_leaderboard:
        print()
        print_leaderboard(suite, store=args.store, config_dir=args.config, fmt="md", extra_overrides=overrides)
    return 1 if outcome.failed else 0


def cmd_leaderboard(args) -> int:
    from ..suite import load_suite

    if not args.suite:  # every stored run of the store, grouped by dataset and expid
        from ..leaderboard.store_view import print_store_view

        print_store_view(args.store, config_dir=args.config, fmt=args.format, out_file=args.out,
                         metrics=args.metric, split=args.split, std=args.std)
        return 0
    suite = _load_suite(args)
    print_leaderboard(suite, store=args.store, config_dir=args.config, fmt=args.format, out_file=args.out,
                      metrics=args.metric, split=args.split, std=args.std or None, lift_base=args.lift_base,
                      reference=args.reference,
                      extra_overrides=_overrides(args))
    return 0


def cmd_runs(args) -> int:
    from mdl_bench.kernel.errors import UserError
    from ..codeid import code_fingerprint
    from ..store import Store

    if args.suite:
        suite = _load_suite(args)
        plan = suite.plan(args.config, _overrides(args), strict=False)
        db = Store(args.store or suite.store, create=False)
        plan.catch_up(db)
        by_config = db.stored_by_config()
        # every stored revision of the suite's runs: the current ones and the outdated ones
        ids = sorted({rid for r in plan.unique_runs() for rid, _, _ in by_config.get(r.key[:2], [])})
        rows = db.list_runs(ids)
        current = {r.key for r in plan.unique_runs()}
        missing = len(current - set(db.stored_keys()))
    else:
        db = Store(args.store, create=False)
        rows, missing, current = db.list_runs(), 0, None
    try:
        metrics = db.metrics_of([r["run_id"] for r in rows])
    finally:
        db.close()

    def code_state(r) -> str:
        if current is not None:
            return "current" if (r["config_hash"], r["seed"], r["code_fingerprint"]) in current else "outdated"
        try:
            now = code_fingerprint(r["model"], r.get("models_from")).digest
        except UserError:
            return "?"  # the model cannot be imported here
        return "current" if now == r["code_fingerprint"] else "outdated"

    print(f"{'run':>5}  {'expid':32s} {'seed':>6}  {'hash':8s}  {'code':8s} {'':8s}  {'commit':7s}  {'test AUC':>8}  "
          f"{'gAUC':>8}  {'best ep':>7}  {'train s':>8}  finished")
    for r in rows:
        test = metrics[r["run_id"]].get("test", {})
        print(f"{r['run_id']:>5}  {r['expid']:32s} {r['seed']:>6}  {r['config_hash'][:8]}  "
              f"{(r['code_fingerprint'] or 'unknown')[:8]:8s} {code_state(r):8s}  {(r['git_commit'] or '-')[:7]:7s}  "
              f"{test.get('AUC', float('nan')):8.4f}  {test.get('gAUC', float('nan')):8.4f}  "
              f"{r['best_epoch'] if r['best_epoch'] is not None else '-':>7}  {r['train_seconds'] or 0:8.1f}  "
              f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(r['finished_at']))}")
    rerun_hint = "running its suite again reruns it"
    if args.suite:
        from ..suite.plan import suite_command

        rerun_hint = f"`{suite_command(suite, 'run', args.config, args.store, _overrides(args))}` reruns it"
    print("(code: fingerprint of the code that made the run; outdated: the model's code, the layers it uses or the "
          f"run path changed since, so {rerun_hint})")
    if missing:
        print(f"({missing} runs of the suite are not stored for the current code yet)")
    return 0


def cmd_rerun(args) -> int:
    from ..suite import rerun

    return 0 if rerun(args.run_id, store=args.store) else 1


def _dataset_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", action="append", metavar="DATASET_ID",
                   help="run the suite on this dataset block instead of its `datasets` (repeatable), e.g. "
                        "`run --suite tune --dataset my_data` tunes every row on your data")
    p.add_argument("--tuner", action="append", metavar="KEY=VALUE",
                   help="a tuning suite's `tuner` setting for this search, e.g. `--tuner budget=64` on data "
                        "whose runs converge late (the same for every row; repeatable)")


def _load_suite(args):
    """The suite of ``--suite``, on the datasets of ``--dataset`` when given."""
    from ..suite import load_suite

    suite = load_suite(args.suite, args.config)
    if getattr(args, "dataset", None):
        suite.datasets = [str(d) for d in args.dataset]
    if getattr(args, "tuner", None):
        from mdl_bench.kernel.errors import UserError
        from ..config import parse_set

        if suite.tuner is None:
            raise UserError(f"--tuner: {suite.where} has no `tuner:` block, so it is not a tuning suite; drop --tuner")
        suite.tuner = suite.tuner.with_settings(parse_set(args.tuner), f"{suite.where} with --tuner")
    return suite


def _add_variant_options(p: argparse.ArgumentParser) -> None:
    _dataset_option(p)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="the overrides the suite was run with (`run --set`), to find those runs")
    p.add_argument("--nproc", type=int, help="the --nproc the suite was run with, to find those runs")


def add_commands(sub) -> None:
    """Add the suite subcommands to the ``mdl-bench`` parser's subparsers."""
    store_help = "results store (SQLite file; default the suite's `store`, else ${MDL_BENCH_HOME}/results.sqlite)"
    p = sub.add_parser("run", help="run a benchmark suite into the results store, then print its leaderboard")
    p.add_argument("--suite", required=True, help="suite name (config/suites/NAME.yaml) or path to a suite file")
    p.add_argument("--store", help=store_help)
    p.add_argument("--config", help="config folder (default: the packaged config/); its suites/ are found by name")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own worker process (default 1)")
    p.add_argument("--nproc", type=int, help="train each run data-parallel in N processes on this machine (DDP; "
                                             "sets `nproc: N` in every run's config, so the runs get new hashes)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key of every run (YAML value; changes the runs' hashes)")
    _dataset_option(p)
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether they are stored; run nothing")
    p.add_argument("--no-leaderboard", action="store_true", help="do not print the leaderboard at the end")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("leaderboard", help="the paper-style table of a suite's stored runs; without --suite, every "
                                           "stored run of the store grouped by dataset and expid")
    p.add_argument("--suite", help="suite name or path (default: every run in the store, grouped by dataset and "
                                   "expid)")
    p.add_argument("--store", help=store_help)
    p.add_argument("--config", help="config folder (default: the packaged config/)")
    p.add_argument("--format", choices=("md", "csv", "html"), default="md", help="output format (default md)")
    p.add_argument("--metric", action="append", help="column metric (repeatable; default the suite's, AUC and gAUC)")
    p.add_argument("--split", choices=("test", "valid"), help="split (default the suite's, test)")
    p.add_argument("--std", action="store_true", help="also show the standard deviation over seeds in every cell")
    p.add_argument("--reference", help="the row every other row is compared with (label or expid; 'none' for no "
                                       "comparisons); default: the suite's `reference`, else Shared Bottom")
    p.add_argument("--lift-base", help="also a lift table over this row (label or expid)")
    p.add_argument("--out", help="write to this file (plots beside it) instead of printing")
    _add_variant_options(p)
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("runs", help="list stored runs (their ids are what `rerun` takes)")
    p.add_argument("--suite", help="only this suite's runs")
    p.add_argument("--store", help=store_help)
    p.add_argument("--config", help="config folder (default: the packaged config/)")
    _add_variant_options(p)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("rerun", help="rerun a stored run from its stored config alone and compare every metric")
    p.add_argument("run_id", type=int, help="run id (see `mdl-bench runs`)")
    p.add_argument("--store", help="results store (default ${MDL_BENCH_HOME}/results.sqlite)")
    p.set_defaults(func=cmd_rerun)
