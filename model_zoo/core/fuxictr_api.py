"""Every name of FuxiCTR this package touches, in one place.

The package stands on FuxiCTR 2.3.10 (pinned): its ``BaseModel`` (constructor, optimiser and loss set-up, weight
initialisation, inputs, regularisers, checkpoint loading), its feature encoders and layers, its feature map and
builder, and a few utilities. Every other module imports FuxiCTR's names from here, never from ``fuxictr``
directly (``tests/test_fuxictr_api.py`` checks both: that no other module imports ``fuxictr``, and that every name
and attribute listed here exists in the installed release with the meaning used here), so a FuxiCTR release that
renames or removes one fails one test that names it.

Names are imported on first use (:func:`__getattr__`), so importing this module loads nothing of FuxiCTR: the
command line's ``--help`` stays fast, and FuxiCTR's stock data loader (Ray) is only loaded where it is compared.

The training loop is this package's own (:mod:`.training`); of ``BaseModel``'s training machinery only what its
constructor sets is read, once, by :func:`trainer_settings`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

#: ``name -> (FuxiCTR module, attribute)``: every FuxiCTR class and function the package uses.
NAMES: dict[str, tuple[str, str]] = {
    "BaseModel": ("fuxictr.pytorch.models", "BaseModel"),
    "FeatureEmbedding": ("fuxictr.pytorch.layers", "FeatureEmbedding"),
    "FeatureEmbeddingDict": ("fuxictr.pytorch.layers", "FeatureEmbeddingDict"),
    "MLP_Block": ("fuxictr.pytorch.layers", "MLP_Block"),
    "get_activation": ("fuxictr.pytorch.torch_utils", "get_activation"),
    "get_regularizer": ("fuxictr.pytorch.torch_utils", "get_regularizer"),
    "seed_everything": ("fuxictr.pytorch.torch_utils", "seed_everything"),
    "set_logger": ("fuxictr.utils", "set_logger"),
    "print_to_json": ("fuxictr.utils", "print_to_json"),
    "FeatureMap": ("fuxictr.features", "FeatureMap"),
    "FeatureProcessor": ("fuxictr.preprocess.feature_processor", "FeatureProcessor"),
    # FuxiCTR's own pipeline, run beside this package's by `mdl-bench perf` only
    "build_dataset": ("fuxictr.preprocess", "build_dataset"),
    "RankDataLoader": ("fuxictr.pytorch.dataloaders", "RankDataLoader"),
    "evaluate_metrics": ("fuxictr.metrics", "evaluate_metrics"),
}

#: The ``BaseModel`` methods the package's models call or override (the test checks their parameters).
BASE_MODEL_METHODS: dict[str, tuple[str, ...]] = {
    "__init__": ("feature_map", "model_id", "task", "gpu", "monitor", "save_best_only", "monitor_mode",
                 "early_stop_patience", "eval_steps", "embedding_regularizer", "net_regularizer",
                 "reduce_lr_on_plateau"),
    "compile": ("optimizer", "loss", "lr"),
    "reset_parameters": (),
    "get_inputs": ("inputs", "feature_source"),
    "get_labels": ("inputs",),
    "model_to_device": (),
    "regularization_loss": (),
    "compute_loss": ("return_dict", "y_true"),
    "load_weights": ("checkpoint",),
    "save_weights": ("checkpoint",),
    "get_output_activation": ("task",),
}

#: The attributes ``BaseModel.__init__`` sets that :func:`trainer_settings` reads (name -> what it holds).
BASE_MODEL_ATTRIBUTES: dict[str, str] = {
    "_monitor": "fuxictr.utils.Monitor of the `monitor` option (get_value(logs), get_metrics())",
    "_monitor_mode": "`monitor_mode`: 'max' or 'min'",
    "_early_stop_patience": "`early_stop_patience`: plateaus in a row that stop training",
    "_eval_steps": "`eval_steps`: validate every this many steps (None: once per epoch)",
    "_save_best_only": "`save_best_only`: write the checkpoint only when the monitor improves",
    "_reduce_lr_on_plateau": "`reduce_lr_on_plateau`: multiply the learning rate by 0.1 at each plateau",
    "_embedding_regularizer": "`embedding_regularizer`",
    "_net_regularizer": "`net_regularizer`",
    "_verbose": "`verbose`: progress bars when > 0",
    "device": "torch.device of `gpu`",
    "checkpoint": "absolute path of the weights file, <model_root>/<dataset_id>/<model_id>.model",
    "validation_metrics": "`metrics`",
}


def __getattr__(name: str) -> Any:
    """``from ...fuxictr_api import X``: FuxiCTR's ``X``, imported now."""
    if name not in NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = NAMES[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # the next access is a plain module attribute
    return value


def version() -> str:
    """The installed FuxiCTR release (``"?"`` when its metadata cannot be read)."""
    from importlib import metadata

    try:
        return metadata.version("fuxictr")
    except metadata.PackageNotFoundError:
        return "?"


@dataclass(frozen=True)
class TrainerSettings:
    """What FuxiCTR's constructor made of the trainer options, in this package's names."""

    monitor: Any  # fuxictr.utils.Monitor: get_value(logs) -> float, get_metrics() -> list of metric names
    monitor_mode: str
    early_stop_patience: int
    eval_steps: int | None
    save_best_only: bool
    reduce_lr_on_plateau: bool
    embedding_regularizer: Any
    net_regularizer: Any
    verbose: int


def trainer_settings(model) -> TrainerSettings:
    """Read, once after ``BaseModel.__init__``, the trainer options it stored under its private names."""
    return TrainerSettings(
        monitor=model._monitor, monitor_mode=str(model._monitor_mode),
        early_stop_patience=int(model._early_stop_patience), eval_steps=model._eval_steps,
        save_best_only=bool(model._save_best_only), reduce_lr_on_plateau=bool(model._reduce_lr_on_plateau),
        embedding_regularizer=model._embedding_regularizer, net_regularizer=model._net_regularizer,
        verbose=int(model._verbose))
