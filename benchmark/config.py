"""FuxiCTR-style experiment configs, loaded with the same merge rule and checked before anything runs.

A config folder holds ``model_config.yaml`` (or ``model_config/*.yaml``) with a ``Base`` block and one block per
experiment id, and ``dataset_config.yaml`` (or ``dataset_config/*.yaml``) keyed by dataset id. A user's folder
(``--config DIR``) is layered over the packaged one: its blocks are added, and a block (``Base`` included) whose
id the packaged configs have replaces that block whole, so one new expid needs one block, not a copy. The resolved
parameters of an expid are ``Base`` <- expid block <- dataset block, exactly as ``fuxictr.utils.load_config``
merges them. Unlike FuxiCTR, every key is checked: a key that neither the trainer, the dataset nor the model
takes is a one-line error naming the key, the expid and the file.
"""
from __future__ import annotations

import copy
import glob
import inspect
import os
from pathlib import Path
from typing import Any

import yaml

from mdl_bench.kernel.errors import UserError, close_matches, show_value
from .data.roles import dataset_defaults, resolve_fields
from mdl_bench.kernel.paths import expand_path, packaged_config_dir
from .schema import DATASET_TYPES, TRAINER_TYPES

# Keys read by the trainer and the run script, and keys of a dataset block: their types are in .schema.
RUN_KEYS = set(TRAINER_TYPES)
DATASET_KEYS = set(DATASET_TYPES)
PATH_KEYS = ("data_root", "train_data", "valid_data", "test_data", "model_root")


def _yaml_files(config_dir: Path, stem: str) -> list[Path]:
    single = config_dir / f"{stem}.yaml"
    if single.is_file():
        return [single]
    return sorted(Path(p) for p in glob.glob(str(config_dir / stem / "*.yaml")))


def _read_yaml(path: Path) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where} is not valid YAML ({getattr(exc, 'problem', exc)}); fix the file") from None
    except OSError as exc:
        raise UserError(f"cannot read config file {path} ({exc.strerror}); check the path and permissions") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must map ids to blocks (a YAML mapping at top level); fix the file")
    return data


def resolve_config_dir(config_dir: str | os.PathLike | None) -> Path:
    """The user's config folder, or the packaged one when ``None``."""
    if config_dir is None:
        return packaged_config_dir()
    path = Path(config_dir).expanduser()
    if path.is_file():
        raise UserError(f"--config {path} is a file; pass the folder holding model_config.yaml and "
                        f"dataset_config.yaml (or omit --config for the packaged configs)")
    if not path.is_dir():
        raise UserError(f"config folder {path} does not exist; pass --config DIR with a folder holding "
                        f"model_config.yaml and dataset_config.yaml, or omit --config for the packaged configs")
    if not _yaml_files(path, "model_config") and not _yaml_files(path, "dataset_config"):
        raise UserError(f"config folder {path} has neither model_config.yaml nor dataset_config.yaml; add your "
                        f"blocks there (they are layered over the packaged configs) or omit --config")
    return path


class ConfigSet:
    """All model and dataset blocks of the packaged config folder and, layered over it, a user's folder, with the
    file each block came from."""

    def __init__(self, config_dir: str | os.PathLike | None = None):
        self.dir = resolve_config_dir(config_dir)
        self.models: dict[str, dict] = {}
        self.model_files: dict[str, Path] = {}
        self.base: dict = {}
        self.base_file: Path | None = None
        self.datasets: dict[str, dict] = {}
        self.dataset_files: dict[str, Path] = {}
        packaged = packaged_config_dir()
        for folder in [packaged] + ([self.dir] if self.dir.resolve() != packaged.resolve() else []):
            self._read(folder)

    def _read(self, folder: Path) -> None:
        """Add one folder's blocks; a block replaces an earlier one of the same id whole (never key by key)."""
        for path in _yaml_files(folder, "model_config"):
            for key, block in _read_yaml(path).items():
                key = str(key)
                if block is not None and not isinstance(block, dict):
                    raise UserError(f"expid {key!r} in {path} must be a mapping of parameters; fix the file")
                if key == "Base":
                    self.base = dict(block or {})
                    self.base_file = path
                    continue
                self.models[key] = dict(block or {})
                self.model_files[key] = path
        for path in _yaml_files(folder, "dataset_config"):
            for key, block in _read_yaml(path).items():
                if block is not None and not isinstance(block, dict):
                    raise UserError(f"dataset {key!r} in {path} must be a mapping of parameters; fix the file")
                self.datasets[str(key)] = dict(block or {})
                self.dataset_files[str(key)] = path

    @property
    def expids(self) -> list[str]:
        return sorted(self.models)

    def expids_command(self) -> str:
        """The command that lists these expids (with ``--config`` when a user's folder is layered in)."""
        import shlex

        packaged = self.dir.resolve() == packaged_config_dir().resolve()
        return "mdl-bench expids" + ("" if packaged else f" --config {shlex.quote(str(self.dir))}")

    def model_params(self, expid: str) -> dict:
        if expid not in self.models:
            known = ", ".join(self.expids[:12]) + (" ..." if len(self.expids) > 12 else "")
            raise UserError(f"unknown expid {show_value(expid)}{close_matches(expid, self.models)} in {self.dir}; "
                            f"`{self.expids_command()}` lists them (e.g. {known})")
        params = copy.deepcopy(self.base)
        params.update(copy.deepcopy(self.models[expid]))
        if "dataset_id" not in params:
            raise UserError(f"expid {expid!r} in {self.model_files[expid]} has no `dataset_id`; add the id of a "
                            f"block in dataset_config.yaml")
        params["model_id"] = expid
        return params

    def dataset_params(self, dataset_id: str) -> dict:
        if dataset_id not in self.datasets:
            raise UserError(f"unknown dataset_id {show_value(dataset_id)}{close_matches(dataset_id, self.datasets)}; "
                            f"known datasets in {self.dir}: {', '.join(sorted(self.datasets)) or 'none'}")
        params = {"dataset_id": dataset_id}
        params.update(copy.deepcopy(self.datasets[dataset_id]))
        return params

    def dataset_resolved(self, dataset_id: str) -> dict:
        """A dataset block with what its roles and values imply (:func:`.data.roles.dataset_defaults`): the keys a
        resolved config takes from it."""
        return dataset_defaults(self.dataset_params(dataset_id))

    def load(self, expid: str, overrides: dict | None = None) -> dict:
        """Resolved parameters of ``expid``: Base <- expid block <- dataset block (FuxiCTR's order) <- overrides.

        ``overrides`` (from the command line or a suite) win over everything and may change ``dataset_id``.
        Then the dataset's roles are resolved (:mod:`.data.roles`): role names in ``*_fields`` keys become its
        field names, gAUC's group defaults to the user role, and ``domain_names`` takes its resolved form.
        """
        overrides = dict(overrides or {})
        params = self.model_params(expid)
        if "dataset_id" in overrides:
            params["dataset_id"] = overrides["dataset_id"]
        params.update(self.dataset_params(params["dataset_id"]))
        params.update(overrides)
        dataset_defaults(params)
        resolve_fields(params, expid, str(self.dataset_files.get(params["dataset_id"], "")) or None)
        for key in PATH_KEYS:
            if key in params:
                params[key] = expand_path(params[key])
        return params


    def sources(self, expid: str, overrides: dict | None = None, origin: str | dict | None = None) -> dict[str, str]:
        """Where each key of :meth:`load`'s result came from (a file, or ``origin`` for the overrides: one text for
        all, or one per key), for messages; the same precedence as :meth:`load`."""
        out = {k: str(self.base_file) for k in self.base}
        out.update({k: str(self.model_files[expid]) for k in self.models.get(expid, {})})
        overrides = overrides or {}
        dataset_id = overrides.get("dataset_id", {**self.base, **self.models.get(expid, {})}.get("dataset_id"))
        if dataset_id in self.datasets:
            out.update({k: str(self.dataset_files[dataset_id]) for k in self.datasets[dataset_id]})
        for key in overrides:
            out[key] = (origin.get(key) if isinstance(origin, dict) else origin) or "the overrides"
        return out


def model_parameters(model_class) -> dict[str, inspect.Parameter]:
    """Keyword parameters accepted by a model class: its own ``__init__``'s and its bases' (a subclass's wins)."""
    out: dict[str, inspect.Parameter] = {}
    for klass in reversed(inspect.getmro(model_class)):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for name, p in inspect.signature(init).parameters.items():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in ("self", "feature_map"):
                out[name] = p
    return out


def model_keys(model_class) -> set[str]:
    """The keyword names a model class accepts (:func:`model_parameters`)."""
    return set(model_parameters(model_class))


def check_keys(params: dict, model_class, expid: str, config: ConfigSet | None = None,
               sources: dict | None = None) -> None:
    """One-line error for the first key that nothing takes (``sources``: where each key came from)."""
    allowed = RUN_KEYS | DATASET_KEYS | model_keys(model_class)
    for key in params:
        if key not in allowed:
            source = (sources or {}).get(key) or (config.model_files.get(expid, config.dir) if config else None)
            where = f" (from {source})" if source else ""
            key = show_value(key)[1:-1] if isinstance(key, str) else key
            raise UserError(f"config key {key!r} of expid {expid!r}{where} is not a parameter of model "
                            f"{model_class.__name__}{close_matches(key, allowed)}; fix or remove it")


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=True, default_flow_style=None)


def parse_set(items) -> dict:
    """``["a=1", "b=[1, 2]"]`` -> ``{"a": 1, "b": [1, 2]}``; values are YAML (never evaluated as code)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE, got {show_value(item)}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"--set {show_value(key.strip())[1:-1]}: {show_value(value)} is not a valid YAML value; "
                            f"quote it") from None
    return out
