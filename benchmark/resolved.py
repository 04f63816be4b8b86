"""One run, resolved once: :class:`ResolvedRun` (its checked and typed parameters, the model class, its identity
and config hash, and the fingerprint of the code it runs), made by :func:`resolve_run` from an expid, or by
:meth:`ResolvedRun.of` from parameters resolved before (a suite's plan, a stored run), and passed as it is from
the command line or the suite to the runner and to every data-parallel rank.

:func:`resolve` is the one resolution: ``Base`` <- expid block <- dataset block <- overrides
(:class:`~mdl_bench.benchmark.config.ConfigSet`), then every key checked against the typed schema, the dataset's
fields and domains, the synthetic generator's options and the device.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from mdl_bench.kernel.errors import UserError
from . import schema
from .config import ConfigSet, check_keys, model_parameters
from .data import synth
from .data.build import domain_names as dataset_domain_names

# Keys that say where a run's files live or how it prints, not what it computes: left out of its config hash.
HASH_EXCLUDED = ("verbose", "model_id", "model_root", "data_root", "train_data", "valid_data", "test_data",
                 "rebuild_dataset", "seed", "models_from")


def hashed_config(params: dict) -> dict:
    """The part of a resolved config that defines a run's results (everything but :data:`HASH_EXCLUDED`)."""
    return {k: v for k, v in params.items() if k not in HASH_EXCLUDED}


def config_hash(params: dict) -> str:
    """SHA-256 (hex) of the canonical JSON of :func:`hashed_config`; key order does not matter."""
    payload = json.dumps(hashed_config(params), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def run_model_id(expid: str, params: dict, digest: str | None = None, code: str = "") -> str:
    """A run's file name, ``<expid>__s<seed>__<hash8>[__<code8>]``: one per resolved config and seed (``digest``:
    its :func:`config_hash`, when known) and, in a suite, per code revision (so an outdated run's checkpoint and
    log stay beside the rerun's)."""
    digest = digest or config_hash(params)
    return f"{expid}__s{int(params.get('seed') or 0)}__{digest[:8]}" + (f"__{code[:8]}" if code else "")




@dataclass(frozen=True)
class ResolvedRun:
    """One run's resolved configuration, made once and passed through.

    ``params`` are checked and typed (every key known, values converted), with the run's final ``seed`` and
    ``model_id``; ``config_hash`` is :func:`config_hash` of them; ``code`` the fingerprint of the model's code
    (:func:`~mdl_bench.benchmark.codeid.code_fingerprint`; ``""`` when not taken). Pickled (to a data-parallel
    rank, a suite's worker) it carries its parameters and finds its model class again by name, without resolving
    anything."""

    expid: str
    params: dict = field(repr=False)
    model_class: type = field(repr=False)
    config_hash: str = ""
    code: str = ""

    @classmethod
    def of(cls, expid: str, params: dict, model_class: type | None = None, code: str = "") -> "ResolvedRun":
        """A run of parameters resolved before (a suite's plan, a stored config): nothing is read or checked
        again; the model class is found by name when not given."""
        if model_class is None:
            from mdl_bench.model_zoo import get_model

            model_class = get_model(params["model"], params.get("models_from"))
        return cls(expid=expid, params=params, model_class=model_class, config_hash=config_hash(params), code=code)

    def __reduce__(self):
        return (_rebuild, (self.expid, self.params, self.config_hash, self.code))

    @property
    def model(self) -> str:
        return str(self.params["model"])

    @property
    def model_id(self) -> str:
        return str(self.params["model_id"])

    @property
    def seed(self) -> int:
        return int(self.params.get("seed") or 0)

    @property
    def dataset_id(self) -> str:
        return str(self.params["dataset_id"])

    @property
    def short_hash(self) -> str:
        return self.config_hash[:8]


def _rebuild(expid: str, params: dict, digest: str, code: str) -> ResolvedRun:
    from mdl_bench.model_zoo import get_model

    return ResolvedRun(expid, params, get_model(params["model"], params.get("models_from")), digest, code)


def resolve_run(expid: str, config_dir=None, overrides: dict | None = None, origin: str | dict | None = None,
                name_by_config: bool = False) -> ResolvedRun:
    """Resolve ``expid`` once (:func:`resolve`). ``name_by_config``: unless the overrides name the run
    (``model_id``), its files are named :func:`run_model_id` (by expid, seed and config hash, as a suite names
    them), so runs of one expid with other ``--set`` values never share a checkpoint or log."""
    params, model_class, _ = resolve(expid, config_dir, overrides, origin)
    digest = config_hash(params)
    if name_by_config and "model_id" not in (overrides or {}):
        params["model_id"] = run_model_id(expid, params, digest)
    return ResolvedRun(expid=expid, params=params, model_class=model_class, config_hash=digest)


def resolve(expid: str, config_dir=None, overrides: dict | None = None,
            origin: str | dict | None = None) -> tuple[dict, type, ConfigSet]:
    """Resolved and checked parameters, the model class and the config set (nothing is written).

    Every key is checked against the typed schema (:mod:`.schema`) and converted where needed (``"1e-3"`` ->
    ``0.001``); ``origin`` names where the overrides came from (``--set``, a suite file; one text or one per key)
    for the error message. A model from outside the package gets ``models_from`` (where it was found; not hashed)
    in the params, so the stored config of its runs finds it again in worker processes and reruns."""
    from mdl_bench.model_zoo import get_model, model_location

    config = ConfigSet(config_dir)
    params = config.load(expid, overrides)
    if not params.get("model"):
        raise UserError(f"expid {expid!r} has no `model`; add `model: <Name>` (see `mdl-bench models`)")
    model_class = get_model(params["model"], params.get("models_from"))
    if model_location(params["model"]) is not None:
        params["models_from"] = model_location(params["model"])
    sources = config.sources(expid, overrides, origin)
    check_keys(params, model_class, expid, config, sources)
    params = schema.validate(params, model_class, sources)
    dataset_domain_names(params)  # checks domain_field / domains / domain_names early
    check_dataset_fields(expid, params, model_class, config)
    if isinstance(params.get("synth"), dict):  # the generator's options, checked before anything is generated
        options = dict(params["synth"])
        try:
            synth.make_spec(options.pop("preset", "kuairand_like"), **options)
        except UserError as exc:
            raise UserError(f"{exc} (in `synth` of dataset {params['dataset_id']!r}, from "
                            f"{sources.get('synth', 'its dataset block')})") from None
    check_device(params)
    return params, model_class, config


def check_dataset_fields(expid: str, params: dict, model_class, config: ConfigSet) -> None:
    """Before anything is built: the fields a model's ``*_fields`` default names are fields of the dataset (the
    configured ones were resolved and checked with the config), and gAUC has its user grouping."""
    from .data.roles import check_field_list, declared_roles

    roles = None
    for name, p in model_parameters(model_class).items():
        if name.endswith("_fields") and name not in params and isinstance(p.default, (list, tuple)) and p.default:
            if roles is None:
                roles = declared_roles({**config.dataset_params(params["dataset_id"]), **params})
            check_field_list(params, name, list(p.default), expid, roles, default=True)
    monitor = params.get("monitor")
    wanted = list(params.get("metrics") or []) + (list(monitor) if isinstance(monitor, dict) else [str(monitor)])
    if any(str(m).startswith("gAUC") for m in wanted) and not params.get("group_id"):
        raise UserError(f"expid {expid!r} on dataset {params['dataset_id']!r}: gAUC groups rows by user, but the "
                        f"dataset names no user; declare `roles: {{user: <column>}}` in its dataset block (gAUC then "
                        f"groups by that column), or name a `group_id` meta column, or drop gAUC from `metrics` and "
                        f"`monitor`")


def check_device(params: dict) -> None:
    """A ``gpu`` this machine does not have is an error (FuxiCTR would quietly train on the CPU instead)."""
    gpu = params.get("gpu", -1)
    if gpu is None or int(gpu) < 0:
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    have = f"{count} GPU(s), 0..{count - 1}" if count else "no usable CUDA GPU"
    if int(gpu) >= count:
        raise UserError(f"gpu {gpu} was asked for, but this machine has {have}; pass --gpu -1 (CPU) or the index "
                        f"of a GPU it has")
    nproc = int(params.get("nproc") or 1)
    if nproc > count:  # data-parallel ranks on GPU take one GPU per local rank (distributed.init)
        raise UserError(f"nproc {nproc} on GPU needs {nproc} GPUs (one per process), but this machine has {have}; "
                        f"lower nproc or pass --gpu -1")


