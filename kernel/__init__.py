"""The kernel every other part of the package stands on: user errors (one line naming the problem and the fix)
and where things live (the working area ``$MDL_BENCH_HOME``, the packaged configs, writable-path checks, report
files). It imports nothing else of this package; the models and the harness both import it."""
