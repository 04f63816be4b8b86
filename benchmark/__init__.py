"""Benchmark machinery: data, training runs, metrics and the ``mdl-bench`` command."""
