"""Structural units as slabs of parameters, and per-unit sums of a weight map over them.

A unit (a query head, a KV group, an FFN neuron) owns equal-width slabs of some parameters: rows of
q/k/v (and their biases), columns of o_proj; rows of gate/up, columns of down_proj. A `Piece` says
where one kind of slab lies in one parameter — `units` consecutive slabs of `width` entries along
`dim`, starting at `start` (fused projections such as Phi-3's `qkv_proj` hold several pieces). The
layout comes from a model adapter, so this module stays pure: it sums, selects and slices tensors.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from surgery.errors import require


@dataclass(frozen=True)
class Piece:
    """`units` slabs of `width` entries along `dim` of parameter `param`, from offset `start`."""

    param: str
    dim: int
    start: int
    width: int
    units: int

    def index(self, kept: torch.Tensor) -> torch.Tensor:
        """Positions along `dim` that the `kept` units own (in unit order)."""
        kept = kept.to(torch.long).cpu()
        return (self.start + kept.view(-1, 1) * self.width + torch.arange(self.width)).reshape(-1)

    def sums(self, t: torch.Tensor) -> torch.Tensor:
        """Per-unit sums of `t` (fp64 on CPU)."""
        part = t.detach().narrow(self.dim, self.start, self.units * self.width).to("cpu", torch.float64)
        part = part.movedim(self.dim, 0).reshape(self.units, self.width, -1)
        return part.sum(dim=(1, 2))


@dataclass(frozen=True)
class UnitSet:
    """The units of one kind in one block: their count and the pieces they own.

    `output` is the piece in the sub-layer's output projection (columns of o_proj / down_proj):
    what the pruning solver removes. `weights` are the pieces counted in the parameter budget
    (biases excluded).
    """

    kind: str  # "heads" | "kv_groups" | "neurons"
    layer: int
    count: int
    pieces: tuple[Piece, ...]
    output: Piece | None = None
    prunable: bool = True
    reason: str = ""

    def sums(self, scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Σ of `scores` over every slab each unit owns; absent parameters count as zero."""
        out = torch.zeros(self.count, dtype=torch.float64)
        for p in self.pieces:
            if p.param in scores:
                require(p.units == self.count, f"{p.param}: {p.units} slabs for {self.count} units")
                out += p.sums(scores[p.param])
        return out

    def params_per_unit(self, shapes: Mapping[str, tuple[int, ...]]) -> int:
        """Weights one unit owns across its pieces (biases, 1-D, excluded)."""
        total = 0
        for p in self.pieces:
            shape = shapes[p.param]
            if len(shape) < 2:
                continue
            other = 1
            for d, n in enumerate(shape):
                if d != p.dim:
                    other *= n
            total += p.width * other
        return total


@dataclass
class BlockLayout:
    """Every unit set of one block, by kind."""

    layer: int
    units: dict[str, UnitSet] = field(default_factory=dict)


@dataclass
class StructuralScores:
    """Per-layer unit scores: `heads[l]` [H], `kv_groups[l]` [KV], `neurons[l]` [I]."""

    heads: list[torch.Tensor]
    kv_groups: list[torch.Tensor]
    neurons: list[torch.Tensor]

    def as_dict(self) -> dict[str, list[list[float]]]:
        return {
            "heads": [t.tolist() for t in self.heads],
            "kv_groups": [t.tolist() for t in self.kv_groups],
            "neurons": [t.tolist() for t in self.neurons],
        }


def reduce_structural(scores: Mapping[str, torch.Tensor], layout: list[BlockLayout]) -> StructuralScores:
    """Unit scores for every block of `layout` (fp64, CPU)."""
    out = StructuralScores([], [], [])
    for block in layout:
        for kind, store in (("heads", out.heads), ("kv_groups", out.kv_groups), ("neurons", out.neurons)):
            us = block.units.get(kind)
            store.append(us.sums(scores) if us is not None else torch.zeros(0, dtype=torch.float64))
    return out


def slice_tensor(t: torch.Tensor, pieces: list[Piece], kept: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """`t` with only the kept units' slabs of `pieces` (all on one dim, in order; `kept` for all of
    them or one per piece); entries of that dim outside every piece are kept as they are."""
    require(len({p.dim for p in pieces}) == 1, "pieces of one parameter must share a dim")
    dim = pieces[0].dim
    kept_of = list(kept) if isinstance(kept, list) else [kept] * len(pieces)
    idx, cursor = [], 0
    for p, k in sorted(zip(pieces, kept_of), key=lambda pk: pk[0].start):
        idx += [torch.arange(cursor, p.start), p.index(k)]
        cursor = p.start + p.units * p.width
    idx.append(torch.arange(cursor, t.shape[dim]))
    return t.index_select(dim, torch.cat(idx).to(t.device))
