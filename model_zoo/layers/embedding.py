"""Embedding layers shared by the models: multi-embedding and the prior embedding of Crocodile's gates."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from mdl_bench.model_zoo.core.fuxictr_api import FeatureEmbedding

from mdl_bench.kernel.errors import UserError
from .slots import single


class MultiEmbedding(nn.Module):
    """``M`` embedding tables for the same fields, stored as one FeatureEmbedding of width ``M * D``.

    This is STEM's trick: one lookup per field returns all ``M`` embeddings of a feature side by side, and the
    ``p``-th slice of width ``D`` is table ``p``. It keeps FuxiCTR's encoders (numeric, sequence pooling,
    sharing) and costs one gather per field whatever ``M`` is.

    Args:
        feature_map: FuxiCTR feature map.
        embedding_dim: ``D``, the width of one table.
        num_tables: ``M``.
        fields: restrict the tables to these fields (all non-meta fields when ``None``).

    Field order: FuxiCTR's ``FeatureEmbedding`` returns fields in *feature-map* order whatever order they were
    asked for, so :attr:`fields` lists them in that order (the order of the ``F`` axis), never in the order of
    ``fields``. A caller that wants named fields asks :meth:`positions` or :meth:`select` by name instead of
    indexing by its own list.

    Shapes:
        ``forward(X)`` returns ``M x B x F x D``; ``flat(X)`` returns ``M x B x (F*D)``;
        ``select(emb, names)`` takes ``... x F x D`` to ``... x len(names) x D``.
    """

    def __init__(self, feature_map, embedding_dim: int, num_tables: int = 1,
                 fields: Sequence[str] | None = None,
                 embedding_initializer: str = "partial(nn.init.normal_, std=1e-4)"):
        super().__init__()
        if num_tables < 1:
            raise UserError(f"the number of embedding tables must be at least 1, got {num_tables}")
        for name, spec in feature_map.features.items():
            if spec.get("type") != "meta" and (fields is None or name in fields) and "embedding_dim" in spec:
                raise UserError(f"feature {name!r} sets its own embedding_dim; multi-domain models here need one "
                                f"width for all fields, so remove it from feature_cols")
        self.embedding_dim = embedding_dim
        self.num_tables = num_tables
        wanted = None if fields is None else set(fields)
        self.fields = [n for n, s in feature_map.features.items()
                       if s.get("type") != "meta" and (wanted is None or n in wanted)]
        if wanted is not None and len(self.fields) != len(wanted):
            missing = sorted(wanted - set(self.fields))
            raise UserError(f"MultiEmbedding: fields {', '.join(map(repr, missing))} are not model inputs of "
                            f"dataset {feature_map.dataset_id!r}")
        self.num_fields = len(self.fields)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim * num_tables,
                                          embedding_initializer=embedding_initializer,
                                          required_feature_columns=self.fields if fields is not None else None)

    @property
    def output_dim(self) -> int:
        """Width of one flattened table, ``F * D``."""
        return self.num_fields * self.embedding_dim

    def positions(self, names: Sequence[str]) -> list[int]:
        """Index on the ``F`` axis of each field in ``names`` (in the order of ``names``)."""
        try:
            return [self.fields.index(n) for n in names]
        except ValueError:
            unknown = [n for n in names if n not in self.fields]
            raise UserError(f"MultiEmbedding: fields {', '.join(map(repr, unknown))} are not among its fields "
                            f"({', '.join(self.fields)})") from None

    def select(self, emb: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """The named fields of an embedding ``... x F x D`` (from :meth:`forward`), in the order of ``names``."""
        return take_fields(emb, self.positions(names))

    def forward(self, X: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(X)  # B x F x (M*D)
        B, F, _ = emb.shape
        return emb.view(B, F, self.num_tables, self.embedding_dim).permute(2, 0, 1, 3)

    def flat(self, X: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(X)  # B x F x (M*D)
        B, F, _ = emb.shape
        return emb.view(B, F, self.num_tables, self.embedding_dim).permute(2, 0, 1, 3).reshape(
            self.num_tables, B, F * self.embedding_dim)


class SeparateTables(nn.Module):
    """``M`` embedding tables for the same fields, each its own :class:`MultiEmbedding` of one table (width ``D``):
    its own parameters, so that each table can be optimised, regularised, frozen and restored on its own.

    It reads as a multi-embedding of ``M`` tables (``num_tables``, ``embedding_dim``, ``fields``, ``forward``,
    ``flat``), at ``M`` lookups per field instead of :class:`MultiEmbedding`'s one. Table ``p`` is
    ``tables[p]`` (FuxiCTR's encoders inside); :meth:`routed` looks table ``s`` up for the rows of domain ``s``
    only (one lookup per row and field in all, whatever ``M``).

    Args:
        feature_map: FuxiCTR feature map.
        embedding_dim: ``D``.
        num_tables: ``M``.

    Shapes:
        ``forward(X)``: ``M x B x F x D``; ``flat(X)``: ``M x B x (F*D)`` (every table on every row);
        ``routed(X, groups)`` (``M = K``): ``K`` tensors ``n_s x (F*D)``, table ``s`` on the ``n_s`` rows of domain
        ``s`` (in :class:`~model_zoo.layers.DomainGroups`' sorted order).
    """

    def __init__(self, feature_map, embedding_dim: int, num_tables: int,
                 embedding_initializer: str = "partial(nn.init.normal_, std=1e-4)"):
        super().__init__()
        if num_tables < 1:
            raise UserError(f"the number of embedding tables must be at least 1, got {num_tables}")
        self.tables = nn.ModuleList([MultiEmbedding(feature_map, embedding_dim, 1,
                                                    embedding_initializer=embedding_initializer)
                                     for _ in range(num_tables)])
        self.embedding_dim, self.num_tables = embedding_dim, num_tables
        self.fields, self.num_fields = self.tables[0].fields, self.tables[0].num_fields

    @property
    def output_dim(self) -> int:
        """Width of one flattened table, ``F * D``."""
        return self.num_fields * self.embedding_dim

    def positions(self, names: Sequence[str]) -> list[int]:
        """Index on the ``F`` axis of each field in ``names`` (see :meth:`MultiEmbedding.positions`)."""
        return self.tables[0].positions(names)

    def select(self, emb: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """The named fields of an embedding ``... x F x D``, in the order of ``names``."""
        return take_fields(emb, self.positions(names))

    def forward(self, X: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([single(table(X)) for table in self.tables])

    def flat(self, X: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([single(table.flat(X)) for table in self.tables])

    def routed(self, X: dict[str, torch.Tensor], groups) -> list[torch.Tensor]:
        """Table ``s`` on the rows of domain ``s`` (``groups``: the batch's
        :class:`~model_zoo.layers.DomainGroups`); a domain without rows gets ``0 x (F*D)``, its table still in
        the autograd graph (data-parallel training needs every parameter there)."""
        per_domain = {name: groups.split(value) for name, value in X.items()}  # field -> K blocks of rows
        return [single(table.flat({name: blocks[s] for name, blocks in per_domain.items()}))
                for s, table in enumerate(self.tables)]


def take_fields(emb: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
    """Fields ``positions`` of ``... x F x D``. ``index_select``, whose backward is deterministic on the CPU
    (``emb[..., positions, :]`` backpropagates through ``index_put_`` with accumulation)."""
    return emb.index_select(emb.dim() - 2, torch.as_tensor(positions, device=emb.device))


def check_fields(feature_map, fields: Sequence[str], option: str, model: str) -> list[str]:
    """The fields of a model option that names fields, in feature-map order and without repeats.

    Every name must be a model input of the dataset (else a one-line error naming both). Returning a canonical
    order makes a model independent of the order the option lists its fields in: ``[a, b]`` and ``[b, a]`` build
    the same model (same parameters, same outputs), and no caller can pair a field with the wrong position."""
    inputs = [n for n, s in feature_map.features.items() if s.get("type") != "meta"]
    if isinstance(fields, str):
        fields = [fields]
    for name in fields:
        if name not in inputs:
            raise UserError(f"{model}: `{option}` names field {name!r}, which dataset {feature_map.dataset_id!r} "
                            f"lacks (its fields: {', '.join(inputs)}); fix `{option}` in the model config")
    wanted = set(fields)
    return [n for n in inputs if n in wanted]


class FieldSelection:
    """The fields a model option names (``prior_fields``, ``aux_fields``, ...), taken *by name* from the output
    of one :class:`MultiEmbedding`.

    A model builds one per option and calls it on that table's output; the model contract finds every
    selection of a model (:meth:`MultiDomainModel.field_selections`) and checks that, in a real forward pass,
    slot ``j`` holds the embedding of ``fields[j]`` (``tests/test_models.py``).

    Args:
        option: the model option's name, e.g. ``"ppnet_prior_fields"``.
        fields: the option's fields, as :func:`check_fields` returns them (feature-map order).
        table: the embedding whose output is selected from.

    Shapes:
        ``__call__(emb)``: ``... x F x D`` -> ``... x len(fields) x D``.
    """

    def __init__(self, option: str, fields: Sequence[str], table: MultiEmbedding):
        self.option, self.fields, self.table = option, list(fields), table
        self.positions = table.positions(self.fields)
        self.identity = self.positions == list(range(table.num_fields))
        self.record = False  # set by the contract check: keep the last output in ``last``
        self.last: torch.Tensor | None = None

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        out = emb if self.identity else take_fields(emb, self.positions)
        if self.record:
            self.last = out
        return out
