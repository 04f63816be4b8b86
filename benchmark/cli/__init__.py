"""The ``mdl-bench`` command.

Building the parser imports nothing heavy (no torch, FuxiCTR, polars or the models), so ``mdl-bench --help`` and
``--version`` answer at once; each command imports what it uses when it runs.

Output conventions: results go to stdout, everything else (progress bars, notes, errors) to stderr. ``--quiet``
silences progress and informational logging; ``--verbose`` shows the run's INFO log on the console, which
otherwise goes only to the run's log file.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path

QUIET_ENV = "MDL_BENCH_QUIET"  # set by --quiet, read by the suite's progress bar (and inherited by its workers)

RUN_FLAGS = ("gpu", "seed", "epochs", "batch_size", "model_root", "data_root")


def run_overrides(args) -> dict:
    from ..config import parse_set

    over = parse_set(getattr(args, "set", None))
    for name in RUN_FLAGS:
        value = getattr(args, name, None)
        if value is not None and (value != "" or name not in ("model_root", "data_root")):
            over[name] = value
    return over


def run_origins(args) -> dict:
    """Where each override of :func:`run_overrides` came from (``--set`` or its flag), for error messages."""
    from ..config import parse_set

    origin = {key: "--set" for key in parse_set(getattr(args, "set", None))}
    for name in RUN_FLAGS:
        if getattr(args, name, None) is not None:
            origin[name] = "--" + name.replace("_", "-")
    return origin


def cmd_models(args) -> int:
    from mdl_bench.model_zoo import model_file, model_location, registry

    models = registry()
    width = max(len(n) for n in models)
    for name, cls in models.items():
        doc = (cls.__doc__ or cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        first = doc[0] if doc else ""
        origin = f"  (from {model_file(name)})" if model_location(name) is not None else ""
        print(f"{name.ljust(width)}  [{cls.group}]  {first}{origin}")
    return 0


def cmd_check_model(args) -> int:
    from mdl_bench.model_zoo import get_model, model_file
    from ..contract import run_contract

    get_model(args.name)
    print(f"Model contract of {args.name} ({model_file(args.name)}), expid {args.name}_test:")
    results = run_contract(args.name, args.config)
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"{'PASS' if r.passed else 'FAIL'}  {r.name.ljust(width)}  {r.message}")
    failed = [r.name for r in results if not r.passed]
    print(f"{args.name}: " + (f"FAILED ({', '.join(failed)})" if failed else f"all {len(results)} checks passed"))
    return 1 if failed else 0


MODELS_FROM_COMMANDS = ("models", "check-model", "run-expid", "run", "leaderboard", "runs", "rerun", "analyze")


FROM_COMMANDS = MODELS_FROM_COMMANDS + ("expids",)


def add_models_from_option(sub) -> None:
    """``--models-from`` on every subcommand that resolves models (repeatable; also ``$MDL_BENCH_MODELS_FROM``),
    and ``--from DIR``, one folder holding both model files and their configs."""
    for name in MODELS_FROM_COMMANDS:
        if name in sub.choices:
            sub.choices[name].add_argument(
                "--models-from", dest="models_from", action="append", metavar="DIR_OR_MODULE",
                help="also load models from this folder (<Name>.py files defining class <Name>) or module; "
                     "repeatable")
    for name in FROM_COMMANDS:
        if name in sub.choices:
            sub.choices[name].add_argument(
                "--from", dest="from_dir", metavar="DIR",
                help="a folder holding your model files and their config (model_config.yaml, dataset_config.yaml, "
                     "suites/): the same as --models-from DIR --config DIR")


def apply_from_dir(args) -> None:
    """``--from DIR``: ``DIR`` is the config folder and a models location (checked: it must be a folder)."""
    from mdl_bench.kernel.errors import UserError

    folder = getattr(args, "from_dir", None)
    if not folder:
        return
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UserError(f"--from {folder}: no such folder; pass the folder that holds your model files and "
                        f"model_config.yaml")
    config = getattr(args, "config", None)
    if config and Path(config).expanduser().resolve() != path.resolve():
        raise UserError(f"--from {folder} and --config {config} name two config folders; pass one of them (--from "
                        f"is the config folder too; use --models-from {folder} --config {config} to combine them)")
    if hasattr(args, "config"):
        args.config = folder
    if hasattr(args, "models_from"):
        args.models_from = (args.models_from or []) + [folder]


def cmd_expids(args) -> int:
    from ..config import ConfigSet

    config = ConfigSet(args.config)
    for expid in config.expids:
        block = config.models[expid]
        print(f"{expid}  (model {block.get('model', config.base.get('model', '?'))}, dataset "
              f"{block.get('dataset_id', config.base.get('dataset_id', '?'))})")
    return 0


def cmd_data_synth(args) -> int:
    from ..config import parse_set
    from ..data import synth
    from mdl_bench.kernel.paths import check_writable_dir

    options = {k: v for k, v in (("seed", args.seed), ("n_train", args.n_train), ("n_valid", args.n_valid),
                                 ("n_test", args.n_test)) if v is not None}
    options.update(parse_set(args.set))
    spec = synth.make_spec(args.preset, **options)
    out = Path(args.out).expanduser()
    fix = "pass --out DIR, a folder (new or existing) in a writable place"
    check_writable_dir(out, "--out", fix)
    check_writable_dir(out.parent, f"--out {out}: its folder", fix)  # the files are renamed in from a sibling
    meta = synth.write_raw(spec, out)
    print(f"Wrote {args.out}/{{train,valid,test}}.csv ({spec.n_train + spec.n_valid + spec.n_test:,} rows, "
          f"preset {args.preset}, seed {spec.seed})")
    for split, per_domain in meta["rows"].items():
        print(f"  {split:5s} " + "  ".join(f"domain {d}: {v['rows']:,} rows, CTR {v['ctr']:.3f}"
                                            for d, v in per_domain.items()))
    return 0


def _comma_list(text):
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


def cmd_data_kuairand(args) -> int:
    from ..data import kuairand

    kuairand.convert(args.raw_dir, args.out, release=args.release, domains=_comma_list(args.domains),
                     num_domains=args.num_domains, split=args.split, valid_days=args.valid_days,
                     test_days=args.test_days, valid_frac=args.valid_frac, test_frac=args.test_frac, seed=args.seed,
                     min_count=args.min_count, max_malformed=args.max_malformed, dataset_id=args.dataset_id)
    return 0


def cmd_data_aliccp(args) -> int:
    from ..data import aliccp

    aliccp.convert(args.raw_dir, args.out, max_rows=args.max_rows, domains=_comma_list(args.domains),
                   min_count=args.min_count, max_malformed=args.max_malformed, dataset_id=args.dataset_id)
    return 0


def cmd_data_rehearse(args) -> int:
    from ..data import rehearse

    options = {"fraction": args.fraction, "seed": args.seed}
    if args.block_rows:
        options["block_rows"] = args.block_rows
    rehearse.WRITERS[args.dataset](args.out, **options)
    return 0


def cmd_data_movielens(args) -> int:
    from ..data import movielens

    movielens.convert(args.raw_dir, args.out, split=args.split, seed=args.seed, min_count=args.min_count,
                      max_malformed=args.max_malformed, dataset_id=args.dataset_id)
    return 0


def add_convert_options(p: argparse.ArgumentParser, dataset: str) -> None:
    p.add_argument("--raw-dir", "--raw", dest="raw_dir", required=True,
                   help=f"folder holding the downloaded {dataset} files")
    p.add_argument("--out", help="output folder for train/valid/test.csv, dataset_config.yaml, stats.json (default "
                                 "$MDL_BENCH_HOME/raw/<dataset id>, the path the packaged config reads)")
    p.add_argument("--min-count", dest="min_count", type=int, default=10,
                   help="values seen fewer times in train become the default -1/__rare__ (default 10, as the paper)")
    p.add_argument("--max-malformed", dest="max_malformed", type=float, default=0.01,
                   help="largest tolerated share of malformed lines per file, skipped and reported (default 0.01)")


def cmd_run_expid(args) -> int:
    from .. import distributed
    from ..resolved import resolve_run
    from ..runner import run_resolved

    overrides, origin = run_overrides(args), run_origins(args)
    try:
        if args.quiet and "verbose" not in overrides:
            overrides["verbose"] = 0  # no progress bars (`verbose` is not part of a run's identity)
        # named by its resolved config and seed, as a suite names it: runs of one expid with other --set values
        # never share (or read back) each other's files; the config is checked before anything is written
        run = resolve_run(args.expid, args.config, overrides, origin, name_by_config=True)
        # the run's INFO log (parameters, epochs, metrics) always goes to its log file; the console gets it with -v
        result = run_resolved(run, quiet=not args.verbose)
        if distributed.current().is_main:
            print(result.table())
            print(f"wall time {result.wall_seconds:.1f}s, train time {result.train_seconds:.1f}s, "
                  f"{result.num_parameters:,} parameters; checkpoint {result.checkpoint}")
    finally:
        distributed.shutdown()
    return 0


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config folder (default: the packaged config/)")
    p.add_argument("--gpu", type=int, help="GPU index, -1 for CPU (overrides the config)")
    p.add_argument("--seed", type=int, help="random seed (overrides the config)")
    p.add_argument("--epochs", type=int, help="maximum epochs (overrides the config)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="batch size (overrides the config)")
    p.add_argument("--model-root", help="where checkpoints and logs go (default $MDL_BENCH_HOME/checkpoints)")
    p.add_argument("--data-root", help="where built datasets go (default $MDL_BENCH_HOME/data)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key (YAML value)")


def _add_data_parsers(sub) -> None:
    """``mdl-bench data synth|kuairand|aliccp|rehearse|movielens``."""
    data = sub.add_parser("data", help="generate or convert datasets").add_subparsers(dest="data_command",
                                                                                        required=True,
                                                                                        metavar="SOURCE")
    p = data.add_parser("synth", help="write a seeded synthetic multi-domain dataset (raw CSV files)")
    p.add_argument("--preset", default="kuairand_like",
                   help="kuairand_like (default), aliccp_like or conflict_like (domain taste in the id factors too)")
    p.add_argument("--out", required=True, help="output folder for train.csv, valid.csv, test.csv")
    p.add_argument("--seed", type=int)
    p.add_argument("--n-train", dest="n_train", type=int)
    p.add_argument("--n-valid", dest="n_valid", type=int)
    p.add_argument("--n-test", dest="n_test", type=int)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any generator option (YAML value)")
    p.set_defaults(func=cmd_data_synth)
    p = data.add_parser("kuairand", help="convert KuaiRand (1K, Pure or 27K) raw files into a multi-domain dataset")
    add_convert_options(p, "KuaiRand")
    p.add_argument("--release", default="1k", choices=["1k", "pure", "27k"], help="which release (default 1k)")
    p.add_argument("--domains", help="tab values to keep, comma-separated (default: the --num-domains largest)")
    p.add_argument("--num-domains", dest="num_domains", type=int, default=5, help="number of tabs (default 5)")
    p.add_argument("--split", default="time", choices=["time", "random"],
                   help="time: last --test-days are test, the --valid-days before valid (default); random: by row")
    p.add_argument("--valid-days", dest="valid_days", type=int, default=3)
    p.add_argument("--test-days", dest="test_days", type=int, default=3)
    p.add_argument("--valid-frac", dest="valid_frac", type=float, default=0.1, help="random split only")
    p.add_argument("--test-frac", dest="test_frac", type=float, default=0.1, help="random split only")
    p.add_argument("--seed", type=int, default=2024, help="random split only")
    p.add_argument("--dataset-id", dest="dataset_id", help="id of the written config block (default kuairand1k, "
                                                           "kuairand_pure or kuairand27k)")
    p.set_defaults(func=cmd_data_kuairand)
    p = data.add_parser("aliccp", help="convert AliCCP raw files (streamed) into a multi-domain dataset")
    add_convert_options(p, "AliCCP")
    p.add_argument("--max-rows", dest="max_rows", type=int, help="read at most N lines of each skeleton file")
    p.add_argument("--domains", help="raw field-301 ids to keep, comma-separated, in the order of S1..SK "
                                     "(default: all, ascending)")
    p.add_argument("--dataset-id", dest="dataset_id", default="aliccp", help="id of the written config block")
    p.set_defaults(func=cmd_data_aliccp)
    p = data.add_parser("rehearse", help="write random raw files in KuaiRand-1K's or AliCCP's published format, at "
                                         "their real sizes or a fraction (to rehearse conversion and training)")
    p.add_argument("dataset", choices=["kuairand", "aliccp"])
    p.add_argument("--out", required=True, help="folder for the raw files (then: mdl-bench data DATASET --raw-dir)")
    p.add_argument("--fraction", type=float, default=1.0,
                   help="share of the real row counts, in (0, 1] (default 1: KuaiRand-1K 11.7M log rows, 4.4M "
                        "videos; AliCCP 85.3M skeleton lines, about 47 GB)")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--block-rows", dest="block_rows", type=int, help="rows drawn and written at a time")
    p.set_defaults(func=cmd_data_rehearse)
    p = data.add_parser("movielens", help="convert MovieLens-1M raw files (ratings/users/movies.dat) into three "
                                          "domains by age")
    add_convert_options(p, "MovieLens-1M")
    p.add_argument("--split", default="random", choices=["random", "time"],
                   help="random: 80/10/10 by a seeded hash (default); time: global timestamp cut at 80%%/90%%")
    p.add_argument("--seed", type=int, help="random split only (default 2024)")
    p.add_argument("--dataset-id", dest="dataset_id", default="movielens1m", help="id of the written config block")
    p.set_defaults(func=cmd_data_movielens)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdl-bench", description="Multi-domain CTR benchmark on FuxiCTR.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("models", help="list registered models")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("expids", help="list the experiment ids of a config folder")
    p.add_argument("--config", help="config folder (default: the packaged config/)")
    p.set_defaults(func=cmd_expids)
    p = sub.add_parser("check-model", help="run the model contract (shapes, gradients, one step, checkpoint) on "
                                           "tiny data; exit 1 if a check fails")
    p.add_argument("name", help="model name (class name), e.g. one from --models-from")
    p.add_argument("--config", help="config folder holding <NAME>_test (layered over the packaged config/)")
    p.set_defaults(func=cmd_check_model)
    p = sub.add_parser("run-expid", help="train and evaluate one experiment id")
    p.add_argument("--expid", required=True, help="experiment id in model_config.yaml")
    add_run_options(p)
    p.set_defaults(func=cmd_run_expid)
    _add_data_parsers(sub)
    from .analysis import add_parser as add_analyze_parser

    add_analyze_parser(sub)  # `mdl-bench analyze`
    from .suite import add_commands as add_suite_commands

    add_suite_commands(sub)  # `mdl-bench run`, `leaderboard`, `runs`, `rerun`
    from .perf import add_parser as add_perf_parser

    add_perf_parser(sub)  # `mdl-bench perf`
    add_models_from_option(sub)
    add_global_options(parser, sub)
    return parser


def package_version() -> str:
    """The installed distribution's version (package metadata), or ``unknown`` when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version("mdl-bench")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _add_verbosity(p: argparse.ArgumentParser, default) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="print results and errors only: no progress bars, no informational messages")
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="also show the run's INFO log on the console (it always goes to the run's log file)")


def add_global_options(parser: argparse.ArgumentParser, sub) -> None:
    """``--version``, and ``--quiet``/``--verbose`` both before the command and after it (``mdl-bench -q run ...``
    and ``mdl-bench run ... -q`` are the same)."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    _add_verbosity(parser, False)
    subparsers = [sub]
    while subparsers:
        for p in subparsers.pop().choices.values():
            _add_verbosity(p, argparse.SUPPRESS)  # SUPPRESS: unset after the command keeps the value given before
            subparsers += [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]


def main(argv=None) -> int:
    # Third-party chatter (polars/fuxictr deprecations) would bury our one-line messages; silenced for this
    # command only, not for a program that imports the package.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        return _main(argv)


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from mdl_bench.kernel.errors import UserError  # after parsing: --help and --version import nothing heavy

    try:
        set_verbosity(args)
        apply_from_dir(args)
        return _dispatch(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        from ..store import release_all

        release_all()  # every store closed, no -wal/-shm files left beside it


def set_verbosity(args) -> None:
    """Console logging: warnings only by default, INFO with ``--verbose``, errors only with ``--quiet``; progress
    bars off with ``--quiet`` (in this process and the worker processes it starts)."""
    import logging

    level = logging.ERROR if args.quiet else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger().setLevel(level)
    if args.quiet:
        os.environ[QUIET_ENV] = "1"
    else:
        os.environ.pop(QUIET_ENV, None)


def _dispatch(args) -> int:
    from mdl_bench.kernel.errors import UserError

    try:
        from mdl_bench.kernel.paths import HOME_ENV, bench_home

        if bench_home().exists() and not bench_home().is_dir():
            raise UserError(f"{HOME_ENV}={bench_home()} is a file, not a folder; point {HOME_ENV} at a folder (it "
                            f"holds the data, checkpoints and results stores)")
        if getattr(args, "models_from", None):
            from mdl_bench.model_zoo import ENV_VAR, add_models_from

            added = add_models_from(args.models_from)
            # processes this command starts (--nproc ranks, workers) inherit the locations through the environment
            known = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
            os.environ[ENV_VAR] = os.pathsep.join(dict.fromkeys(known + added))
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as other CLI tools do
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # what no check foresaw (a full disk, a path /proc refuses): one line, not a traceback
        what = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {UserError(what + (exc.strerror or str(exc)))}; check that path, its permissions and the "
              f"free space, then run again", file=sys.stderr)
        return 2

