"""Run one command and record what it cost: wall seconds, peak RSS of its process tree, CPU seconds it used,
and the share of the machine's CPU time that other processes used meanwhile (a figure measured while others
were busy is not comparable with one measured on an idle machine).

    python tools/measure_cmd.py --label NAME --out results.jsonl -- COMMAND ARGS...

Appends one JSON line to ``--out`` and prints it; the command's own output goes to ``--log`` (default: inherited).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from mdl_bench.benchmark.perf.proc import _machine_jiffies, tree_usage

TICK = os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--log")
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    log = open(args.log, "ab") if args.log else None
    busy0, total0 = _machine_jiffies()
    load0 = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT if log else None)
    peak = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, tree_usage(proc.pid)[0])
        time.sleep(args.interval)
    wall = time.perf_counter() - started
    busy1, total1 = _machine_jiffies()
    ours = (usage.ru_utime + usage.ru_stime) * TICK  # the command and its reaped children
    others = max(0.0, (busy1 - busy0) - ours) / max(total1 - total0, 1)
    record = {"label": args.label, "command": " ".join(command), "returncode": os.waitstatus_to_exitcode(status),
              "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
              "peak_tree_rss_mb": round(peak / 2**20), "maxrss_mb": round(usage.ru_maxrss / 1024),
              "others_cpu_share": round(others, 3), "load_avg_1m_start": round(load0, 2),
              "load_avg_1m_end": round(os.getloadavg()[0], 2),
              "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(args.out, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(json.dumps(record))
    return record["returncode"]


if __name__ == "__main__":
    sys.exit(main())
