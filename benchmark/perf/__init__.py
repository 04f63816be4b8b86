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

Modules (each imports only those above it in this list, and nothing of the command-line layer):

* :mod:`.settings`: :class:`~.settings.PerfConfig`, what one run measures, and the ``--quick`` settings;
* :mod:`.proc`: the process tree from ``/proc`` (RSS, Ray processes, the CPU share of other processes), its
  sampler and a sampled child process;
* :mod:`.timing`: the clock, medians, the bare loop, a step split into phases and the parts of a step, all through
  the one training step (:func:`mdl_bench.model_zoo.core.step.train_step`);
* :mod:`.stock`: FuxiCTR's stock pipeline and the dataset builds, run as a child process (``python -m
  mdl_bench.benchmark.perf.stock``);
* :mod:`.measure`: models, CovLoss, the matched and stock comparison, gAUC and the dataset build;
* :mod:`.scaling`: step time and its parts as M and K grow, and why;
* :mod:`.targets`, :mod:`.report`, :mod:`.plot`: the goals met or not, the Markdown report, the scaling figure;
* :mod:`.run`: :func:`~.run.run_perf` (every measurement; JSON, Markdown, PNG).

The ``mdl-bench perf`` command is :mod:`mdl_bench.benchmark.cli.perf`, which imports :mod:`.run` only when it runs.

This file only documents the package and imports nothing, so that the child process, which imports
:mod:`.stock`, loads nothing else of it.
"""
