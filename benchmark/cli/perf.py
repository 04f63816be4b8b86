"""``mdl-bench perf`` on the command line: the parser and :func:`cmd_perf`. Building the parser (``--help``) loads
nothing heavy; the measurements (:mod:`mdl_bench.benchmark.perf.run`) are imported when the command runs."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..perf.settings import QUICK_MODELS


def cmd_perf(args) -> int:
    from mdl_bench.kernel.errors import UserError
    from ..perf.run import run_domain_scaling, run_perf
    from ..perf.settings import PerfConfig, quick_config

    over = {}
    if args.models:
        over["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.library_path:
        over["library_path"] = args.library_path
    if args.scaling:  # the whole K list also under --quick (which otherwise keeps three points)
        over.update(scaling_domains=PerfConfig.scaling_domains, scaling_steps=12 if not args.quick else 6)
        over.setdefault("models", None)  # not --quick's four: the K curve's own models unless --models names some
    cfg = quick_config(**over) if args.quick else PerfConfig(**over)
    command = "mdl-bench perf" + (f" --out {args.out}" if args.out else "") + (" --quick" if args.quick else "") + (
        f" --models {args.models}" if args.models else "") + (" --scaling" if args.scaling else "") + (
        f" --library-path {args.library_path}" if args.library_path else "")
    if args.out and not str(args.out).endswith(".json"):
        raise UserError(f"--out {args.out}: give a .json path (the Markdown report and the PNG go next to it)")
    quiet = getattr(args, "quiet", False)
    if args.scaling:
        result = run_domain_scaling(cfg, args.out, command=command,
                                    progress=None if quiet else (lambda message: print(
                                        f"[perf {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)))
        print(Path(result["files"]["markdown"]).read_text())
        print(f"wrote {result['files']['json']}, {result['files']['markdown']}")
        return 0
    result = run_perf(cfg, args.out, command=command,
                      progress=None if quiet else (lambda message: print(
                          f"[perf {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)))
    print(Path(result["files"]["markdown"]).read_text())
    print(f"wrote {result['files']['json']}, {result['files']['markdown']}"
          + (f", {result['files']['png']}" if result["files"].get("png") else ""))
    return 0


def add_parser(sub) -> None:
    """``mdl-bench perf``."""
    p = sub.add_parser("perf", help="measure training/evaluation speed against the bare loop and stock FuxiCTR")
    p.add_argument("--out", help="JSON result path; the Markdown report and the scaling PNG are written next to it "
                                 "(default $MDL_BENCH_HOME/perf/perf-<time>.json)")
    p.add_argument("--quick", action="store_true",
                   help="about 90 s: four models, fewer batches and rows, no FuxiCTR stock training or build; for "
                        "comparing this package before and after a change")
    p.add_argument("--scaling", action="store_true",
                   help="only the step time as the number of domains K grows (synthetic data; K from "
                        "scaling_domains: 2 to 64), split into the towers and the rest; Crocodile and ME-MMoE "
                        "unless --models names others; minutes (--quick: fewer rows and steps)")
    p.add_argument("--models", help="comma-separated registered models (default: all; --quick: "
                                    + ",".join(QUICK_MODELS) + ")")
    p.add_argument("--library-path", metavar="DIR",
                   help="a checkout of Scenario-Wise Rec (github.com/Xiaopengli1/Scenario-Wise-Rec): its models that "
                        "match ours are timed beside this package's training (skipped when not given)")
    p.set_defaults(func=cmd_perf)
