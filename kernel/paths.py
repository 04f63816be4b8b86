"""Where things live: the packaged configs and the user's working area (data, checkpoints, results).

Nothing is ever written into the source tree or the current directory unless the user asks for it:
the working area is ``$MDL_BENCH_HOME`` (default ``~/.mdl_bench``) and config paths may refer to it
as ``${MDL_BENCH_HOME}``.
"""
from __future__ import annotations

import os
import re
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


def slug(text: str) -> str:
    """``text`` as a file-name part: runs of other characters than letters, digits, ``_.-`` become one ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "run"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _home_note(path: Path) -> str:
    """`` (under MDL_BENCH_HOME=...)`` when ``path`` lies in the working area, so the fix names the variable."""
    home = bench_home().absolute()
    try:
        path.absolute().relative_to(home)
    except ValueError:
        return ""
    return f" (under {HOME_ENV}={home})"


def _probe(folder: Path) -> str | None:
    """``None`` if this process may create files in ``folder``, else the reason. ``access(2)`` answers for the
    real user and also says EROFS for a read-only mount (where root's permissions do not help), and writes
    nothing."""
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    probe = os.statvfs(folder)
    return "read-only file system" if probe.f_flag & os.ST_RDONLY else "permission denied"


def check_writable_dir(path, what: str, fix: str) -> Path:
    """``path`` as a folder this process can write in (it may not exist yet: then the nearest existing folder
    above it must be writable), or a one-line :class:`UserError`: is a file / not writable. Nothing is left
    behind (nothing is written to find out)."""
    from .errors import UserError

    path = Path(path).expanduser()
    note = _home_note(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path}{note} is a file, not a folder; {fix}")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {path}{note} cannot be created: {existing} is a file; {fix}")
    reason = _probe(existing)
    if reason is not None:
        where = "" if existing == path else f" ({existing}, the folder it would be created in)"
        raise UserError(f"{what} {path}{note} is not writable{where}: {reason}; {fix}")
    return path


def check_writable_file(path, what: str, fix: str) -> Path:
    """``path`` as a file this process can write (create, or replace beside it), or a one-line
    :class:`UserError`: is a folder / not writable."""
    from .errors import UserError

    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{what} {path}{_home_note(path)} is a folder, not a file; {fix}")
    check_writable_dir(path.parent, f"{what} {path}: its folder", fix)
    if path.exists():
        try:
            with open(path, "r+b"):  # opened for writing, nothing written
                pass
        except OSError as exc:
            raise UserError(f"{what} {path}{_home_note(path)} is not writable: {exc.strerror}; {fix}") from None
    return path


def emit_report(text: str, target: Path | None, stdout, wrote: str = "") -> None:
    """A report to its ``--out`` file (replaced whole or not at all: written beside it, then renamed into place, so
    a reader never sees half of one) with a ``Wrote`` line, or to ``stdout`` when there is no target."""
    import os

    if target is None:
        stdout.write(text)
        stdout.flush()
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    print(f"Wrote {target}{wrote}", file=stdout)
