"""The process tree of ``mdl-bench perf``, read from Linux ``/proc``: RSS, Ray processes, CPU time.

:class:`TreeSampler` samples this process's tree in a thread while a phase runs; :func:`run_child` runs a child
process to its end while sampling its tree. Elsewhere than Linux a tree is its root alone and reads as empty.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
import time
from collections import defaultdict


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    out.extend(int(c) for c in fh.read().split())
            except OSError:
                continue
    except OSError:
        pass
    return out


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants (Linux ``/proc``; just ``root`` elsewhere)."""
    seen, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(_children(pid))
    return seen


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def is_ray_process(cmdline: str) -> bool:
    """Ray's helpers: ``gcs_server``, ``raylet``, ``ray::`` workers and its Python services under ``/ray/``."""
    return any(mark in cmdline for mark in ("ray::", "/ray/", "raylet", "gcs_server"))


def tree_usage(root: int) -> tuple[int, int]:
    """``(sum of RSS in bytes, number of Ray processes)`` over ``root``'s process tree."""
    pids = tree_pids(root)
    return sum(_rss_bytes(p) for p in pids), sum(is_ray_process(_cmdline(p)) for p in pids[1:])


def _machine_jiffies() -> tuple[int, int]:
    """``(busy, total)`` CPU jiffies of the whole machine since boot (``/proc/stat``)."""
    try:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def _tree_jiffies(root: int) -> int:
    """CPU jiffies used by ``root``'s tree: each process's own time plus that of its reaped children."""
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
        except (OSError, ValueError, IndexError):
            continue
    return total


class TreeSampler:
    """Samples this process's tree every ``interval`` seconds; keeps the peak RSS sum and the most Ray processes
    seen, per phase (``with sampler.phase("name"):``), and the share of the machine's CPU time that *other*
    processes used during each phase (``others_cpu``: timings of a phase where it is high are not comparable)."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.current = "setup"
        self.peak: dict[str, int] = defaultdict(int)
        self.ray: dict[str, int] = defaultdict(int)
        self.others_cpu: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss, ray = tree_usage(os.getpid())
        self.peak[self.current] = max(self.peak[self.current], rss)
        self.ray[self.current] = max(self.ray[self.current], ray)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @contextlib.contextmanager
    def phase(self, name: str):
        before = self.current
        self._sample()
        self.current = name
        busy0, total0 = _machine_jiffies()
        ours0 = _tree_jiffies(os.getpid())
        try:
            yield
        finally:
            self._sample()
            self.current = before
            busy1, total1 = _machine_jiffies()
            others = (busy1 - busy0) - (_tree_jiffies(os.getpid()) - ours0)
            if total1 > total0:
                self.others_cpu[name] = min(1.0, max(0.0, others / (total1 - total0)))


def run_child(args: list[str], interval: float = 0.1, env: dict | None = None) -> dict:
    """Run a child process to its end, sampling its process tree: wall seconds, peak RSS sum, Ray processes."""
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    peak = ray = 0
    tick = time.perf_counter()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        rss, n_ray = tree_usage(proc.pid)
        peak, ray = max(peak, rss), max(ray, n_ray)
        time.sleep(interval)
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.seek(0)
    tail = log.read()[-3000:].decode("utf-8", "replace")
    log.close()
    return {"returncode": proc.returncode, "wall_seconds": time.perf_counter() - tick, "peak_rss_bytes": peak,
            "child_maxrss_bytes": usage.ru_maxrss * 1024, "ray_processes": ray, "log_tail": tail}
