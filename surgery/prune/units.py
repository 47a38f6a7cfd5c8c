"""Structural units and the parameter budget.

Attention units are KV groups — one KV head with all its query heads, so every layer keeps a
standard GQA layout — or, with `attn_unit="head"`, single query heads (Týr's unit): a count is then
in weight units of one head's q rows and o columns, and a KV head whose query heads are all gone is
removed too and counts as one more unit (its k and v rows weigh what a head's q and o do), so the
budget stays exact; such a layer may keep different numbers of query heads per KV head. FFN units
are neurons. The
budget's denominator is stated once: the weights of the decoder-block linear layers (q, k, v, o,
gate, up, down; experts included), biases excluded. With `width_multiple` M, removals move in
steps that keep every sliced width (o_proj / down_proj input columns) a multiple of M.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

from surgery.errors import SurgeryError, require
from surgery.models.adapters import DecoderAdapter
from surgery.saliency.structural import UnitSet

Kind = Literal["attn", "mlp"]
KINDS: tuple[Kind, ...] = ("attn", "mlp")
AttnUnit = Literal["auto", "kv_group", "head"]


class SubKey(NamedTuple):
    """One prunable sub-layer: block `layer`, `kind` attn | mlp."""

    layer: int
    kind: Kind

    def __str__(self) -> str:
        return f"{self.layer}.{self.kind}"

    @classmethod
    def parse(cls, text: str) -> SubKey:
        layer, kind = text.split(".")
        require(kind in KINDS, f"bad sub-layer key {text!r}")
        return cls(int(layer), kind)  # type: ignore[arg-type]


Dist = dict[SubKey, int]  # sub-layer → units removed


def dist_to_json(d: Dist) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(d.items())}


def dist_from_json(d: dict[str, int]) -> Dist:
    return {SubKey.parse(k): int(v) for k, v in d.items()}


@dataclass(frozen=True)
class Sublayer:
    key: SubKey
    units: int  # KV groups, neurons, or (head units) query heads + KV heads
    unit_cols: int  # input columns of o_proj / down_proj per unit (per query head with head units)
    unit_params: int  # weights a unit owns across its projections
    step: int  # removals move in multiples of this (width_multiple)
    unit_set: UnitSet  # the units the solver removes (KV groups, query heads, neurons)
    min_kept: int = 0  # units a layer keeps: one KV group, or one head and its KV head (2)
    group: int = 0  # head units: query heads per KV head (0: not head units)
    kv_set: UnitSet | None = None  # head units: the k/v rows of each KV head


@dataclass
class Layout:
    sublayers: list[Sublayer]
    denominator: int  # decoder-block linear weights

    def of_kind(self, kind: Kind) -> list[Sublayer]:
        return [s for s in self.sublayers if s.key.kind == kind]

    def get(self, key: SubKey) -> Sublayer:
        return next(s for s in self.sublayers if s.key == key)

    def removed_params(self, removed: Dist) -> int:
        return sum(s.unit_params * removed[s.key] for s in self.sublayers)


def _head_sublayer(i: int, groups: UnitSet, heads: UnitSet, shapes: dict, width_multiple: int,
                   strict: bool) -> Sublayer | None:
    """Layer i's attention in head units (query heads + KV heads, one weight unit each); where that
    is impossible, an error if `strict`, else None (the layer keeps KV-group units)."""
    g = heads.count // groups.count
    own = {(p.param, p.dim, p.start) for p in heads.pieces}
    kv = UnitSet("kv_heads", i, groups.count, tuple(p for p in groups.pieces if (p.param, p.dim, p.start) not in own))
    per_head, per_kv = heads.params_per_unit(shapes), kv.params_per_unit(shapes)
    why = (f"layer {i} has one query head per KV head; prune KV groups instead" if g < 2 else
           f"width_multiple ({width_multiple}) does not divide the head dim ({heads.output.width})"
           if heads.output.width % width_multiple else
           f"layer {i}'s query head owns {per_head} weights, its KV head {per_kv}; the budget cannot count "
           "them in one unit" if per_head != per_kv else "")
    if why:
        if strict:
            raise SurgeryError(f"attn_unit 'head': {why}")
        return None
    return Sublayer(SubKey(i, "attn"), heads.count + groups.count, heads.output.width, per_head, 1, heads,
                    min_kept=2, group=g, kv_set=kv)


def layout(adapter: DecoderAdapter, width_multiple: int = 1, attn_unit: AttnUnit = "kv_group") -> Layout:
    """Prunable sub-layers of the model; sub-layers that cannot be pruned (MoE blocks, OLMo-2
    attention) are left out and keep their width."""
    shapes = {n: tuple(p.shape) for n, p in adapter.model.named_parameters()}
    subs = []
    for i in range(adapter.num_layers):
        blk = adapter.layout(i)
        for kind in KINDS:
            us = blk.units["kv_groups" if kind == "attn" else "neurons"]
            if not us.prunable or us.count == 0:
                continue
            if kind == "attn" and attn_unit != "kv_group":
                head = _head_sublayer(i, us, blk.units["heads"], shapes, width_multiple, attn_unit == "head")
                if head is not None:
                    subs.append(head)
                    continue
            cols = us.output.width
            step = width_multiple // math.gcd(width_multiple, cols)
            if us.count % step:
                raise SurgeryError(f"width_multiple {width_multiple}: layer {i}'s {us.kind} ({us.count} units of "
                                   f"{cols} columns) cannot keep a multiple of {width_multiple} columns")
            subs.append(Sublayer(SubKey(i, kind), us.count, cols, us.params_per_unit(shapes), step, us,
                                 min_kept=1 if kind == "attn" else 0))
    require(bool(subs), f"nothing to prune in this {adapter.model_type} model")
    if attn_unit == "auto" and len({s.group > 0 for s in subs if s.key.kind == "attn"}) > 1:
        return layout(adapter, width_multiple, "kv_group")  # one unit per type, or the budget is not exact
    return Layout(subs, adapter.block_linear_params())


def target_removals(lay: Layout, sparsity: float) -> Dist:
    """Units to remove per type so each type sits at `sparsity` of its own weights (whole steps,
    spread uniformly; the remainder goes to the first sub-layers)."""
    out: Dist = {}
    for kind in KINDS:
        subs = lay.of_kind(kind)
        if not subs:
            continue
        step = max(s.step for s in subs)
        steps_total = sum(s.units for s in subs) // step
        want = round(sparsity * steps_total)
        base, extra = divmod(want, len(subs))
        for j, s in enumerate(subs):
            out[s.key] = min(s.units, (base + (1 if j < extra else 0)) * step)
    return out


def trade_ratio(lay: Layout) -> int:
    """Neurons that weigh exactly one attention unit; an error if no exact trade exists."""
    attn, mlp = lay.of_kind("attn"), lay.of_kind("mlp")
    require(bool(attn) and bool(mlp), "trade_budget needs both attention and FFN sub-layers to prune")
    if attn[0].unit_params % mlp[0].unit_params:
        raise SurgeryError(f"attention and FFN cannot trade budget exactly: an attention unit owns "
                           f"{attn[0].unit_params} weights, a neuron {mlp[0].unit_params}")
    return attn[0].unit_params // mlp[0].unit_params


def check_budget(lay: Layout, removed: Dist) -> float:
    """Achieved sparsity of a distribution (it must leave every unit count in range)."""
    for s in lay.sublayers:
        room = s.units - (s.min_kept if s.group else 0)
        require(0 <= removed[s.key] <= room, f"sub-layer {s.key}: {removed[s.key]} of {s.units} units")
    return lay.removed_params(removed) / lay.denominator
