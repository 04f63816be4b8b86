"""Which code a stored run's numbers come from: a fingerprint of the source that computes them, per model.

A run's identity in the results store is ``(config hash, seed, code fingerprint)``. The fingerprint of a model
covers the files whose code can change its numbers:

* the model's own file and, followed through its imports (those inside functions too), every module of this
  package - or of the model's own folder, for a model from ``--models-from`` - that it uses: its layers, the base
  class and what they import (metrics, collectives). Imports resolve *by name*: ``from .layers import GateNU``
  depends on the module that defines ``GateNU``, not on every layer re-exported by ``layers/__init__.py``;
* the run path that every model shares (:data:`RUN_PATH`: the runner, the data build, loader and generator),
  following only their module-level imports, so that the command-line and suite machinery a runner reaches
  inside functions (suite, store, leaderboard, analysis) never counts.

Modules whose effect is already part of a run's identity elsewhere are left out (:data:`NOT_CODE`): config
resolution (the resolved config itself is hashed), paths, error messages and console reports.

Each file counts by the hash of its syntax tree with docstrings removed: comments, docstrings and layout do not
outdate stored runs; any change to code does. Why per model: a fix in ``PEPNet.py`` must rerun PEPNet alone, a
fix in a layer the models that use it, and a change to the documentation, the leaderboard or an unrelated model nothing.
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import sys
import types
from pathlib import Path

PACKAGE = "mdl_bench"
RUN_PATH = ("mdl_bench.benchmark.runner", "mdl_bench.benchmark.data.build", "mdl_bench.benchmark.data.loader",
            "mdl_bench.benchmark.data.synth")
NOT_CODE = frozenset({"mdl_bench.benchmark.config", "mdl_bench.benchmark.schema", "mdl_bench.kernel.paths",
                      "mdl_bench.kernel.errors", "mdl_bench.benchmark.report",
                      "mdl_bench.benchmark.resolved"})
# The model zoo is followed through every import; above it (the benchmark), only module-level imports.
FOLLOW_ALL_IMPORTS = ("mdl_bench.model_zoo",)

_cache: dict[tuple[str, str], "CodeFingerprint"] = {}


class CodeFingerprint:
    """``digest`` (16 hex digits) over ``files``: ``{module name: hash of its code}`` (12 hex digits each)."""

    def __init__(self, files: dict[str, str]):
        self.files = dict(sorted(files.items()))
        payload = "\n".join(f"{name}:{digest}" for name, digest in self.files.items())
        self.digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    def changed_files(self, stored: dict | None) -> list[str]:
        """The modules whose code differs from a stored ``files`` mapping (added or removed ones too)."""
        stored = stored or {}
        return sorted(n for n in set(self.files) | set(stored) if self.files.get(n) != stored.get(n))


def code_hash(source: str) -> str:
    """Hash of a module's syntax tree without docstrings: comments, docstrings and formatting do not count."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    dump = ast.dump(tree, annotate_fields=False, include_attributes=False)
    return hashlib.sha256(dump.encode("utf-8")).hexdigest()[:12]


def _absolute(module: types.ModuleType, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.__package__ or ""
    parts = package.split(".") if package else []
    base = parts[:len(parts) - node.level + 1] if node.level > 1 else parts
    return ".".join(base + ([node.module] if node.module else []))


def _imported(module: types.ModuleType, tree: ast.Module, everywhere: bool) -> list[types.ModuleType]:
    """The modules whose code ``module`` uses: for ``from M import a``, the module that defines ``a``."""
    nodes = ast.walk(tree) if everywhere else _module_level(tree)
    out: list[types.ModuleType] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found = _load(alias.name)
                out += [found] if found else []
        elif isinstance(node, ast.ImportFrom):
            name = _absolute(module, node)
            source = _load(name)
            if source is None:
                continue
            for alias in node.names:
                obj = getattr(source, alias.name, None)
                if obj is None:
                    obj = _load(f"{name}.{alias.name}")
                if isinstance(obj, types.ModuleType):
                    out.append(obj)
                else:
                    defined_in = sys.modules.get(getattr(obj, "__module__", None) or "")
                    out.append(defined_in if defined_in is not None and inspect.getmodule(obj) is defined_in
                               else source)
    return out


def _module_level(tree: ast.Module):
    """Import nodes executed at import time: the module body and its ``if``/``try`` blocks, not functions."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                stack.extend(getattr(node, field, []) or [])
        elif isinstance(node, ast.ExceptHandler):
            stack.extend(node.body)


def _load(name: str) -> types.ModuleType | None:
    if not name:
        return None
    if name in sys.modules:
        return sys.modules[name]
    if not name.startswith(PACKAGE + "."):
        return None  # outside the package: its version is stored, its code is not ours to hash
    try:
        return importlib.import_module(name)
    except Exception:
        return None


def _in_scope(module: types.ModuleType, own_folder: Path | None) -> bool:
    if module.__name__ in NOT_CODE:
        return False
    if module.__name__ == PACKAGE or module.__name__.startswith(PACKAGE + "."):
        return True
    path = getattr(module, "__file__", None)
    return own_folder is not None and path is not None and Path(path).resolve().is_relative_to(own_folder)


def _key(module: types.ModuleType, own_folder: Path | None) -> str:
    if module.__name__.startswith(PACKAGE) or own_folder is None:
        return module.__name__
    return "models_from:" + Path(module.__file__).resolve().relative_to(own_folder).as_posix()


def _walk(roots: list[types.ModuleType], own_folder: Path | None) -> dict[str, str]:
    files: dict[str, str] = {}
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        module = stack.pop()
        if module.__name__ in seen or not _in_scope(module, own_folder):
            continue
        seen.add(module.__name__)
        path = getattr(module, "__file__", None)
        if not path or not path.endswith(".py"):
            continue
        source = Path(path).read_text(encoding="utf-8")
        files[_key(module, own_folder)] = code_hash(source)
        everywhere = not module.__name__.startswith(PACKAGE + ".") or \
            any(module.__name__.startswith(p) for p in FOLLOW_ALL_IMPORTS)
        stack.extend(_imported(module, ast.parse(source), everywhere))
    return files


def code_fingerprint(model: str, models_from=None) -> CodeFingerprint:
    """The fingerprint of model ``model``'s code and the shared run path (cached per process)."""
    from mdl_bench.model_zoo import get_model

    cls = get_model(model, models_from)
    module = sys.modules[cls.__module__]
    key = (model, getattr(module, "__file__", "") or "")
    if key not in _cache:
        own_folder = None
        if not cls.__module__.startswith(PACKAGE + "."):
            own_folder = Path(module.__file__).resolve().parent
        roots = [module] + [importlib.import_module(name) for name in RUN_PATH]
        _cache[key] = CodeFingerprint(_walk(roots, own_folder))
    return _cache[key]


def clear_cache() -> None:
    """Forget computed fingerprints (tests that edit a model's source in place)."""
    _cache.clear()


__all__ = ["CodeFingerprint", "code_fingerprint", "code_hash", "clear_cache", "RUN_PATH", "NOT_CODE"]
