"""The user's working area (data, checkpoints, results): ``$MDL_BENCH_HOME``, default ``~/.mdl_bench``."""
from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "MDL_BENCH_HOME"


def bench_home() -> Path:
    """The working area for generated data, built datasets, checkpoints and result stores."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".mdl_bench").expanduser()
