"""The parts of a mixture-of-experts step, as closures for :meth:`MultiDomainModel.step_components`.

Models built as embedding -> experts -> gate and mixing -> domain towers (Crocodile, ME-MMoE) split their step
the same way; each supplies its own layers and this builds the closures ``mdl-bench perf`` times.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .gates import mix_own
from .routing import DomainGroups


def mixture_step_components(embed: Callable[[], torch.Tensor], emb: torch.Tensor,
                            experts: Callable[[torch.Tensor], torch.Tensor], expert_out: torch.Tensor,
                            gate: Callable[[torch.Tensor], torch.Tensor], towers: nn.Module, domain: torch.Tensor,
                            aux: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                            ) -> dict[str, Callable[[], torch.Tensor]]:
    """``{"embedding", "experts", "gate", "towers", *aux}``: closures whose ``backward()`` is that part's backward.

    Each part after the embedding starts from a detached copy (a leaf) of what the step feeds it, computed
    beforehand by the caller, so that timing a closure times that part alone.

    Args:
        embed: the embedding lookup of the batch, with gradients (``tables x B x (F*D)``).
        emb: its output, computed once without gradients (``tables x B x (F*D)``).
        experts: the experts on (a leaf of) ``emb``, ``-> E x B x H``.
        expert_out: their output, computed once without gradients (``E x B x H``).
        gate: each row's own-domain weights from (a leaf of) ``emb``, ``-> B x E`` or ``B x E x H``; whatever
            else the gate reads (e.g. a prior embedding) it looks up itself.
        towers: the domain towers, ``B x H`` and the rows' domain groups -> logits ``B``.
        domain: tower index of every row, ``B``.
        aux: auxiliary losses on (a leaf of) ``expert_out``, each returning a scalar, by name.
    """
    leaf_emb = emb.detach().requires_grad_(True)
    leaf_out = expert_out.detach().requires_grad_(True)
    leaf_mix = expert_out[0].detach().requires_grad_(True)  # B x H: a tower input of the mixture's shape
    parts: dict[str, Callable[[], torch.Tensor]] = {
        "embedding": lambda: embed().sum(),
        "experts": lambda: experts(leaf_emb).sum(),
        "gate": lambda: mix_own(leaf_out, gate(leaf_emb)).sum(),
        "towers": lambda: towers(leaf_mix, DomainGroups(domain, towers.mlp.num_mlps)).sum(),
    }
    for name, loss in (aux or {}).items():
        parts[name] = lambda loss=loss: loss(leaf_out)
    return parts
