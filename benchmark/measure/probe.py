"""What the analysis reads from a trained model: its expert outputs on a fixed set of rows, and its embedding
tables (as views of the weights, one table at a time), with the training-data frequency of every row.

Everything model-specific comes from the model contract's hooks, never from class names:

* ``model.expert_outputs_for_analysis(X)``: ``E x B x H`` and, per expert, the domain it is bound to or ``None``
  (``None`` for a model without experts). Single Domain's are its K networks run on every row (eq. 1's
  reference), STAR's and PEPNet's their per-domain networks / towers (see the model files).
* ``model.embedding_table_domains``: per table of the main multi-embedding, the domain it belongs to or ``None``
  (Single Domain, SDEM and ME-PLE declare theirs); the base class's ``None`` = every table shared.
"""
from __future__ import annotations

import os

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from mdl_bench.kernel.errors import UserError
from .quantities import OutputMoments


# ---------------------------------------------------------------------------------------------------- models
def read_checkpoint(path) -> dict:
    """The state dict in a checkpoint file (tensors only: ``weights_only``, no code runs), or a one-line
    :class:`UserError` for a missing, empty, truncated or foreign file."""
    import torch

    from mdl_bench.kernel.errors import show_value

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist; rerun the run (mdl-bench rerun RUN_ID) or pass "
                        f"--checkpoint with an existing file") from None
    except IsADirectoryError:
        raise UserError(f"checkpoint {path} is a folder; pass the .model file a run wrote") from None
    except Exception as exc:  # torch raises many types here (EOFError, UnpicklingError, RuntimeError, ...)
        text = str(exc).splitlines()[0] if str(exc).strip() else ""
        reason = ("an empty file" if os.path.getsize(path) == 0
                  else f"{type(exc).__name__}" + (f": {show_value(text, 60)[1:-1]}" if text else ""))
        raise UserError(f"checkpoint {path} is not a PyTorch checkpoint written by a run ({reason}); it may be "
                        f"truncated or another file - pass the .model file a run wrote") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {path} holds a {type(state).__name__}, not a model's weights; pass the .model "
                        f"file a run wrote")
    return state


AUX_LOSS_PREFIX = "aux_loss_fn."  # a model's auxiliary loss module (Crocodile's), whose weights a twin may lack


def load_model(params: dict, checkpoint: str | None = None):
    """The model of a resolved config on CPU, with the weights of ``checkpoint`` when given (else as built)."""
    from mdl_bench.model_zoo import get_model
    from ..data.build import ensure_dataset
    from ..data.build import load_feature_map

    params = {**params, "gpu": -1, "verbose": 0}
    ensure_dataset(params)
    feature_map = load_feature_map(params)
    model = get_model(params["model"], params.get("models_from"))(feature_map, **params)
    if checkpoint is not None:
        state = read_checkpoint(checkpoint)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise UserError(f"checkpoint {checkpoint} does not fit model {params['model']} with this config "
                            f"({str(exc).splitlines()[0]}); pass the config it was trained with") from None
        # A twin trained without the auxiliary loss fits every weight but the loss's own (Trans5's maps), which
        # keep their initial values: how big a loss is on trained experts is measured that way.
        others = [k for k in missing if not k.startswith(AUX_LOSS_PREFIX)]
        if others or unexpected:
            what = (f"missing {others[0]}" if others else f"unexpected {unexpected[0]}")
            raise UserError(f"checkpoint {checkpoint} does not fit model {params['model']} with this config ({what}); "
                            f"pass the config it was trained with") from None
    model.eval()
    return model


def expert_outputs(model, X):
    """``(O, bound)`` with ``O`` of shape ``E x B x H``, or ``None`` for a model without experts (the hook)."""
    return model.expert_outputs_for_analysis(X)


def table_domains(model, module_name: str, num_tables: int) -> list:
    """Per table of the multi-embedding ``module_name``, the domain it belongs to or ``None``."""
    declared = model.embedding_table_domains
    if module_name == "embedding" and declared is not None:
        domains = list(declared)
    else:
        domains = [None] * num_tables
    if len(domains) != num_tables:
        raise ValueError(f"{type(model).__name__}: {len(domains)} table domains for {num_tables} tables")
    return domains


# ---------------------------------------------------------------------------------------------------- rows
def analysis_rows(num_rows: int, wanted: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``wanted`` rows drawn without replacement (all rows when ``wanted`` is 0 or more)."""
    if not wanted or wanted >= num_rows:
        return np.arange(num_rows)
    return np.sort(np.random.default_rng(seed).choice(num_rows, size=wanted, replace=False))


def batches(columns: dict[str, torch.Tensor], rows: np.ndarray, batch_size: int = 4096
            ) -> Iterator[dict[str, torch.Tensor]]:
    """The chosen rows of in-memory split columns, in order, as model input batches."""
    index = torch.from_numpy(np.asarray(rows, dtype=np.int64))
    for start in range(0, len(index), batch_size):
        part = index[start:start + batch_size]
        yield {name: column.index_select(0, part) for name, column in columns.items()}


@dataclass
class ExpertStats:
    """A model's experts on the analysis rows: ``norms`` ``E x N``, ``bound`` per expert, running moments."""

    norms: np.ndarray
    bound: list
    moments: OutputMoments


@torch.no_grad()
def collect_experts(model, batch_iter) -> ExpertStats | None:
    """Expert output norms and moments over all batches; ``None`` when the model has no experts."""
    model.eval()
    norms, bound, moments = [], None, None
    for batch in batch_iter:
        X = model.get_inputs(batch)
        got = expert_outputs(model, X)
        if got is None:
            return None
        O, bound = got
        O = O.detach().float().cpu()
        if moments is None:
            moments = OutputMoments(O.shape[0], O.shape[2])
        moments.update(O.numpy())
        norms.append(torch.linalg.vector_norm(O, dim=2).double().numpy())
    if moments is None:
        return None
    return ExpertStats(np.concatenate(norms, axis=1), list(bound), moments)


@torch.no_grad()
def loss_terms(model, batch_iter, seed: int = 0) -> dict | None:
    """The terms of the training loss on the given rows, row-weighted means: ``{"bce": ..., <aux name>: ...}``
    (each auxiliary term as the model weights it, e.g. ``alpha * CovLoss``); ``None`` for a model without
    auxiliary losses.

    Computed with every layer in evaluation mode (running statistics, no dropout) and only the model's own
    ``training`` flag set, since the models compute their auxiliary losses in training only; so the terms are
    those of the trained weights, without the noise of a training step. ``seed`` fixes a loss's row sample."""
    model.eval()
    sums: dict[str, float] = {}
    rows = 0
    torch.manual_seed(seed)
    model.training = True  # the top module's flag alone: the auxiliary losses are computed, no layer trains
    try:
        for batch in batch_iter:
            out = model(batch)
            total = model.add_loss(out, model.get_labels(batch))
            aux = {name: float(value) for name, value in (out.get("aux_losses") or {}).items()}
            n = int(out["logit"].shape[0])
            for name, value in {"bce": float(total) - sum(aux.values()), **aux}.items():
                sums[name] = sums.get(name, 0.0) + value * n
            rows += n
    finally:
        model.training = False
    if rows == 0 or len(sums) < 2:
        return None
    return {name: value / rows for name, value in sums.items()}


# ---------------------------------------------------------------------------------------------------- tables
@dataclass
class TableRef:
    """One embedding table of one field: columns ``[slot*D, (slot+1)*D)`` of a field's weight (``slot`` = ``index``
    for a :class:`MultiEmbedding`, whose tables sit side by side in one weight; 0 for a table of a
    :class:`SeparateTables`, which has a weight of its own).

    ``view()`` returns those columns as a numpy view sharing the weight's memory (CPU weights; a CUDA weight is
    copied one table at a time)."""

    module: str
    field: str
    index: int
    domain: int | None
    weight: torch.nn.Parameter
    dim: int
    slot: int | None = None  # the column block of ``weight``; None: ``index``

    @property
    def name(self) -> str:
        return f"{self.module}.{self.field}[{self.index}]"

    @property
    def columns(self) -> slice:
        """The table's columns of ``weight``."""
        slot = self.index if self.slot is None else self.slot
        return slice(slot * self.dim, (slot + 1) * self.dim)

    def view(self) -> np.ndarray:
        columns = self.columns
        weight = self.weight.detach()
        if weight.device.type != "cpu":
            return weight[:, columns].cpu().numpy()  # one table's copy, freed by the caller
        return weight.numpy()[:, columns]


def embedding_tables(model, fields: list[str] | None = None) -> list[TableRef]:
    """Every table of every categorical field of every multi-embedding of the model (the main ``embedding``
    first), as :class:`TableRef`; ``fields`` restricts the fields. A :class:`SeparateTables` counts as one
    multi-embedding whose table ``p`` is its ``p``-th one-table :class:`MultiEmbedding`."""
    refs = []
    for name, module, tables in _multi_embeddings(model):
        domains = table_domains(model, name, len(tables))
        for field in module.fields:
            if fields is not None and field not in fields:
                continue
            for index, (table, slot) in enumerate(tables):
                layers = table.embedding.embedding_layer.embedding_layers
                layer = layers[field] if field in layers else None
                if isinstance(layer, torch.nn.Embedding):
                    refs.append(TableRef(name, field, index, domains[index], layer.weight, module.embedding_dim, slot))
    return refs


def _multi_embeddings(model) -> list[tuple]:
    """``(name, module, tables)`` of every multi-embedding of ``model``, the main ``embedding`` first; ``tables``
    lists each table as ``(the MultiEmbedding holding it, its column block there)``."""
    from mdl_bench.model_zoo.layers import MultiEmbedding, SeparateTables

    found, inner = [], set()
    for name, module in model.named_modules():
        if isinstance(module, SeparateTables):
            found.append((name, module, [(table, 0) for table in module.tables]))
            inner.update(id(table) for table in module.tables)
    for name, module in model.named_modules():
        if isinstance(module, MultiEmbedding) and id(module) not in inner:
            found.append((name, module, [(module, index) for index in range(module.num_tables)]))
    return sorted(found, key=lambda item: (item[0] != "embedding", item[0]))


def train_frequencies(columns: dict[str, torch.Tensor], fields: list[str], vocab_sizes: dict[str, int],
                      domain: np.ndarray | None = None, num_domains: int = 0) -> dict:
    """``{field: {"all": counts, s: counts of domain s}}``: how often each embedding row occurs in training."""
    out = {}
    for field in fields:
        values = columns[field].numpy().astype(np.int64)
        size = vocab_sizes[field]
        per = {"all": np.bincount(values, minlength=size)[:size]}
        if domain is not None:
            for s in range(num_domains):
                per[s] = np.bincount(values[domain == s], minlength=size)[:size]
        out[field] = per
    return out


def frequency_groups(counts: np.ndarray, groups: int = 5) -> list[np.ndarray]:
    """Rows seen in training, most frequent first, cut into ``groups`` groups of equal size (figure 2b's
    exposure groups; group 0 = the highest frequencies). Rows never seen are left out."""
    seen = np.flatnonzero(counts > 0)
    order = seen[np.argsort(-counts[seen], kind="stable")]
    return [part for part in np.array_split(order, groups) if len(part)]
