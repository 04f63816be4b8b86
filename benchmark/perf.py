"""``mdl-bench perf``: how fast this package trains, against its own ceiling and against stock FuxiCTR.

One command run measures, with medians over repeats (ratios first: absolute times drift on shared machines):

* **models**: every registered model at its ``<Name>_default`` sizes on the default data (batch 4096, embedding
  16). *Real* throughput goes through the package's training path as ``run-expid`` uses it (``make_loaders``,
  ``model.fit``/``train_epoch``, bounded to a number of batches per epoch; evaluation time excluded); the *bare*
  loop (zero_grad, forward + loss, backward, clip, optimiser step on batches already in memory) is its ceiling.
  A step is split into data / forward / backward / optimiser time; evaluation samples/s; the process tree's
  peak memory.
* **covloss**: CovLoss's share of a Crocodile step, on all rows and on 32 sampled rows, and Crocodile's step
  against ME-MMoE's at the same number of tables M.
* **stock**: FuxiCTR 2.3.10's stock pipeline (``RankDataLoader`` -> its Ray-Data parquet loader, ``BaseModel.fit``)
  on a DNN and an MMoE built from FuxiCTR's layers, in a child process, against the same architectures through
  this package's path (full epochs of the default data on both sides).
* **gauc**: :func:`metrics.gauc_score` against ``fuxictr.metrics`` gAUC on 1M rows / 10k users (values must agree
  to 1e-9); **build**: this package's dataset build against ``fuxictr.preprocess.build_dataset`` on the same 1M
  raw rows, each in its own child process (time and peak memory of its process tree); **ray**: Ray processes
  seen on the default path (must be 0).
* **scaling**: step time and its parts as the number of tables M goes 1 -> 8 (Crocodile, ME-MMoE) and the number
  of domains K 2 -> 16 (synthetic data with K domains), printed and plotted.

Results go to a JSON file, a Markdown report next to it (also printed) and a PNG of the scaling curves.
``--quick`` (under two minutes) keeps four models, fewer batches and rows, and skips the FuxiCTR runs that take
minutes (stock training, FuxiCTR's build): its output is for comparing this package before and after a change.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mdl_bench.model_zoo.core import allocator
from mdl_bench.model_zoo.core.errors import UserError
from .paths import bench_home

MB = 1024 * 1024


# ============================================================================================== configuration
@dataclass
class PerfConfig:
    """What one ``perf`` run measures and how much.

    Args:
        models: registered model names (``None``: all).
        expid_suffix: the expid of model ``X`` is ``X + expid_suffix`` (``_default``: the paper-like sizes).
        dataset_id: run every expid on this dataset instead of its own (``None``: the expid's, kuairand_like).
        batches, repeats: training batches per measured epoch (at least; see ``min_epoch_seconds``), and epochs
            (= bare passes) measured per model.
        min_epoch_seconds: a fast model gets more batches per measured epoch, up to about this many seconds, so
            that per-epoch costs (a new permutation, the loop's set-up) are amortised as in a real epoch (~100
            batches of the default data) rather than over a handful of batches.
        eval_batches: test batches of the evaluation measurement.
        cov_repeats: repeats of the direct CovLoss forward+backward timing.
        matched_batches: batches per epoch of the matched DNN/MMoE runs (``None``: full epochs, as the stock side).
        matched_epochs: epochs of the matched runs, on both sides.
        stock: run FuxiCTR's stock pipeline (a child process with Ray; minutes).
        stock_bare_batches: batches of the stock models' bare loop.
        gauc_rows, gauc_users: size of the gAUC comparison.
        build_rows: raw rows (train 80%, valid 10%, test 10%) of the build comparison.
        build_fuxictr: also run FuxiCTR's build_dataset (minutes; Ray) on them.
        scaling_tables, scaling_domains: the M and K values of the scaling curves.
        scaling_fixed_tables: M of the K curve.
        scaling_steps: measured steps per scaling point.
        scaling_rows: training rows of each K-domain synthetic dataset.
        quick: recorded in the output (set by :func:`quick_config`).
    """

    models: list[str] | None = None
    expid_suffix: str = "_default"
    dataset_id: str | None = None
    batches: int = 10
    repeats: int = 3
    min_epoch_seconds: float = 2.0
    eval_batches: int = 10
    cov_repeats: int = 10
    matched_batches: int | None = None
    matched_epochs: int = 3
    stock: bool = True
    stock_bare_batches: int = 10
    gauc_rows: int = 1_000_000
    gauc_users: int = 10_000
    build_rows: int = 1_000_000
    build_fuxictr: bool = True
    scaling_tables: Sequence[int] = (1, 2, 4, 8)
    scaling_domains: Sequence[int] = (2, 4, 8, 16)
    scaling_fixed_tables: int = 4
    scaling_steps: int = 8
    scaling_rows: int = 40_000
    quick: bool = False


QUICK_MODELS = ["Crocodile", "ME_MMoE", "MMoE", "SharedBottom"]


def quick_config(**overrides) -> PerfConfig:
    """The ``--quick`` settings: about 90 s on 2 cores; no stock FuxiCTR training and no FuxiCTR build."""
    values = dict(models=list(QUICK_MODELS), batches=4, repeats=2, min_epoch_seconds=0.8, eval_batches=4,
                  cov_repeats=5,
                  matched_batches=4, matched_epochs=2, stock=False, gauc_rows=300_000, gauc_users=3_000,
                  build_rows=100_000, build_fuxictr=False, scaling_tables=(1, 4, 8), scaling_domains=(2, 8, 16),
                  scaling_steps=3, scaling_rows=20_000, quick=True)
    values.update(overrides)
    return PerfConfig(**values)


# ============================================================================================== process tree
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


def _stock_task(task: str, spec: dict, work: Path) -> dict:
    """Run one task of :mod:`perf_stock` in a child process; its JSON result plus the tree measurements."""
    spec_path, out_path = work / f"{task}.spec.json", work / f"{task}.out.json"
    spec_path.write_text(json.dumps(spec))
    child = run_child([sys.executable, "-m", "mdl_bench.benchmark.perf_stock", task, str(spec_path), str(out_path)])
    if child["returncode"] != 0 or not out_path.exists():
        raise RuntimeError(f"perf child {task!r} failed (exit {child['returncode']}):\n{child['log_tail']}")
    result = json.loads(out_path.read_text())
    result.update({k: child[k] for k in ("wall_seconds", "peak_rss_bytes", "child_maxrss_bytes", "ray_processes")})
    return result


# ============================================================================================== timing helpers
def _now(device=None) -> float:
    if device is not None and getattr(device, "type", "cpu") == "cuda":
        import torch

        torch.cuda.synchronize(device)
    return time.perf_counter()


def median(values) -> float:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else float("nan")


class FirstBatches:
    """The first ``n`` batches of a loader, as a loader (``len``, ``set_epoch`` and the rest pass through)."""

    def __init__(self, loader, n: int | None):
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return len(self.loader) if self.n is None else min(self.n, len(self.loader))

    def __iter__(self):
        return itertools.islice(iter(self.loader), len(self))

    def __getattr__(self, name):
        return getattr(self.loader, name)


class EpochTimer:
    """Wraps a model's ``train_epoch`` and ``eval_step`` (instance attributes, so ``fit`` calls them): the
    seconds and rows of every epoch, evaluation time excluded."""

    def __init__(self, model):
        self.model = model
        self.seconds: list[float] = []
        self.rows: list[int] = []
        self._eval = 0.0
        plain_eval, plain_epoch = model.eval_step, model.train_epoch

        def eval_step():
            tick = time.perf_counter()
            plain_eval()
            self._eval += time.perf_counter() - tick

        def train_epoch(generator):
            eval_before, rows_before = self._eval, getattr(model, "train_rows", 0)
            tick = _now(model.device)
            plain_epoch(generator)
            self.seconds.append(_now(model.device) - tick - (self._eval - eval_before))
            self.rows.append(getattr(model, "train_rows", 0) - rows_before)

        model.eval_step, model.train_epoch = eval_step, train_epoch

    def samples_per_second(self) -> list[float]:
        return [r / s for r, s in zip(self.rows, self.seconds) if s > 0]


@contextlib.contextmanager
def _silent():
    """Training prints tqdm bars to stdout (``verbose: 1``, as run-expid); keep them out of the report."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def _rows(batch: dict) -> int:
    return int(next(iter(batch.values())).shape[0])


def bare_loop(model, batches: list[dict], max_norm: float = 10.0) -> list[float]:
    """The ceiling: zero_grad, forward + loss, backward, clip, optimiser step on in-memory batches.

    Returns the seconds of each step."""
    import torch

    times = []
    model.train()
    for batch in batches:
        tick = _now(model.device)
        model.optimizer.zero_grad()
        out = model(batch)
        loss = model.compute_loss(out, model.get_labels(batch))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        model.optimizer.step()
        times.append(_now(model.device) - tick)
    return times


def split_steps(model, batch_source, n: int, max_norm: float = 10.0) -> dict[str, float]:
    """Median milliseconds of data (next batch), forward (+ loss), backward and optimiser (zero_grad, clip, step)
    over ``n`` steps; ``batch_source`` is a loader (data time measured) or a list of in-memory batches."""
    import torch

    parts: dict[str, list[float]] = defaultdict(list)
    iterator = iter(batch_source)
    model.train()
    for _ in range(n):
        t0 = _now(model.device)
        try:
            batch = next(iterator)
        except StopIteration:
            break
        t1 = _now(model.device)
        model.optimizer.zero_grad()
        t2 = _now(model.device)
        out = model(batch)
        loss = model.compute_loss(out, model.get_labels(batch))
        t3 = _now(model.device)
        loss.backward()
        t4 = _now(model.device)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        model.optimizer.step()
        t5 = _now(model.device)
        parts["data"].append(t1 - t0)
        parts["forward"].append(t3 - t2)
        parts["backward"].append(t4 - t3)
        parts["optimizer"].append((t2 - t1) + (t5 - t4))
        parts["step"].append(t5 - t0)
    return {k: 1000 * median(v) for k, v in parts.items()}


# ============================================================================================== models
def _base_overrides(cfg: PerfConfig, work: Path) -> dict:
    over = {"model_root": str(work / "checkpoints"), "early_stop_patience": 10 ** 6}
    if cfg.dataset_id:
        over["dataset_id"] = cfg.dataset_id
    return over


def _prepare(expid: str, overrides: dict):
    """Resolved params, model class, built paths and feature map of ``expid`` (the dataset built if needed)."""
    from .data.build import ensure_dataset
    from .data.build import load_feature_map
    from .runner import resolve

    params, model_class, _ = resolve(expid, None, overrides)
    paths = ensure_dataset(params, log=lambda message: None)
    return params, model_class, paths, load_feature_map(params)


def _new_model(model_class, feature_map, params: dict):
    from fuxictr.pytorch.torch_utils import seed_everything

    seed_everything(int(params.get("seed") or 0))
    return model_class(feature_map, **params)


def measure_training(model, params: dict, paths: dict, batches: int | None, epochs: int,
                     bare_batches: int | None = None, interleave_bare: bool = True,
                     min_epoch_seconds: float = 0.0) -> dict:
    """Real path (``make_loaders`` + ``fit``, one epoch of ``batches`` batches per call, ``epochs`` calls) with
    the bare loop on the same number of in-memory batches after each epoch. ``batches=None``: full epochs;
    ``min_epoch_seconds``: more batches for a fast model (from the warm-up step time)."""
    from .runner import make_loaders

    train, valid, test = make_loaders(model.feature_map, paths, params)
    max_norm = float(params.get("max_gradient_norm", 10.0))
    warm = list(itertools.islice(iter(train), 3))
    step = bare_loop(model, warm, max_norm)[-1]  # warm-up: allocations, optimiser state
    if batches is not None and min_epoch_seconds > 0:
        batches = int(min(len(train), max(batches, np.ceil(min_epoch_seconds / max(step, 1e-6)))))
    n_bare = bare_batches or batches or len(train)
    in_memory = list(itertools.islice(iter(train), n_bare))
    timer = EpochTimer(model)
    bare_sps, bare_steps = [], []
    fit_params = {k: v for k, v in params.items() if k != "epochs"}
    for _ in range(epochs):
        with _silent():
            model.fit(FirstBatches(train, batches), epochs=1, validation_data=FirstBatches(valid, 2), **fit_params)
        if interleave_bare:
            steps = bare_loop(model, in_memory, max_norm)
            bare_sps.append(sum(_rows(b) for b in in_memory) / sum(steps))
            bare_steps.extend(steps)
    real = timer.samples_per_second()
    return {"real_sps": median(real), "real_sps_repeats": real, "bare_sps": median(bare_sps),
            "bare_sps_repeats": bare_sps, "bare_step_ms": 1000 * median(bare_steps),
            "real_step_ms": 1000 * median([s * train.batch_size / r for s, r in zip(timer.seconds, timer.rows) if r]),
            "model_counter_sps": float(getattr(model, "train_samples_per_second", float("nan"))),
            "batches": batches if batches is not None else len(train),
            "loaders": (train, valid, test), "in_memory": in_memory}


def measure_model(name: str, cfg: PerfConfig, work: Path) -> dict:
    """Real vs bare throughput, step split, evaluation speed of one registered model."""
    params, model_class, paths, feature_map = _prepare(name + cfg.expid_suffix, _base_overrides(cfg, work))
    model = _new_model(model_class, feature_map, params)
    out = measure_training(model, params, paths, cfg.batches, cfg.repeats, min_epoch_seconds=cfg.min_epoch_seconds)
    train, valid, test = out.pop("loaders")
    out.pop("in_memory")
    out["split_ms"] = split_steps(model, FirstBatches(train, out["batches"] + 1), out["batches"],
                                  float(params.get("max_gradient_norm", 10.0)))
    eval_sps = []
    for _ in range(max(2, cfg.repeats)):
        subset = FirstBatches(test, cfg.eval_batches)
        rows = min(cfg.eval_batches * test.batch_size, test.num_samples)
        tick = _now(model.device)
        with _silent():
            model.evaluate(subset)
        eval_sps.append(rows / (_now(model.device) - tick))
    display = getattr(model_class, "display_name", None) or name
    out.update({"display_name": display, "expid": name + cfg.expid_suffix, "batch_size": train.batch_size,
                "repeats": cfg.repeats, "eval_sps": median(eval_sps),
                "real_over_bare": out["real_sps"] / out["bare_sps"], "num_parameters": model.num_parameters(),
                "num_tables": getattr(model, "num_experts", None)})
    return out


# ============================================================================================== CovLoss
def measure_covloss(cfg: PerfConfig, work: Path, models: dict) -> dict:
    """Crocodile's step with CovLoss on all rows, on 32 sampled rows and without it; CovLoss's own
    forward+backward time on the step's expert outputs; its share of the step."""
    import torch

    from .runner import make_loaders

    expid = "Crocodile" + cfg.expid_suffix
    base_params, model_class, paths, feature_map = _prepare(expid, _base_overrides(cfg, work))
    default_rows = int(base_params.get("cov_sample_rows") or 0)
    out = {"default_sample_rows": default_rows, "settings": {}}
    for label, over in (("all rows", {"cov_sample_rows": 0}), ("32 rows", {"cov_sample_rows": 32}),
                        ("no CovLoss", {"aux_loss": "none"})):
        params = dict(base_params, **over)
        model = _new_model(model_class, feature_map, params)
        train, _, _ = make_loaders(feature_map, paths, params)
        batches = list(itertools.islice(iter(train), cfg.batches + 1))
        bare_loop(model, batches[:1])
        steps = [t for _ in range(max(1, cfg.repeats - 1)) for t in bare_loop(model, batches[1:])]
        entry = {"step_ms": 1000 * median(steps), "sample_rows": params.get("cov_sample_rows", 0)}
        if model.aux_loss_fn is not None:
            X = model.get_inputs(batches[1])
            with torch.no_grad():
                expert_out = model.expert_outputs(X)[0]
            leaf = expert_out.detach().requires_grad_(True)
            times = []
            for _ in range(cfg.cov_repeats + 1):
                tick = _now(model.device)
                model.aux_loss_fn(leaf, None).backward()
                times.append(_now(model.device) - tick)
                leaf.grad = None
            entry["cov_ms"] = 1000 * median(times[1:])
            entry["share"] = entry["cov_ms"] / entry["step_ms"]
        out["settings"][label] = entry
    croc, me = models.get("Crocodile"), models.get("ME_MMoE")
    if croc and me:
        out["crocodile_over_me_mmoe"] = croc["bare_step_ms"] / me["bare_step_ms"]
        out["num_tables"] = croc.get("num_tables")
    return out


# ============================================================================================== matched vs stock
def _matched_dnn_class():
    from fuxictr.pytorch.layers import MLP_Block

    from mdl_bench.model_zoo.base import MultiDomainModel
    from mdl_bench.model_zoo.layers import MultiEmbedding

    class MatchedDNN(MultiDomainModel):
        """The stock comparison's plain DNN on this package's path: one embedding table, MLP -> logit.

        Not a benchmark model (no domain towers); it exists so that FuxiCTR's DNN has an exact counterpart."""

        def __init__(self, feature_map, model_id="MatchedDNN", gpu=-1, learning_rate=1e-3, embedding_dim=16,
                     dnn_hidden_units=(256, 128, 64), **kwargs):
            super().__init__(feature_map, model_id=model_id, gpu=gpu, learning_rate=learning_rate,
                             embedding_dim=embedding_dim, **kwargs)
            self.embedding = MultiEmbedding(feature_map, embedding_dim, 1)
            self.mlp = MLP_Block(self.embedding.output_dim, list(dnn_hidden_units), hidden_activations="ReLU",
                                 output_dim=1)
            self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
            self.reset_parameters()
            self.model_to_device()

        def logits(self, X, domain):
            return self.mlp(self.embedding.flat(X)[0]).view(-1), {}

    return MatchedDNN


DNN_HIDDEN_UNITS = [256, 128, 64]  # the size rule's bottom [256, 128] plus its tower [64], as Single Domain's DNN


def measure_matched(cfg: PerfConfig, work: Path) -> dict:
    """This package's side of the stock comparison: the matched DNN and MMoE through its real path."""
    out = {}
    over = _base_overrides(cfg, work)
    for name in ("DNN", "MMoE"):
        if name == "DNN":
            params, _, paths, feature_map = _prepare("SharedBottom" + cfg.expid_suffix, over)
            params = dict(params, model_id="MatchedDNN", dnn_hidden_units=DNN_HIDDEN_UNITS)
            model = _new_model(_matched_dnn_class(), feature_map, params)
        else:
            params, model_class, paths, feature_map = _prepare("MMoE" + cfg.expid_suffix, over)
            model = _new_model(model_class, feature_map, params)
        result = measure_training(model, params, paths, cfg.matched_batches, cfg.matched_epochs,
                                  bare_batches=cfg.stock_bare_batches, interleave_bare=False)
        result.pop("loaders")
        in_memory = result.pop("in_memory")
        steps = bare_loop(model, in_memory)
        result["bare_sps"] = sum(_rows(b) for b in in_memory) / sum(steps)
        result["bare_step_ms"] = 1000 * median(steps)
        result["num_parameters"] = model.num_parameters()
        out[name] = result
    out["_spec"] = {"params": params, "paths": paths, "feature_map_dir": feature_map.data_dir}
    return out


def measure_stock(cfg: PerfConfig, work: Path, matched: dict) -> dict:
    """FuxiCTR's stock pipeline on the same built data and architectures, in a child process."""
    spec_src = matched["_spec"]
    params, paths = spec_src["params"], spec_src["paths"]
    from .config import ConfigSet

    mmoe = ConfigSet().load("MMoE" + cfg.expid_suffix, {"dataset_id": params["dataset_id"]})
    spec = {"dataset_id": params["dataset_id"], "data_dir": spec_src["feature_map_dir"],
            "train_data": paths["train"], "valid_data": paths["valid"], "batch_size": int(params["batch_size"]),
            "embedding_dim": int(params["embedding_dim"]), "epochs": cfg.matched_epochs,
            "bare_batches": cfg.stock_bare_batches, "model_root": str(work / "stock_checkpoints"),
            "embedding_regularizer": params.get("embedding_regularizer"),
            "net_regularizer": params.get("net_regularizer"), "seed": int(params.get("seed") or 0),
            "domain_field": params["domain_field"], "domains": list(params["domains"]),
            "group_id": params.get("group_id"),
            "dnn_hidden_units": DNN_HIDDEN_UNITS, "expert_hidden_units": list(mmoe["expert_hidden_units"]),
            "tower_hidden_units": list(mmoe["tower_hidden_units"]), "models": ["DNN", "MMoE"]}
    result = _stock_task("train", spec, work)
    for name, entry in result["models"].items():
        entry["real_sps"] = median(entry["samples_per_second"])
        steps = entry["bare_step_seconds"]
        entry["bare_sps"] = sum(entry["bare_rows"]) / sum(steps) if steps else float("nan")
        entry["bare_step_ms"] = 1000 * median(steps)
    return result


# ============================================================================================== gAUC
def gauc_data(rows: int, users: int, seed: int = 7):
    """Labels, scores with ties (3 decimals) and Zipf-like user ids for the gAUC comparison."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, users + 1) ** 0.8
    group = rng.choice(users, size=rows, p=weights / weights.sum())
    y = (rng.random(rows) < 0.25).astype(np.float64)
    score = np.round(np.clip(0.3 + 0.15 * y + rng.normal(0.0, 0.2, rows), 0.0, 1.0), 3)
    return y, score, group


def measure_gauc(rows: int, users: int, repeats: int = 3) -> dict:
    from fuxictr.metrics import evaluate_metrics

    from mdl_bench.model_zoo.core.metrics import gauc_score

    y, score, group = gauc_data(rows, users)
    times, value = [], None
    for _ in range(repeats):
        tick = time.perf_counter()
        value = gauc_score(y, score, group)
        times.append(time.perf_counter() - tick)
    tick = time.perf_counter()
    reference = float(evaluate_metrics(y, score, ["gAUC"], group)["gAUC"])
    fuxictr_seconds = time.perf_counter() - tick
    return {"rows": rows, "users": users, "groups_with_rows": int(np.unique(group).shape[0]),
            "project_seconds": median(times), "fuxictr_seconds": fuxictr_seconds,
            "speedup": fuxictr_seconds / median(times), "project_value": value, "fuxictr_value": reference,
            "max_abs_diff": abs(value - reference)}


# ============================================================================================== build
def measure_build(cfg: PerfConfig, work: Path) -> dict:
    """This package's build and FuxiCTR's ``build_dataset`` on the same raw rows, each in a child process."""
    from .config import ConfigSet
    from .data import synth
    from .data.build import expand_feature_cols

    rows = cfg.build_rows
    n_valid = n_test = rows // 10
    spec = synth.make_spec("kuairand_like", n_train=rows - n_valid - n_test, n_valid=n_valid, n_test=n_test)
    raw = bench_home() / "raw" / f"perf_build_{rows}"
    synth.ensure_raw(spec, raw)
    dataset = ConfigSet().dataset_params("kuairand_like")
    oracle = dataset.get("oracle_field")
    # FuxiCTR 2.3.10 cannot build a `remap: False` meta column (KeyError __OOV__), so both sides build the same
    # columns without the oracle probability.
    cols = [c for c in expand_feature_cols(dataset["feature_cols"]) if c["name"] != oracle]
    files = {f"{s}_data": str(raw / f"{s}.csv") for s in ("train", "valid", "test")}
    common = dict(dataset_id="perf_build", feature_cols=cols, label_col=dataset["label_col"],
                  group_id=dataset.get("group_id"), min_categr_count=dataset.get("min_categr_count", 1), **files)
    out = {"rows": rows, "splits": {"train": rows - 2 * n_valid, "valid": n_valid, "test": n_test}}
    project = dict(common, data_root=str(work / "build_project"), domain_field=dataset["domain_field"],
                   domains=dataset["domains"])
    out["project"] = _stock_task("build_project", project, work)
    if cfg.build_fuxictr:
        out["fuxictr"] = _stock_task("build_fuxictr", dict(common, data_root=str(work / "build_fuxictr")), work)
        out["speedup"] = out["fuxictr"]["seconds"] / out["project"]["seconds"]
        out["memory_ratio"] = out["project"]["peak_rss_bytes"] / out["fuxictr"]["peak_rss_bytes"]
    return out


# ============================================================================================== scaling
def _k_domain_data(K: int, cfg: PerfConfig, work: Path) -> dict:
    """Dataset overrides for synthetic data with ``K`` domains (long-tailed sizes, one conflicting domain)."""
    domains = list(range(K))
    sizes = [round(1.0 / (i + 1) ** 0.8, 4) for i in range(K)]
    rho = [0.8 if i % 4 != 3 else -0.6 for i in range(K)]
    offset = [-0.8] * K
    root = work / f"k{K}"
    n_small = max(1000, cfg.scaling_rows // 10)
    return {"data_root": str(root / "data"), "train_data": str(root / "raw" / "train.csv"),
            "valid_data": str(root / "raw" / "valid.csv"), "test_data": str(root / "raw" / "test.csv"),
            "synth": {"preset": "kuairand_like", "seed": 11, "n_train": cfg.scaling_rows, "n_valid": n_small,
                      "n_test": n_small, "domains": domains, "domain_sizes": sizes, "domain_rho": rho,
                      "domain_offset": offset},
            "domains": domains}


def _component_times(model, batch: dict, repeats: int) -> dict[str, float]:
    """Forward+backward milliseconds of the parts of a mixture-of-experts step (embedding lookup, experts, gate
    and mixing, towers, auxiliary loss), each on detached inputs; for models with ``embedding``, ``experts``,
    ``gate`` and ``towers`` (Crocodile, ME-MMoE)."""
    import torch

    from mdl_bench.model_zoo.layers import DomainGroups, gather_domain, mix_own

    X = model.get_inputs(batch)
    domain = model.domain_of(X)
    with torch.no_grad():
        emb = model.embedding.flat(X)
        single = getattr(model, "embedding_mode", "ME") == "SE"
        expert_out = model.experts(emb[0] if single else emb)
    leaf_emb = emb.detach().requires_grad_(True)
    leaf_out = expert_out.detach().requires_grad_(True)
    leaf_mix = expert_out[0].detach().requires_grad_(True)

    def gate():
        groups = DomainGroups(domain, model.num_domains)
        if hasattr(model, "prior_embedding") and getattr(model, "gating", "") in ("peg", "pg"):
            gate_in = model.prior_embedding.flat(X)[0]
        else:
            gate_in = leaf_emb.permute(1, 0, 2).reshape(leaf_emb.shape[1], -1)
        return mix_own(leaf_out, model.gate.own(gate_in, groups)).sum()

    parts: dict[str, Callable] = {
        "embedding": lambda: model.embedding.flat(X).sum(),
        "experts": lambda: model.experts(leaf_emb[0] if single else leaf_emb).sum(),
        "gate": gate,
        "towers": lambda: gather_domain(model.towers(leaf_mix), domain).sum(),
    }
    if getattr(model, "aux_loss_fn", None) is not None:
        parts["cov"] = lambda: model.aux_loss_fn(leaf_out, None)
    out = {}
    for name, fn in parts.items():
        times = []
        for _ in range(repeats + 1):
            tick = _now(model.device)
            fn().backward()
            times.append(_now(model.device) - tick)
        out[name] = 1000 * median(times[1:])
    model.zero_grad(set_to_none=True)
    return out


def _scale_point(name: str, overrides: dict, cfg: PerfConfig, work: Path) -> dict:
    from .runner import make_loaders

    params, model_class, paths, feature_map = _prepare(name + cfg.expid_suffix,
                                                       {**_base_overrides(cfg, work), **overrides})
    model = _new_model(model_class, feature_map, params)
    train, _, _ = make_loaders(feature_map, paths, params)
    batches = list(itertools.islice(iter(train), cfg.scaling_steps + 1))
    bare_loop(model, batches[:1])
    split = split_steps(model, batches[1:], cfg.scaling_steps)
    split.pop("data", None)
    try:
        components = _component_times(model, batches[1], max(2, cfg.scaling_steps))
    except (AttributeError, TypeError, RuntimeError) as exc:  # a model without this layout: parts not split
        components = {"error": f"{type(exc).__name__}: {exc}"}
    return {"step_ms": split.pop("step"), **{f"{k}_ms": v for k, v in split.items()},
            "components_ms": components, "num_parameters": model.num_parameters(),
            "num_tables": getattr(model, "num_experts", None), "num_domains": model.num_domains,
            "batch_size": _rows(batches[1])}


SCALING_MODELS = ("Crocodile", "ME_MMoE")


def measure_scaling(cfg: PerfConfig, work: Path) -> dict:
    from mdl_bench.model_zoo import get_model

    out: dict[str, Any] = {"models": list(SCALING_MODELS),
                           "display": {n: get_model(n).display_name or n for n in SCALING_MODELS},
                           "tables": {"values": list(cfg.scaling_tables)},
                           "domains": {"values": list(cfg.scaling_domains),
                                       "fixed_tables": cfg.scaling_fixed_tables}}
    for name in SCALING_MODELS:
        out["tables"][name] = [_scale_point(name, {"num_embeddings": M}, cfg, work) for M in cfg.scaling_tables]
    for name in SCALING_MODELS:
        out["domains"][name] = [
            _scale_point(name, {**_k_domain_data(K, cfg, work), "num_embeddings": cfg.scaling_fixed_tables},
                         cfg, work) for K in cfg.scaling_domains]
    out["explanation"] = explain_scaling(out)
    return out


REASONS = {
    "embedding": "one lookup per field returns all M tables side by side (width M*D): the gather, its "
                 "scatter-add backward and the M x B x F*D re-layout grow with M; K does not enter",
    "experts": "M expert MLPs, each over the whole batch (one bmm per layer): compute grows linearly in M",
    "gate": "ME-MMoE's gate reads all M tables (M*F*D inputs); Crocodile's PEG maps the prior embedding to "
            "M x d weights per domain: both grow with M; per row only its own domain's gate is computed "
            "(DomainGroups), so K adds K small matmuls, not K times the work",
    "towers": "every domain's tower runs on every row and each row keeps its own domain's logit (so that DDP "
              "sees every parameter, and batch norm in a tower sees the whole batch): compute grows linearly in "
              "K; routing rows to their own tower would make it flat in K",
    "cov": "CovLoss's Gram over the sampled rows is (M*d)^2: quadratic in M but tiny on 32 rows",
    "optimizer": "Adam, clipping and the embedding L2 term touch every parameter every step: they grow with the "
                 "parameter count (embedding tables x M; gates and towers x K)",
}


def explain_scaling(scaling: dict) -> str:
    """Which parts grow between the smallest and largest M and K, from the measured parts, and why."""
    lines = []
    for axis, label in (("tables", "M"), ("domains", "K")):
        values = scaling[axis]["values"]
        if len(values) < 2:
            continue
        for name in scaling["models"]:
            points = scaling[axis].get(name) or []
            if len(points) < 2:
                continue
            first, last = points[0], points[-1]
            growth = {}
            for part in set(first["components_ms"]) & set(last["components_ms"]):
                if part != "error":
                    growth[part] = last["components_ms"][part] - first["components_ms"][part]
            growth["optimizer"] = last["optimizer_ms"] - first["optimizer_ms"]
            top = sorted(growth.items(), key=lambda kv: -kv[1])
            grown = ", ".join(f"{part} +{ms:.0f} ms" for part, ms in top if ms > 0.5) or "nothing measurable"
            shown = (scaling.get("display") or {}).get(name, name)
            lines.append(f"- {shown}, {label} {values[0]} -> {values[-1]}: step {first['step_ms']:.0f} -> "
                         f"{last['step_ms']:.0f} ms ({last['step_ms'] / first['step_ms']:.2f}x); grew: {grown}.")
    lines.append("")
    lines.append("Why:")
    lines.extend(f"- {part}: {text}." for part, text in REASONS.items())
    return "\n".join(lines)


def plot_scaling(scaling: dict, path: Path) -> str | None:
    """Two panels (M, K): step time of each model (solid) and Crocodile's parts (dashed). Returns the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is a dependency, but a report without the figure beats no report
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (axis, label) in zip(axes, (("tables", "embedding tables M"), ("domains", "domains K"))):
        values = scaling[axis]["values"]
        for name in scaling["models"]:
            points = scaling[axis].get(name) or []
            if not points:
                continue
            ax.plot(values[:len(points)], [p["step_ms"] for p in points], marker="o", lw=2,
                    label=f"{(scaling.get('display') or {}).get(name, name)} step")
        croc = scaling[axis].get("Crocodile") or []
        if croc and "error" not in croc[0]["components_ms"]:
            parts = list(croc[0]["components_ms"]) + ["optimizer"]
            for part in parts:
                ys = [p["optimizer_ms"] if part == "optimizer" else p["components_ms"].get(part, np.nan)
                      for p in croc]
                ax.plot(values[:len(croc)], ys, ls="--", lw=1, marker=".", label=f"Crocodile {part}")
        ax.set_xlabel(label + (f" (M = {scaling['domains']['fixed_tables']})" if axis == "domains" else ""))
        ax.set_ylabel("ms per step (batch 4096)" if axis == "tables" else "ms per step")
        ax.set_xticks(values)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("mdl-bench perf: step time as M and K grow (forward+backward+optimiser)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


# ============================================================================================== targets
CONTENDED = 0.25  # other processes used more than this share of the CPUs during a phase: flag its figures


def _target(name: str, value, goal: float, higher_is_better: bool, fmt: str, note: str = "",
            phases: Sequence[str] = (), others: dict | None = None) -> dict:
    measured = value is not None and not (isinstance(value, float) and np.isnan(value))
    met = (value >= goal if higher_is_better else value <= goal) if measured else None
    busy = max([(others or {}).get(p, 0.0) for p in phases] or [0.0])
    if measured and busy > CONTENDED:
        note = (note + "; " if note else "") + f"other processes used {busy:.0%} of the CPUs meanwhile"
    return {"target": name, "value": value if measured else None, "goal": goal,
            "direction": ">=" if higher_is_better else "<=", "format": fmt, "met": met, "note": note,
            "phases": list(phases)}


def evaluate_targets(result: dict) -> list[dict]:
    """The issue's targets as (measured, goal, met) rows; a section not measured in this run gives ``met=None``;
    a figure measured while other processes used much of the machine carries a note saying so."""
    import functools

    _target_here = functools.partial(_target, others=(result.get("meta") or {}).get("others_cpu"))
    rows = []
    models = result.get("models") or {}
    if models:
        worst = min(models.items(), key=lambda kv: kv[1]["real_over_bare"])
        rows.append(_target_here(f"training / bare loop, worst model ({worst[0]})", worst[1]["real_over_bare"],
                                 0.9, True, "{:.2f}", phases=["models"]))
    stock = result.get("stock") or {}
    matched = result.get("matched") or {}
    for name in ("DNN", "MMoE"):
        speed = (stock.get("speedup") or {}).get(name)
        rows.append(_target_here(f"{name}: this package / FuxiCTR stock pipeline", speed, 1.5, True, "{:.2f}x",
                                 "" if speed is not None else "stock run skipped", phases=["matched", "stock"]))
    cov = result.get("covloss") or {}
    rows.append(_target_here(f"Crocodile step / ME-MMoE step (same M = {cov.get('num_tables')})",
                             cov.get("crocodile_over_me_mmoe"), 1.15, False, "{:.2f}", phases=["models"]))
    sampled = (cov.get("settings") or {}).get("32 rows") or {}
    rows.append(_target_here("CovLoss share of a Crocodile step, 32-row sampling", sampled.get("share"), 0.03,
                             False, "{:.1%}", phases=["covloss"]))
    gauc = result.get("gauc") or {}
    rows.append(_target_here(f"gAUC speed-up over fuxictr.metrics ({gauc.get('rows', 0):,} rows)",
                             gauc.get("speedup"), 20, True, "{:.0f}x", phases=["gauc"]))
    rows.append(_target_here("gAUC |this package - fuxictr|", gauc.get("max_abs_diff"), 1e-9, False, "{:.1e}"))
    build = result.get("build") or {}
    rows.append(_target_here(f"build speed-up over FuxiCTR build_dataset ({build.get('rows', 0):,} rows)",
                             build.get("speedup"), 2.0, True, "{:.1f}x",
                             "" if build.get("speedup") is not None else "FuxiCTR build skipped", phases=["build"]))
    rows.append(_target_here("build peak memory / FuxiCTR's", build.get("memory_ratio"), 1.0, False, "{:.2f}",
                        "" if build.get("memory_ratio") is not None else "FuxiCTR build skipped"))
    rows.append(_target_here("Ray processes on the default path", (result.get("ray") or {}).get("default_path"), 0,
                        False, "{:d}"))
    return rows


# ============================================================================================== report
def _fmt(value, fmt: str = "{:,.0f}") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return fmt.format(value)


def _mb(value) -> str:
    return _fmt(None if value is None else value / MB, "{:,.0f} MB")


def render_markdown(result: dict) -> str:
    meta = result["meta"]
    out = [f"# mdl-bench perf, {meta['date']}", "",
           f"`{meta['command']}` on {meta['cores']} cores ({meta['torch_threads']} torch threads), load average "
           f"{meta['load_start']} at start, {meta['load_end']} at end; torch {meta['torch']}, fuxictr "
           f"{meta['fuxictr']}; {'quick' if meta['quick'] else 'full'} run, {meta['seconds']:.0f} s; allocator "
           f"{'tuned' if meta['allocator_tuned'] else 'default'}.", "",
           "CPU share used by other processes during each phase: " + ", ".join(
               f"{k} {v:.0%}" for k, v in (meta.get("others_cpu") or {}).items()) +
           f" (figures of a phase above {CONTENDED:.0%} are flagged).", "",
           "## Targets (ratios measured in this run)", "", "| target | measured | goal | met |", "|---|---|---|---|"]
    for row in result["targets"]:
        goal = row["format"].format(row["goal"]) if "d}" not in row["format"] else str(row["goal"])
        met = {True: "yes", False: "**no**", None: "not measured"}[row["met"]]
        note = f" ({row['note']})" if row["note"] else ""
        out.append(f"| {row['target']} | {_fmt(row['value'], row['format'])} | {row['direction']} {goal} | "
                   f"{met}{note} |")
    models = result.get("models") or {}
    if models:
        first = next(iter(models.values()))
        out += ["", f"## Training throughput per model (batch {first['batch_size']}, {first['repeats']} epochs of "
                    f"the batches shown; medians)", "",
                "| model | real samples/s | bare samples/s | real / bare | batches | step ms | data | forward | "
                "backward | optimiser | eval samples/s | parameters |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, m in models.items():
            s = m["split_ms"]
            out.append(f"| {m['display_name']} | {_fmt(m['real_sps'])} | {_fmt(m['bare_sps'])} | "
                       f"{m['real_over_bare']:.2f} | {m['batches']} | {_fmt(m['bare_step_ms'], '{:.0f}')} | "
                       f"{_fmt(s.get('data'), '{:.1f}')} | {_fmt(s.get('forward'), '{:.0f}')} | "
                       f"{_fmt(s.get('backward'), '{:.0f}')} | {_fmt(s.get('optimizer'), '{:.0f}')} | "
                       f"{_fmt(m['eval_sps'])} | {m['num_parameters']:,} |")
        out.append("")
        out.append("real = `make_loaders` + `fit` as run-expid (evaluation excluded); bare = zero_grad, forward + "
                   "loss, backward, clip, Adam step on in-memory batches; step ms = bare step; the split is the "
                   "real path's (data = next batch from the loader; optimiser = zero_grad + clip + step).")
    matched, stock = result.get("matched") or {}, result.get("stock") or {}
    if matched:
        out += ["", "## FuxiCTR's stock pipeline vs this package (matched architectures)", "",
                "| model | this package samples/s | FuxiCTR stock samples/s | speed-up | this package bare | "
                "FuxiCTR bare | parameters (ours / stock) |", "|---|---|---|---|---|---|---|"]
        for name in ("DNN", "MMoE"):
            ours = matched.get(name) or {}
            theirs = (stock.get("models") or {}).get(name) or {}
            out.append(f"| {name} | {_fmt(ours.get('real_sps'))} | {_fmt(theirs.get('real_sps'))} | "
                       f"{_fmt((stock.get('speedup') or {}).get(name), '{:.2f}x')} | {_fmt(ours.get('bare_sps'))} | "
                       f"{_fmt(theirs.get('bare_sps'))} | {_fmt(ours.get('num_parameters'))} / "
                       f"{_fmt(theirs.get('num_parameters'))} |")
        if stock:
            out.append("")
            out.append(f"Stock: `RankDataLoader` (parquet -> Ray Data) + `BaseModel.fit`, {stock['epochs']} full "
                       f"epochs of {stock['rows_per_epoch']:,} rows; loader set-up {stock['loader_seconds']:.1f} s; "
                       f"{stock['ray_processes']} Ray processes; peak RSS of its process tree "
                       f"{_mb(stock['peak_rss_bytes'])}. This package: same data, `make_loaders` + `fit`.")
        else:
            out.append("")
            out.append("Stock FuxiCTR run skipped (quick mode); this package's side only.")
    cov = result.get("covloss")
    if cov:
        out += ["", f"## CovLoss in a Crocodile step (M = {cov.get('num_tables')}; default cov_sample_rows = "
                    f"{cov['default_sample_rows']})", "", "| CovLoss | step ms | CovLoss forward+backward ms | share |",
                "|---|---|---|---|"]
        for label, entry in cov["settings"].items():
            out.append(f"| {label} | {entry['step_ms']:.0f} | {_fmt(entry.get('cov_ms'), '{:.1f}')} | "
                       f"{_fmt(entry.get('share'), '{:.1%}')} |")
        if cov.get("crocodile_over_me_mmoe") is not None:
            out.append("")
            out.append(f"Crocodile bare step / ME-MMoE bare step (same M): {cov['crocodile_over_me_mmoe']:.2f}.")
    gauc = result.get("gauc")
    if gauc:
        out += ["", f"## gAUC ({gauc['rows']:,} rows, {gauc['users']:,} users)", "", "| | seconds | gAUC |",
                "|---|---|---|",
                f"| this package (`metrics.gauc_score`) | {gauc['project_seconds']:.3f} | {gauc['project_value']:.12f} |",
                f"| `fuxictr.metrics` | {gauc['fuxictr_seconds']:.2f} | {gauc['fuxictr_value']:.12f} |", "",
                f"Speed-up {gauc['speedup']:.0f}x; max abs difference {gauc['max_abs_diff']:.1e}."]
    build = result.get("build")
    if build:
        out += ["", f"## Dataset build ({build['rows']:,} raw rows: train/valid/test "
                    f"{build['splits']['train']:,}/{build['splits']['valid']:,}/{build['splits']['test']:,})", "",
                "| | seconds | peak RSS, process tree | Ray processes |", "|---|---|---|---|"]
        for label, key in (("this package", "project"), ("FuxiCTR `build_dataset`", "fuxictr")):
            entry = build.get(key)
            if entry:
                out.append(f"| {label} | {entry['seconds']:.1f} | {_mb(entry['peak_rss_bytes'])} | "
                           f"{entry['ray_processes']} |")
        out.append("")
        out.append("Each build runs in its own child process; seconds around the build call, peak = sampled sum of "
                   "RSS over the child and its descendants (imports included on both sides).")
    mem = result.get("memory")
    if mem:
        out += ["", "## Memory and Ray", "",
                f"Peak RSS of this process tree while this package trained (models, matched, scaling): "
                f"{_mb(mem['project_peak_rss_bytes'])}; Ray processes seen on the default path: "
                f"{result['ray']['default_path']}."]
    scaling = result.get("scaling")
    if scaling:
        out += ["", "## Scaling", ""]
        for axis, label in (("tables", "M"), ("domains", "K")):
            values = scaling[axis]["values"]
            title = ("embedding tables M (default data)" if axis == "tables" else
                     f"domains K (synthetic data, M = {scaling['domains']['fixed_tables']})")
            out += [f"### {title}", ""]
            parts = []
            croc = scaling[axis].get("Crocodile") or []
            if croc and "error" not in croc[0]["components_ms"]:
                parts = list(croc[0]["components_ms"])
            display = scaling.get("display") or {}
            header = (f"| {label} | " + " | ".join(f"{display.get(n, n)} step ms" for n in scaling["models"]) +
                      " | " + " / ".join(display.get(n, n) for n in scaling["models"]) + " | " +
                      " | ".join(f"Crocodile {p}" for p in parts) + " | Crocodile optimiser |")
            out += [header, "|" + "---|" * (header.count("|") - 1)]
            for i, value in enumerate(values):
                steps = [(scaling[axis].get(n) or [{}] * len(values))[i].get("step_ms") for n in scaling["models"]]
                ratio = steps[0] / steps[1] if len(steps) > 1 and steps[0] and steps[1] else None
                comp = croc[i]["components_ms"] if croc else {}
                out.append(f"| {value} | " + " | ".join(_fmt(s, "{:.0f}") for s in steps) +
                           f" | {_fmt(ratio, '{:.2f}')} | " + " | ".join(_fmt(comp.get(p), "{:.1f}") for p in parts) +
                           f" | {_fmt(croc[i]['optimizer_ms'] if croc else None, '{:.1f}')} |")
            out.append("")
        out.append("Parts: forward+backward ms of each part on its own (detached inputs); optimiser = zero_grad + "
                   "clip + Adam step.")
        out += ["", scaling["explanation"]]
        if result.get("files", {}).get("png"):
            out += ["", f"![scaling]({Path(result['files']['png']).name})"]
    return "\n".join(out) + "\n"


# ============================================================================================== driver
def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def default_out_path() -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return bench_home() / "perf" / f"perf-{stamp}.json"


def run_perf(cfg: PerfConfig, out_path: str | os.PathLike | None = None, command: str = "mdl-bench perf",
             progress: Callable[[str], None] | None = None) -> dict:
    """Run every measurement of ``cfg``; write JSON, Markdown and PNG; return the result dict."""
    import torch
    import fuxictr

    from mdl_bench.model_zoo import registry

    say = progress or (lambda message: None)
    out_path = Path(out_path) if out_path else default_out_path()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    known = registry()
    names = list(cfg.models) if cfg.models else list(known)
    for name in names:
        if name not in known:
            from mdl_bench.model_zoo.core.errors import close_matches

            raise UserError(f"perf: unknown model {name!r}{close_matches(name, known)}; registered: "
                            f"{', '.join(known)}")
    logging.getLogger().setLevel(logging.WARNING)
    started = time.perf_counter()
    tuned = allocator.keep_freed_memory()  # what this package's training path does (MultiDomainModel.fit)
    result: dict[str, Any] = {"meta": {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "command": command,
        "host": platform.node(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_start": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
        "fuxictr": getattr(fuxictr, "__version__", "?"), "python": platform.python_version(), "quick": cfg.quick,
        "allocator_tuned": tuned, "config": dataclasses.asdict(cfg)}}
    work = Path(tempfile.mkdtemp(prefix="perf-", dir=bench_home() if bench_home().exists() else None))
    try:
        with TreeSampler() as sampler:
            project_phases = ["models", "covloss", "matched", "scaling"]
            say("data: default dataset")
            result["models"] = {}
            with sampler.phase("models"):
                for name in names:
                    say(f"models: {name}")
                    result["models"][name] = measure_model(name, cfg, work)
            if "Crocodile" in names:
                with sampler.phase("covloss"):
                    say("covloss: Crocodile with all rows, 32 rows, none")
                    result["covloss"] = measure_covloss(cfg, work, result["models"])
            with sampler.phase("matched"):
                say("matched: DNN and MMoE through this package's path")
                matched = measure_matched(cfg, work)
                result["matched"] = matched
            if cfg.stock:  # right after its counterpart, so that both see the machine in the same state
                with sampler.phase("stock"):
                    say("stock: FuxiCTR RankDataLoader + fit (child process, Ray)")
                    stock = measure_stock(cfg, work, matched)
                    stock["epochs"] = cfg.matched_epochs
                    stock["rows_per_epoch"] = next(iter(stock["models"].values()))["rows_per_epoch"]
                    stock["speedup"] = {n: matched[n]["real_sps"] / stock["models"][n]["real_sps"]
                                        for n in stock["models"]}
                    result["stock"] = stock
            with sampler.phase("scaling"):
                say("scaling: M and K")
                result["scaling"] = measure_scaling(cfg, work)
            with sampler.phase("gauc"):
                say(f"gauc: {cfg.gauc_rows:,} rows, {cfg.gauc_users:,} users")
                result["gauc"] = measure_gauc(cfg.gauc_rows, cfg.gauc_users)
            with sampler.phase("build"):
                say(f"build: {cfg.build_rows:,} rows" + (" (and FuxiCTR's build_dataset)" if cfg.build_fuxictr else ""))
                result["build"] = measure_build(cfg, work)
        result["memory"] = {"project_peak_rss_bytes": max(sampler.peak[p] for p in project_phases)}
        result["ray"] = {"default_path": max(sampler.ray[p] for p in project_phases)}
        if "stock" in result:
            result["ray"]["stock_path"] = result["stock"]["ray_processes"]
        result["meta"]["others_cpu"] = dict(sampler.others_cpu)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["targets"] = evaluate_targets(result)
    result["meta"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
    result["meta"]["seconds"] = time.perf_counter() - started
    png = plot_scaling(result["scaling"], out_path.with_name(out_path.stem + "_scaling.png"))
    md_path = out_path.with_suffix(".md")
    result["files"] = {"json": str(out_path), "markdown": str(md_path), "png": png}
    ordered = {"meta": result.pop("meta"), "targets": result.pop("targets")}  # ratios first
    clean = _jsonable({**ordered, **result})
    out_path.write_text(json.dumps(clean, indent=2))
    md_path.write_text(render_markdown(clean))
    return clean


# ============================================================================================== command line
def cmd_perf(args) -> int:
    over = {}
    if args.models:
        over["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    cfg = quick_config(**over) if args.quick else PerfConfig(**over)
    command = "mdl-bench perf" + (f" --out {args.out}" if args.out else "") + (" --quick" if args.quick else "") + (
        f" --models {args.models}" if args.models else "")
    if args.out and not str(args.out).endswith(".json"):
        raise UserError(f"--out {args.out}: give a .json path (the Markdown report and the PNG go next to it)")
    result = run_perf(cfg, args.out, command=command,
                      progress=lambda message: print(f"[perf {time.strftime('%H:%M:%S')}] {message}",
                                                     file=sys.stderr, flush=True))
    print(Path(result["files"]["markdown"]).read_text())
    print(f"wrote {result['files']['json']}, {result['files']['markdown']}"
          + (f", {result['files']['png']}" if result["files"].get("png") else ""))
    return 0


def add_parser(sub) -> None:
    """``mdl-bench perf`` (issue 7)."""
    p = sub.add_parser("perf", help="measure training/evaluation speed against the bare loop and stock FuxiCTR")
    p.add_argument("--out", help="JSON result path; the Markdown report and the scaling PNG are written next to it "
                                 "(default $MDL_BENCH_HOME/perf/perf-<time>.json)")
    p.add_argument("--quick", action="store_true",
                   help="about 90 s: four models, fewer batches and rows, no FuxiCTR stock training or build; for "
                        "comparing this package before and after a change")
    p.add_argument("--models", help="comma-separated registered models (default: all; --quick: "
                                    + ",".join(QUICK_MODELS) + ")")
    p.set_defaults(func=cmd_perf)
