"""``python -m mdl_bench.benchmark.cli``: the ``mdl-bench`` command, as child processes and tests start it."""
import sys

from . import main

sys.exit(main())
