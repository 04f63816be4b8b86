"""The model zoo: one model per file, found by name.

A module ``model_zoo/<Name>.py`` that defines a class ``<Name>`` deriving from
:class:`~mdl_bench.model_zoo.base.MultiDomainModel` is a model; ``model: <Name>`` in a config selects it. No
hand-kept list: adding the file is enough.
"""
from __future__ import annotations

import importlib
import pkgutil

from mdl_bench.benchmark.errors import UserError, close_matches
from .base import MultiDomainModel

_NOT_MODELS = {"base", "registry"}
_registry: dict[str, type] | None = None


def _discover() -> dict[str, type]:
    found: dict[str, type] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg or info.name.startswith("_") or info.name in _NOT_MODELS:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        cls = getattr(module, info.name, None)
        if isinstance(cls, type) and issubclass(cls, MultiDomainModel):
            found[info.name] = cls
    return dict(sorted(found.items()))


def registry() -> dict[str, type]:
    """All registered models, ``{name: class}``, sorted by name."""
    global _registry
    if _registry is None:
        _registry = _discover()
    return dict(_registry)


def get_model(name: str) -> type:
    models = registry()
    if name not in models:
        raise UserError(f"unknown model {name!r}{close_matches(name, models)}; registered models: "
                        f"{', '.join(models)} (`mdl-bench models` lists them)")
    return models[name]


__all__ = ["MultiDomainModel", "registry", "get_model"]
