"""``python -m mdl_bench.benchmark.cli``: the ``mdl-bench`` command."""
import sys

from . import main

sys.exit(main())
