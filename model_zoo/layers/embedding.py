"""Embedding layers shared by the models: multi-embedding and the prior embedding of Crocodile's gates."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from fuxictr.pytorch.layers import FeatureEmbedding

from mdl_bench.benchmark.errors import UserError


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

    Shapes:
        ``forward(X)`` returns ``M x B x F x D``; ``flat(X)`` returns ``M x B x (F*D)``.
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
        self.fields = list(fields) if fields is not None else [
            n for n, s in feature_map.features.items() if s.get("type") != "meta"]
        self.num_fields = len(self.fields)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim * num_tables,
                                          embedding_initializer=embedding_initializer,
                                          required_feature_columns=self.fields if fields is not None else None)

    @property
    def output_dim(self) -> int:
        """Width of one flattened table, ``F * D``."""
        return self.num_fields * self.embedding_dim

    def forward(self, X: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(X)  # B x F x (M*D)
        B, F, _ = emb.shape
        return emb.view(B, F, self.num_tables, self.embedding_dim).permute(2, 0, 1, 3)

    def flat(self, X: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(X)  # B x F x (M*D)
        B, F, _ = emb.shape
        return emb.view(B, F, self.num_tables, self.embedding_dim).permute(2, 0, 1, 3).reshape(
            self.num_tables, B, F * self.embedding_dim)


def check_fields(feature_map, fields: Sequence[str], option: str, model: str) -> list[str]:
    """Every name in ``fields`` must be a model input of the dataset; else a one-line error naming both."""
    inputs = [n for n, s in feature_map.features.items() if s.get("type") != "meta"]
    for name in fields:
        if name not in inputs:
            raise UserError(f"{model}: `{option}` names field {name!r}, which dataset {feature_map.dataset_id!r} "
                            f"lacks (its fields: {', '.join(inputs)}); fix `{option}` in the model config")
    return list(fields)
