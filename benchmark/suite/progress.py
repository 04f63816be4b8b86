"""What a suite shows and counts while it runs: one progress bar over every pending run's epochs, the outcome
(stored now, stored by another process, failed) and the line printed for a finished run."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .plan import Plan, PlannedRun


class SuiteProgress:
    """One tqdm bar over every pending run's epochs: the current run(s), the epoch, elapsed and ETA."""

    def __init__(self, runs: list, stream=None, disable: bool = False):
        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no monitor thread (worker processes are started while the bar exists)
        self.runs = {r.key: (i + 1, r) for i, r in enumerate(runs)}
        self.count = len(runs)
        self.done_units = 0.0
        self.current: dict[tuple, float] = {}
        self.epoch_of: dict[tuple, int] = {}
        self.stream = stream or sys.stderr
        self.quiet = disable or os.environ.get("MDL_BENCH_QUIET") == "1"  # `mdl-bench --quiet`: no bar, no lines
        disable = self.quiet
        self.bar = tqdm(total=float(sum(r.epochs for r in runs)) or 1.0, file=self.stream, disable=disable,
                        dynamic_ncols=True, mininterval=0.5, smoothing=0.05,
                        bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.1f}/{total:.0f} epochs "
                                   "[{elapsed}<{remaining}]")
        self._refresh()

    def _refresh(self) -> None:
        n = min(self.done_units + sum(self.current.values()), self.bar.total)
        if self.current:
            parts = []
            for key in self.current:
                i, run = self.runs[key]
                epoch = self.epoch_of.get(key)
                stage = f"epoch {epoch + 1}/{run.epochs}" if epoch is not None else "loading"
                parts.append(f"run {i}/{self.count} {run.expid} seed {run.seed} {stage}")
            desc = "; ".join(parts)
        else:
            desc = f"{self.count} runs"
        self.bar.set_description_str(desc, refresh=False)
        self.bar.update(n - self.bar.n)
        self.bar.refresh()

    def add(self, runs: list) -> None:
        """Runs planned while the suite runs (a tuning row's next trial): counted and added to the bar."""
        for run in runs:
            if run.key not in self.runs:
                self.count += 1
                self.runs[run.key] = (self.count, run)
                self.bar.total += run.epochs
        self._refresh()

    def started(self, key) -> None:
        self.current[key] = 0.0
        self._refresh()

    def step(self, key, info: dict) -> None:
        _, run = self.runs[key]
        batches = max(1, int(info.get("batches") or 1))
        self.epoch_of[key] = int(info["epoch"])
        self.current[key] = min(float(run.epochs), info["epoch"] + (info["batch"] + 1) / batches)
        if info["batch"] % 5 == 0 or info["batch"] + 1 == batches:
            self._refresh()

    def finished(self, key, line: str | None = None) -> None:
        _, run = self.runs[key]
        self.current.pop(key, None)
        self.done_units += run.epochs
        if line and not self.quiet:  # a failed run is also reported by the command's summary
            self.bar.write(line, file=self.stream)
        self._refresh()

    def write(self, line: str) -> None:
        if not self.quiet:
            self.bar.write(line, file=self.stream)

    def close(self) -> None:
        self.bar.close()



@dataclass
class SuiteOutcome:
    plan: Plan
    store_path: Path
    stored_before: int = 0
    outdated: list = field(default_factory=list)  # pending runs whose config and seed are stored by other code
    stored_now: list = field(default_factory=list)
    stored_elsewhere: list = field(default_factory=list)
    failed: list = field(default_factory=list)


def result_line(index: int, count: int, run: PlannedRun, run_id, result, split: str = "test") -> str:
    if not getattr(result, split) and result.valid:  # a tuning trial: the test split is not evaluated
        split = "valid"
    logs = getattr(result, split)
    values = " ".join(f"{m} {logs[m]:.4f}" for m in ("AUC", "gAUC") if m in logs)
    where = f"stored as run {run_id}" if run_id is not None else "already stored by another process"
    stopped = f" ({result.stopped_by})" if getattr(result, "stopped_by", None) else ""
    return (f"[{index}/{count}] {run.variant.label} ({run.expid}) seed {run.seed}: {split} {values}{stopped}; "
            f"{result.wall_seconds:.0f}s; {where}")
