"""Where things live: the packaged configs and the user's working area (data, checkpoints, results).

Nothing is ever written into the source tree or the current directory unless the user asks for it:
the working area is ``$MDL_BENCH_HOME`` (default ``~/.mdl_bench``) and config paths may refer to it
as ``${MDL_BENCH_HOME}``.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

HOME_ENV = "MDL_BENCH_HOME"


def bench_home() -> Path:
    """The working area for generated data, built datasets, checkpoints and result stores."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".mdl_bench").expanduser()


def packaged_config_dir() -> Path:
    """The ``config/`` folder shipped with the package (works for wheel and editable installs)."""
    return Path(str(resources.files("mdl_bench.config")))


def expand_path(value):
    """Expand ``~`` and ``${MDL_BENCH_HOME}`` in a config path; other values pass through."""
    if not isinstance(value, str):
        return value
    if "${" + HOME_ENV + "}" in value or "$" + HOME_ENV in value:
        value = value.replace("${" + HOME_ENV + "}", str(bench_home())).replace("$" + HOME_ENV, str(bench_home()))
    return os.path.expanduser(value)
