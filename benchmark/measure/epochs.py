"""Information Abundance over training epochs (figure 2): a recorder attached to a run.

With the run option ``record_ia: true`` the runner attaches an :class:`IARecorder` to the model's step callbacks.
It takes a snapshot before the first step (epoch 0) and after the last step of every epoch (the state FuxiCTR
evaluates and checkpoints), and rewrites ``<checkpoint stem>.ia_epochs.json`` each time, so a killed run keeps
the epochs it finished. A snapshot holds, per table of the recorded fields (default: user and item ids), the IA of
all its rows and of its training-frequency groups, and the IA of every expert's output on a fixed probe of
validation rows. Costs: one Gram matrix per table (``D x D``, chunked) and one forward pass over the probe.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .quantities import information_abundance, singular_values
from .probe import (batches, collect_experts, embedding_tables, frequency_groups, train_frequencies)

SUFFIX = ".ia_epochs.json"
DEFAULT_FIELDS = ("user_id", "item_id")


def ia_epochs_path(checkpoint: str) -> Path:
    return Path(checkpoint).with_suffix(SUFFIX)


def _nan_to_none(value: float):
    return None if value is None or not np.isfinite(value) else float(value)


def table_snapshot(model, frequencies: dict, groups: int, fields) -> list[dict]:
    """IA of each table of ``fields`` (all rows and per frequency group), one table at a time."""
    out = []
    for ref in embedding_tables(model, list(fields)):
        view = ref.view()
        entry = {"table": ref.name, "module": ref.module, "field": ref.field, "index": ref.index,
                 "domain": ref.domain, "ia": _nan_to_none(information_abundance(singular_values(view)))}
        per = frequencies.get(ref.field)
        if per is not None and ref.module == "embedding":
            counts = per["all" if ref.domain is None else ref.domain]
            entry["ia_groups"] = [_nan_to_none(information_abundance(singular_values(view, rows)))
                                  for rows in frequency_groups(counts, groups)]
        out.append(entry)
        del view
    return out


class IARecorder:
    """Step callback recording IA snapshots at epoch ends (see the module docstring).

    Args:
        model: the model being trained.
        train_columns: the training split's tensors (for the frequencies of the table rows).
        probe_columns: tensors of the split the expert outputs are measured on (validation).
        path: the JSON file to (re)write.
        fields: fields whose tables are recorded.
        probe_rows: rows of the probe split used for the expert outputs.
        groups: number of frequency groups.
    """

    def __init__(self, model, train_columns: dict, probe_columns: dict, path, fields=DEFAULT_FIELDS,
                 probe_rows: int = 4096, groups: int = 5):
        self.model, self.path, self.groups = model, Path(path), int(groups)
        inputs = [n for n, s in model.feature_map.features.items() if s.get("type") == "categorical"]
        self.fields = [f for f in fields if f in inputs]
        vocab = {f: int(model.feature_map.features[f]["vocab_size"]) for f in self.fields}
        domain = model.domain_lookup.cpu()[train_columns[model.domain_field].long()].numpy()
        self.frequencies = train_frequencies(train_columns, self.fields, vocab, domain, model.num_domains)
        n = int(next(iter(probe_columns.values())).shape[0])
        self.probe = {k: v[:min(n, probe_rows)] for k, v in probe_columns.items()}
        self.snapshots: list[dict] = []
        self.snapshot(0)

    @torch.no_grad()
    def snapshot(self, epoch: int) -> None:
        model = self.model
        was_training = model.training
        model.eval()
        try:
            record = {"epoch": epoch, "tables": table_snapshot(model, self.frequencies, self.groups, self.fields)}
            rows = np.arange(int(next(iter(self.probe.values())).shape[0]))
            stats = collect_experts(model, batches(self.probe, rows))
            if stats is not None:
                record["experts"] = [{"expert": e, "bound": stats.bound[e],
                                      "ia": _nan_to_none(information_abundance(sigma))}
                                     for e, sigma in enumerate(stats.moments.expert_singular_values())]
        finally:
            model.train(was_training)
        self.snapshots.append(record)
        self.write()

    def write(self) -> None:
        payload = {"model": type(self.model).__name__, "domain_names": list(self.model.domain_names),
                   "fields": self.fields, "groups": self.groups, "snapshots": self.snapshots}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(payload, indent=1))
        os.replace(tmp, self.path)

    def __call__(self, info: dict) -> None:
        if info["batch"] == info["batches"] - 1:
            self.snapshot(int(info["epoch"]) + 1)


def attach_ia_recorder(model, params: dict, train_loader, probe_loader) -> IARecorder | None:
    """Attach a recorder when the run's config says ``record_ia: true`` (or a list of fields); else nothing."""
    option = params.get("record_ia")
    if not option:
        return None
    fields = DEFAULT_FIELDS if option is True else [str(f) for f in option]
    if not hasattr(train_loader, "columns"):
        from mdl_bench.kernel.errors import UserError

        raise UserError("record_ia needs the training split in memory, but this dataset is built in parts "
                        "(data_block_size > 0); set data_block_size: 0 or drop record_ia")
    recorder = IARecorder(model, train_loader.columns, probe_loader.columns, ia_epochs_path(model.checkpoint),
                          fields=fields)
    model.step_callbacks.append(recorder)
    return recorder


def read_ia_epochs(checkpoint: str) -> dict | None:
    path = ia_epochs_path(checkpoint)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
