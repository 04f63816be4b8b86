"""Run one command and record what it cost: wall seconds, peak memory of its process tree (private and total
resident), CPU seconds it used,
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

from mdl_bench.benchmark.perf.proc import _machine_jiffies, tree_pids, tree_usage

TICK = os.sysconf("SC_CLK_TCK")


def anon_bytes(pid: int) -> int:
    """Private (anonymous + shared-memory) resident bytes: what the process itself holds. The total RSS also
    counts pages of files it maps (Polars maps the CSV files it scans), which the page cache holds anyway and
    which can sum to more than the machine's memory."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            fields = dict(line.split(":", 1) for line in fh if line.startswith(("RssAnon", "RssShmem")))
        return sum(int(v.split()[0]) for v in fields.values()) * 1024
    except (OSError, ValueError):
        return 0


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
    peak = peak_anon = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, tree_usage(proc.pid)[0])
        peak_anon = max(peak_anon, sum(anon_bytes(p) for p in tree_pids(proc.pid)))
        time.sleep(args.interval)
    wall = time.perf_counter() - started
    busy1, total1 = _machine_jiffies()
    ours = (usage.ru_utime + usage.ru_stime) * TICK  # the command and its reaped children
    others = max(0.0, (busy1 - busy0) - ours) / max(total1 - total0, 1)
    record = {"label": args.label, "command": " ".join(command), "returncode": os.waitstatus_to_exitcode(status),
              "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
              "peak_tree_anon_mb": round(peak_anon / 2**20),
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
