"""Reduce a per-weight map to per-unit scores for decoder blocks: heads, KV groups, FFN neurons.

A unit's score is the sum of the map over every weight the unit owns:
- query head h: rows [h·d, (h+1)·d) of q_proj (and its bias) and the same columns of o_proj;
- KV group g: rows [g·d, (g+1)·d) of k_proj and v_proj (and biases) plus all its query heads;
- FFN neuron i: row i of gate_proj and up_proj (and biases) and column i of down_proj.
The layout (parameter names, head counts) comes from a model adapter, so this module stays pure.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from surgery.errors import require


@dataclass(frozen=True)
class LayerLayout:
    """Parameter names (weights, optional biases) and unit counts of one decoder block."""

    q: str
    k: str
    v: str
    o: str
    gate: str
    up: str
    down: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    q_bias: str | None = None
    k_bias: str | None = None
    v_bias: str | None = None
    gate_bias: str | None = None
    up_bias: str | None = None

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads


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


def _rows(scores: Mapping[str, torch.Tensor], name: str | None, units: int) -> torch.Tensor:
    """Sum of each of `units` equal row blocks of a weight (or bias) score; zeros if absent."""
    if name is None or name not in scores:
        return torch.zeros(units, dtype=torch.float64)
    t = scores[name].detach().to("cpu", torch.float64)
    return t.reshape(units, -1).sum(dim=1)


def _cols(scores: Mapping[str, torch.Tensor], name: str, units: int) -> torch.Tensor:
    """Sum of each of `units` equal column blocks of a weight score [out, in]."""
    if name not in scores:
        return torch.zeros(units, dtype=torch.float64)
    t = scores[name].detach().to("cpu", torch.float64)
    return t.reshape(t.shape[0], units, -1).sum(dim=(0, 2))


def reduce_layer(scores: Mapping[str, torch.Tensor], lay: LayerLayout) -> tuple[torch.Tensor, ...]:
    """(head scores [H], KV-group scores [KV], neuron scores [I]) for one block, in fp64 on CPU."""
    require(
        lay.num_heads % lay.num_kv_heads == 0,
        f"{lay.num_heads} query heads do not split into {lay.num_kv_heads} KV groups",
    )
    heads = (
        _rows(scores, lay.q, lay.num_heads)
        + _rows(scores, lay.q_bias, lay.num_heads)
        + _cols(scores, lay.o, lay.num_heads)
    )
    kv = (
        _rows(scores, lay.k, lay.num_kv_heads)
        + _rows(scores, lay.k_bias, lay.num_kv_heads)
        + _rows(scores, lay.v, lay.num_kv_heads)
        + _rows(scores, lay.v_bias, lay.num_kv_heads)
        + heads.view(lay.num_kv_heads, lay.group_size).sum(dim=1)
    )
    n = lay.intermediate_size
    neurons = (
        _rows(scores, lay.gate, n)
        + _rows(scores, lay.gate_bias, n)
        + _rows(scores, lay.up, n)
        + _rows(scores, lay.up_bias, n)
        + _cols(scores, lay.down, n)
    )
    return heads, kv, neurons


def reduce_structural(
    scores: Mapping[str, torch.Tensor], layout: list[LayerLayout]
) -> StructuralScores:
    """Unit scores for every block of `layout`."""
    out = StructuralScores([], [], [])
    for lay in layout:
        h, g, n = reduce_layer(scores, lay)
        out.heads.append(h)
        out.kv_groups.append(g)
        out.neurons.append(n)
    return out
