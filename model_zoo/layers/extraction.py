"""PLE's extraction levels (CGC layers) with domains in place of tasks, and STEM's variant of the gate.

One level holds ``K`` groups of domain-specific experts and one group of shared experts, all computed as one
:class:`BatchedMLP` (``E = K * n_specific + n_shared`` MLPs; order: domain 0's experts, ..., domain K-1's,
then the shared ones). A level reads ``K + 1`` *streams*: stream ``s < K`` feeds domain ``s``'s experts and
gate, stream ``K`` the shared experts and the shared gate. The first level of a single-embedding model reads
one ``B x I`` input for every stream; a multi-embedding model gives each stream its own embedding slice; a
later level reads the previous level's mixtures.

Gates (softmax over experts; ``g`` a gate's weights, ``O^e`` expert outputs):

* domain gate ``s``, ``gate_scope="own"`` (PLE's CGC): ``t^s = sum_e g^s_e O^e`` over domain ``s``'s experts
  and the shared ones only; other domains' experts get exactly zero weight (and so no gradient from ``s``).
* domain gate ``s``, ``gate_scope="all"`` (STEM's "all forward, task-specific backward" gate): over every
  expert, with the *other* domains' specific experts entering detached: ``t^s = sum_{e in own, shared} g^s_e
  O^e + sum_{e of other domains} g^s_e stopgrad(O^e)``. The gate itself gets gradient through all terms.
* the gate of domain ``s`` reads stream ``s`` (``gate_input="stream"``) or the sum of stream ``s`` and the
  shared stream (``"stream+shared"``, STEM's released code: ``gate(x[i] + x[-1])``).
* shared gate (``shared_gate=True``; PLE's non-final levels): mixes every expert (no detach) on the shared
  stream and gives the next level its shared stream.

Rows routed to their own domain (``own``): a row's prediction needs only its own domain's mixture of the last
level, so there the domain gates run on their own domain's rows only, and each row mixes only the experts its
gate sees. With ``gate_scope="own"`` the last level's domain-specific experts feed nothing but their domain's
mixture, so they too run on their own domain's rows only (batch-norm statistics included, as the towers); with
``"all"`` every gate reads every expert, so the experts run on every row. Earlier levels run in full: their shared
gate mixes every expert on every row, and the next level's experts of domain ``s`` read domain ``s``'s stream.

Shapes (``B`` batch, ``I`` input width, ``H`` expert output width, ``K`` domains, ``E`` experts):
    ``ExtractionLayer.forward(x)``: ``x`` ``(K+1) x B x I`` or ``B x I`` -> ``(K+1) x B x H`` with the shared
    gate, else ``K x B x H`` (row ``s`` = domain ``s``'s mixture, for every row of the batch).
    ``ExtractionLayer.own(x, groups)`` (a level without shared gate): -> ``B x H``, each row's own domain's
    mixture.
    ``ExtractionNetwork.forward(x)``: -> ``(K x B x H_last, E x B x H_last)``, the last level's domain mixtures
    and its expert outputs; ``ExtractionNetwork.own(x, groups)``: -> ``B x H_last``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from mdl_bench.kernel.errors import UserError
from .experts import BatchedMLP
from .routing import DomainGroups
from .slots import single

GATE_SCOPES = ("own", "all")
GATE_INPUTS = ("stream", "stream+shared")


class ExtractionLayer(nn.Module):
    """One extraction level (a CGC layer), domains as tasks.

    Args:
        num_domains: ``K``.
        input_dim: ``I``, the width of every stream.
        hidden_units: widths of every expert MLP; the last is ``H``.
        num_specific: experts per domain.
        num_shared: shared experts.
        gate_scope: ``"own"`` (PLE) or ``"all"`` (STEM, other domains' experts detached).
        gate_input: ``"stream"`` or ``"stream+shared"``.
        shared_gate: add the shared gate and return the shared stream (non-final levels).
        gate_hidden_units: hidden layers of every gate (none in PLE's paper: one linear map + softmax).
    """

    def __init__(self, num_domains: int, input_dim: int, hidden_units: Sequence[int], num_specific: int = 1,
                 num_shared: int = 1, gate_scope: str = "own", gate_input: str = "stream",
                 shared_gate: bool = False, gate_hidden_units: Sequence[int] = (), activation: str = "ReLU",
                 dropout: float = 0.0, batch_norm: bool = False):
        super().__init__()
        if gate_scope not in GATE_SCOPES:
            raise UserError(f"gate_scope must be one of {', '.join(GATE_SCOPES)}, got {gate_scope!r}; fix `gate_scope`")
        if gate_input not in GATE_INPUTS:
            raise UserError(f"gate_input must be one of {', '.join(GATE_INPUTS)}, got {gate_input!r}; fix `gate_input` "
                            f"in the model config")
        if num_specific < 0 or num_shared < 0 or num_specific + num_shared < 1:
            raise UserError(f"an extraction level needs at least one expert (num_specific={num_specific}, "
                            f"num_shared={num_shared}); set num_specific_experts / num_shared_experts >= 1")
        if shared_gate and num_shared < 1:
            raise UserError("a non-final extraction level needs shared experts for its shared gate; set "
                            "num_shared_experts >= 1 or num_levels: 1")
        K = num_domains
        self.num_domains, self.num_specific, self.num_shared = K, int(num_specific), int(num_shared)
        self.num_experts = E = K * self.num_specific + self.num_shared
        self.gate_scope, self.gate_input, self.has_shared_gate = gate_scope, gate_input, bool(shared_gate)
        # stream read by each expert, and the domain each expert is bound to (None: shared)
        self.bound = [s for s in range(K) for _ in range(self.num_specific)] + [None] * self.num_shared
        stream = [K if b is None else b for b in self.bound]
        self.register_buffer("expert_stream", torch.tensor(stream, dtype=torch.long), persistent=False)
        self.identity_streams = stream == list(range(K + 1))  # one expert per stream: no gather needed
        # live[s, e]: expert e is domain s's own or shared (gradient flows); visible[s, e]: gate s weighs e
        live = torch.tensor([[b is None or b == s for b in self.bound] for s in range(K)])
        visible = live if gate_scope == "own" else torch.ones(K, E, dtype=torch.bool)
        self.register_buffer("live", live.float(), persistent=False)
        self.register_buffer("visible_index", torch.stack([v.nonzero().view(-1) for v in visible]),
                             persistent=False)  # K x E_visible
        self.experts = BatchedMLP(E, input_dim, hidden_units, activation=activation, dropout=dropout,
                                  batch_norm=batch_norm)
        self.output_dim = self.experts.output_dim
        n_visible = self.visible_index.shape[1]
        self.domain_gates = BatchedMLP(K, input_dim, gate_hidden_units, output_dim=n_visible, activation=activation)
        self.shared_gate = (BatchedMLP(1, input_dim, gate_hidden_units, output_dim=E, activation=activation)
                            if self.has_shared_gate else None)

    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """``(K+1) x B x I`` or ``B x I`` -> expert outputs ``E x B x H``."""
        if x.dim() == 3 and not self.identity_streams:
            x = x.index_select(0, self.expert_stream)
        return self.experts(x)

    def gate_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(g, g_shared)``: each domain gate's weights over all ``E`` experts, ``K x B x E`` (exactly 0 where
        the gate cannot see an expert), and the shared gate's ``B x E`` (``None`` without a shared gate)."""
        K = self.num_domains
        if x.dim() == 2:
            gate_in, shared_in = x, x
        else:
            gate_in, shared_in = x[:K], x[K]
            if self.gate_input == "stream+shared":
                gate_in = gate_in + shared_in
        visible = torch.softmax(self.domain_gates(gate_in), dim=-1)  # K x B x E_visible
        weights = visible.new_zeros(K, visible.shape[1], self.num_experts)
        weights = weights.scatter(2, self.visible_index.unsqueeze(1).expand_as(visible), visible)
        shared = torch.softmax(single(self.shared_gate(shared_in)), dim=-1) if self.shared_gate is not None else None
        return weights, shared

    def combine(self, expert_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mix ``E x B x H`` expert outputs with the gates of input ``x`` -> ``(K[+1]) x B x H``."""
        weights, shared = self.gate_weights(x)
        out = torch.einsum("kbe,ebh->kbh", weights * self.live.unsqueeze(1), expert_out)
        if self.gate_scope == "all":  # other domains' experts: forward their values, send them no gradient
            out = out + torch.einsum("kbe,ebh->kbh", weights * (1.0 - self.live).unsqueeze(1), expert_out.detach())
        if shared is not None:
            out = torch.cat([out, torch.einsum("be,ebh->bh", shared, expert_out).unsqueeze(0)], dim=0)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(self.expert_outputs(x), x)

    def own(self, x: torch.Tensor, groups: DomainGroups) -> torch.Tensor:
        """Each row's own domain's mixture, ``B x H`` in batch order: what ``forward(x)[domain[b], b]`` gives in
        evaluation mode, with domain ``s``'s gate (and, under ``gate_scope="own"``, its specific experts) run on
        the rows of ``s`` only. For the last level (no shared gate)."""
        if self.has_shared_gate:
            raise ValueError("own: a level with a shared gate feeds every stream of the next level; use forward")
        K, n = self.num_domains, self.num_specific
        if x.dim() == 2:
            own_in = shared_in = groups.sort(x)
        else:
            own_in, shared_in = groups.own(x[:K]), groups.sort(x[K])  # sorted rows
        gate_in = own_in + shared_in if x.dim() == 3 and self.gate_input == "stream+shared" else own_in
        g = torch.softmax(self.domain_gates.routed(gate_in, groups, sorted_rows=True), dim=-1)  # B x E_visible
        if self.gate_scope == "own":  # visible: own specific experts (n), then the shared ones, in expert order
            parts = []
            if n:
                parts.append(self.experts.routed(own_in, groups, sorted_rows=True, per_domain=n))  # n x B x H
            if self.num_shared:
                parts.append(self.experts.subset(shared_in, K * n, self.num_shared))  # n_shared x B x H
            out = torch.einsum("be,ebh->bh", g, torch.cat(parts, dim=0))
        else:  # every expert, every row: other domains' experts forward their values, send no gradient
            expert_out = groups.sort(self.expert_outputs(x), dim=1)  # E x B x H, sorted
            live = self.live.index_select(0, groups.sorted_domain)  # B x E
            out = (torch.einsum("be,ebh->bh", g * live, expert_out)
                   + torch.einsum("be,ebh->bh", g * (1.0 - live), expert_out.detach()))
        return groups.unsort(out)


def split_levels(hidden_units: Sequence[int], num_levels: int, model: str) -> list[list[int]]:
    """Split one expert stack into ``num_levels`` consecutive, equally deep levels: ``[256, 128]`` over 2
    levels is ``[[256], [128]]`` (same weights as one [256, 128] expert, with a mixing step in between)."""
    units, levels = list(hidden_units), int(num_levels)
    if levels < 1 or not units or len(units) % levels:
        raise UserError(f"{model}: expert_hidden_units {units} cannot be split into num_levels={num_levels} equal "
                        f"levels; give a number of layers divisible by num_levels")
    depth = len(units) // levels
    return [units[i * depth:(i + 1) * depth] for i in range(levels)]


class ExtractionNetwork(nn.Module):
    """Stacked extraction levels (PLE): every level but the last has a shared gate.

    Args:
        level_hidden_units: expert widths of each level (see :func:`split_levels`).
        other arguments: as :class:`ExtractionLayer`, the same for every level.

    Attributes:
        bound: domain index of each expert of the last level, ``None`` for a shared one.
    """

    def __init__(self, num_domains: int, input_dim: int, level_hidden_units: Sequence[Sequence[int]],
                 num_specific: int = 1, num_shared: int = 1, gate_scope: str = "own", gate_input: str = "stream",
                 gate_hidden_units: Sequence[int] = (), activation: str = "ReLU", dropout: float = 0.0,
                 batch_norm: bool = False):
        super().__init__()
        levels, dim = [], input_dim
        for i, units in enumerate(level_hidden_units):
            level = ExtractionLayer(num_domains, dim, units, num_specific, num_shared, gate_scope, gate_input,
                                    shared_gate=i < len(level_hidden_units) - 1, gate_hidden_units=gate_hidden_units,
                                    activation=activation, dropout=dropout, batch_norm=batch_norm)
            levels.append(level)
            dim = level.output_dim
        self.levels = nn.ModuleList(levels)
        self.output_dim = dim
        self.bound = list(self.levels[-1].bound)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for level in self.levels[:-1]:
            x = level(x)
        last = self.levels[-1]
        expert_out = last.expert_outputs(x)
        return last.combine(expert_out, x), expert_out

    def own(self, x: torch.Tensor, groups: DomainGroups) -> torch.Tensor:
        """Each row's own domain's last-level mixture, ``B x H_last`` (see :meth:`ExtractionLayer.own`)."""
        for level in self.levels[:-1]:
            x = level(x)
        return self.levels[-1].own(x, groups)
