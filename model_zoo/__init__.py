"""The model zoo: one model per file, found by name.

A module ``model_zoo/<Name>.py`` that defines a class ``<Name>`` deriving from
:class:`~mdl_bench.model_zoo.base.MultiDomainModel` is a model; ``model: <Name>`` in a config selects it. No
hand-kept list: adding the file is enough.

Models outside the package join the same registry, from three places:

* a *location* given with ``--models-from`` (the CLI), ``models_from:`` (a suite file, a config block) or the
  environment variable ``MDL_BENCH_MODELS_FROM`` (locations separated by ``os.pathsep``). A location is a folder
  holding ``<Name>.py`` files that define ``class <Name>`` (the built-in rule; other ``.py`` files in the folder
  are not imported), or the dotted name of an importable module (its ``MultiDomainModel`` classes; a package's
  ``<Name>`` submodules too);
* the entry point group ``mdl_bench.models`` of installed distributions: ``Name = pkg.module:Class`` or
  ``anything = pkg.module`` (a module location).

A name defined in two places is an error naming both files. A model file that fails to import is reported on
stderr (one line: path and error) and skipped, so the other models stay usable; asking for its model by name
then raises an error quoting the import failure. The location an external model came from is written into the
run's config as ``models_from`` (:func:`model_location`, see ``benchmark/runner.py``), so a stored run finds its
model again (``mdl-bench rerun``, worker processes) without any option.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import sys
from pathlib import Path

from mdl_bench.kernel.errors import UserError, close_matches, show_value
from .base import MultiDomainModel

_NOT_MODELS = {"base", "registry"}
ENTRY_POINT_GROUP = "mdl_bench.models"
ENV_VAR = "MDL_BENCH_MODELS_FROM"


class _Registry:
    """Everything found so far: ``models`` (name -> class), where each came from, and what failed to import."""

    def __init__(self):
        self.ready = False
        self.models: dict[str, type] = {}
        self.files: dict[str, str] = {}  # name -> the file defining it (for messages)
        self.locations: dict[str, str | None] = {}  # name -> the location to store in models_from (None: built in)
        self.broken: dict[str, str] = {}  # name -> "<path>: <error>" of a model file that failed to import
        self.added: set[str] = set()  # locations already loaded
        self.warned: set[str] = set()
        self.failed: list[str] = []  # imports that failed without a known model name (whole modules)


_state = _Registry()


def _warn(key: str, message: str) -> None:
    if key not in _state.warned:
        _state.warned.add(key)
        print(f"warning: {message}", file=sys.stderr)


def _file_of(cls: type) -> str:
    try:
        return inspect.getsourcefile(cls) or sys.modules[cls.__module__].__file__ or cls.__module__
    except (TypeError, KeyError, AttributeError):
        return cls.__module__


def _register(name: str, cls: type, location: str | None) -> None:
    known = _state.models.get(name)
    if known is cls:
        return
    if known is not None:
        where = "the built-in model" if _state.locations[name] is None else "the model"
        raise UserError(f"model {name!r} of {_file_of(cls)} clashes with {where} {name!r} of {_state.files[name]}; "
                        f"rename the class (and its file)")
    _state.models[name] = cls
    _state.files[name] = _file_of(cls)
    _state.locations[name] = location
    _state.broken.pop(name, None)


def _is_model(obj) -> bool:
    return isinstance(obj, type) and issubclass(obj, MultiDomainModel) and obj is not MultiDomainModel


def _discover_builtin() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg or info.name.startswith("_") or info.name in _NOT_MODELS:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        cls = getattr(module, info.name, None)
        if _is_model(cls):
            _register(info.name, cls, None)


def _error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load_folder(folder: Path, files: list | None = None) -> None:
    """``<folder>/<Name>.py`` defining ``class <Name>``; each imported as its own module (no ``sys.path`` change,
    so a user's file names never shadow installed modules)."""
    tag = hashlib.sha256(str(folder).encode()).hexdigest()[:8]
    for path in sorted(folder.glob("*.py")) if files is None else files:
        name = path.stem
        if not name.isidentifier() or name.startswith("_"):
            continue
        try:  # only files that can define the model are imported (no stray scripts run)
            if not re.search(rf"^\s*class\s+{name}\b", path.read_text(encoding="utf-8", errors="replace"), re.M):
                continue
        except OSError:
            continue
        module_name = f"mdl_bench_models_{tag}.{name}"
        try:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        except Exception as exc:  # any error of the user's file: report it, keep the other models
            sys.modules.pop(module_name, None)
            message = f"{path} failed to import ({_error_text(exc)})"
            _state.broken[name] = message
            _warn(str(path), f"model file {message}; skipped, the other models are available")
            continue
        cls = getattr(module, name, None)
        if _is_model(cls):
            _register(name, cls, str(folder))
        else:
            _warn(str(path), f"model file {path} defines no class {name} deriving from MultiDomainModel (skipped)")


def _module_file(module_name: str) -> str:
    try:
        spec = importlib.util.find_spec(module_name)
    except Exception:
        spec = None
    return spec.origin if spec is not None and spec.origin else module_name


def _load_module(module_name: str, module=None, folder: Path | None = None) -> None:
    """The ``MultiDomainModel`` classes a module defines; for a package also its ``<Name>`` submodules."""
    if module is None:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            if isinstance(exc, ModuleNotFoundError) and exc.name and module_name.startswith(exc.name):
                where = f" (no folder {folder})" if folder is not None else ""
                raise UserError(f"models location {module_name!r} is neither a folder{where} nor an importable "
                                f"module; pass an existing folder (e.g. ./my_models) or an installed module") from None
            message = f"{_module_file(module_name)} failed to import ({_error_text(exc)})"
            _state.failed.append(message)
            _warn(module_name, f"models module {message}; skipped")
            return
    for attr, obj in sorted(vars(module).items()):
        if _is_model(obj) and obj.__module__ == module.__name__ and not attr.startswith("_") and attr == obj.__name__:
            _register(attr, obj, module.__name__)
    for info in pkgutil.iter_modules(getattr(module, "__path__", None) or []):
        if info.ispkg or info.name.startswith("_"):
            continue
        sub = f"{module.__name__}.{info.name}"
        try:
            child = importlib.import_module(sub)
        except Exception as exc:
            message = f"{_module_file(sub)} failed to import ({_error_text(exc)})"
            _state.broken[info.name] = message
            _warn(sub, f"model module {message}; skipped, the other models are available")
            continue
        cls = getattr(child, info.name, None)
        if _is_model(cls):
            _register(info.name, cls, module.__name__)


def _entry_points() -> list:
    from importlib import metadata

    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _discover_entry_points() -> None:
    for ep in _entry_points():
        label = f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP})"
        try:
            obj = ep.load()
        except Exception as exc:
            _state.broken[ep.name] = f"{label} failed to load ({_error_text(exc)})"
            _state.failed.append(_state.broken[ep.name])
            _warn(label, f"model plugin {_state.broken[ep.name]}; skipped, the other models are available")
            continue
        if inspect.ismodule(obj):
            _load_module(obj.__name__, obj)
        elif _is_model(obj):
            _register(obj.__name__, obj, obj.__module__)
        else:
            _warn(label, f"model plugin {label} is neither a module nor a MultiDomainModel class (skipped)")


def normalise_location(location, base_dir: str | os.PathLike | None = None) -> str:
    """A folder as an absolute path (relative ones against ``base_dir``, default the current folder), or a module
    name as given. A value is a folder when it exists as one or looks like a path (``/``, ``.``, ``~``)."""
    text = str(location).strip()
    if not text:
        raise UserError("an empty models location was given; pass a folder or a module name to --models-from / "
                        "models_from")
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = Path(base_dir or os.getcwd()) / path
    looks_like_path = os.sep in text or "/" in text or text.startswith((".", "~")) or text.endswith(".py")
    if path.is_dir() or looks_like_path or not all(part.isidentifier() for part in text.split(".")):
        return str(path.resolve())
    return text


def _as_locations(locations) -> list:
    if locations is None:
        return []
    if isinstance(locations, (str, os.PathLike)):
        return [locations]
    return list(locations)


def add_models_from(locations, base_dir: str | os.PathLike | None = None) -> list[str]:
    """Register the models of each location (a folder or a module name; see the module docstring). Loading a
    location twice is a no-op. Returns the normalised locations."""
    _ensure()
    out = []
    for location in _as_locations(locations):
        key = normalise_location(location, base_dir)
        out.append(key)
        if key in _state.added:
            continue
        if os.path.isabs(key):
            path = Path(key)
            if path.is_file() and path.suffix == ".py":  # one model file
                _load_folder(path.parent, [path])
            elif path.is_dir():
                _load_folder(path)
            else:
                raise UserError(f"models folder {path} does not exist; pass an existing folder (or a <Name>.py "
                                f"file) to --models-from, or fix `models_from`")
        else:
            _load_module(key, folder=Path(base_dir or os.getcwd()) / key)
        _state.added.add(key)  # after loading: a clash raised above is raised again on the next attempt
    return out


def _ensure() -> None:
    if _state.ready:
        return
    _state.ready = True  # set first: the steps below call add_models_from, which calls _ensure
    _discover_builtin()
    _discover_entry_points()
    env = os.environ.get(ENV_VAR)
    if env:
        add_models_from([p for p in env.split(os.pathsep) if p.strip()])


def registry() -> dict[str, type]:
    """All registered models, ``{name: class}``, sorted by name (built-ins, entry points, added locations)."""
    _ensure()
    return dict(sorted(_state.models.items()))


def model_file(name: str) -> str:
    """The file defining a registered model."""
    _ensure()
    return _state.files[name]


def model_location(name: str) -> str | None:
    """Where a registered model was found, as ``models_from`` takes it; ``None`` for a built-in model."""
    _ensure()
    return _state.locations.get(name)


def model_group(name) -> str | None:
    """The leaderboard group of registered model ``name`` (``None`` for a name not registered)."""
    cls = registry().get(str(name))
    return getattr(cls, "group", None) if cls is not None else None


def get_model(name: str, models_from=None) -> type:
    """The class of model ``name``; ``models_from`` (locations, as ``add_models_from`` takes them) are searched
    when the name is not registered yet."""
    _ensure()
    if name not in _state.models and models_from:
        add_models_from(models_from)
    if name in _state.models:
        return _state.models[name]
    if name in _state.broken:
        raise UserError(f"model {name!r} could not be loaded: {_state.broken[name]}; fix the file")
    models = _state.models
    failed = f"; these failed to import: {'; '.join(_state.failed)}" if _state.failed else ""
    raise UserError(f"unknown model {show_value(name)}{close_matches(name, models)}; registered models: "
                    f"{', '.join(sorted(models))} (`mdl-bench models` lists them; a model outside the package needs "
                    f"--models-from DIR or `models_from:`){failed}")


__all__ = ["MultiDomainModel", "registry", "get_model", "add_models_from", "model_location", "model_file", "model_group",
           "normalise_location", "ENTRY_POINT_GROUP", "ENV_VAR"]
