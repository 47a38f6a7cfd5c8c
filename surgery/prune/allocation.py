"""How many units each sub-layer gives up: allocation maths on unit costs (pure functions).

`greedy` removes a quota of units, each time the globally cheapest next one; `saliency_start`
allocates the first centre from structural saliency (per type, or across types when attention and
FFN may trade weights); `blend` moves part of the way from uniform towards an allocation.
"""
from __future__ import annotations

import torch

from surgery.errors import require
from surgery.prune.units import KINDS, Dist, Layout, SubKey, trade_ratio


def greedy(costs: dict[SubKey, torch.Tensor], quota: int, limits: dict[SubKey, int],
           steps: dict[SubKey, int] | None = None) -> Dist:
    """Remove `quota` units, each time the cheapest next step of units (costs sorted ascending)."""
    steps = steps or {k: 1 for k in costs}
    taken = {k: 0 for k in costs}
    spent = 0
    while spent < quota:
        best, best_cost = None, None
        for k, c in costs.items():
            s = steps[k]
            if taken[k] + s <= limits[k] and spent + s <= quota:
                v = float(c[taken[k]:taken[k] + s].sum())
                if best_cost is None or v < best_cost:
                    best, best_cost = k, v
        if best is None:
            break
        taken[best] += steps[best]
        spent += steps[best]
    return taken


def limits(lay: Layout) -> dict[SubKey, int]:
    """The most units each sub-layer may lose (whole steps; attention keeps one KV group, or one
    query head and its KV head)."""
    out = {}
    for s in lay.sublayers:
        room = s.units - s.min_kept
        out[s.key] = room - room % s.step
    return out


def saliency_start(lay: Layout, scores: dict[SubKey, torch.Tensor], target: Dist, trade: bool) -> Dist:
    """The first centre: the cheapest units by saliency, per type (or across types, per weight)."""
    lim = limits(lay)
    steps = {s.key: s.step for s in lay.sublayers}
    if not trade:
        out: Dist = {}
        for kind in KINDS:
            keys = [s.key for s in lay.of_kind(kind)]
            if keys:
                out.update(greedy({k: scores[k].sort().values for k in keys}, sum(target[k] for k in keys),
                                  {k: lim[k] for k in keys}, {k: steps[k] for k in keys}))
        return out
    ratio = trade_ratio(lay)  # an attention unit weighs `ratio` neurons: cost per neuron-equivalent
    weight = {s.key: ratio if s.key.kind == "attn" else 1 for s in lay.sublayers}
    costs = {s.key: scores[s.key].sort().values / weight[s.key] for s in lay.sublayers}
    budget = sum(target[k] * weight[k] for k in costs)
    out = {k: 0 for k in costs}
    spent = 0
    while spent < budget:
        room = [k for k in costs if out[k] + steps[k] <= lim[k] and weight[k] * steps[k] <= budget - spent]
        if not room:
            break
        k = min(room, key=lambda key: float(costs[key][out[key]:out[key] + steps[key]].sum()))
        out[k] += steps[k]
        spent += weight[k] * steps[k]
    require(spent == budget, "cannot spend the budget exactly when trading attention for FFN")
    return out


def blend(lay: Layout, uniform: Dist, salient: Dist, strength: float) -> Dist:
    """uniform + strength·(salient − uniform), rounded to whole steps, with each type's total equal
    to the salient allocation's (largest remainders get the leftover steps)."""
    out: Dist = {}
    for kind in KINDS:
        subs = lay.of_kind(kind)
        if not subs:
            continue
        step = subs[0].step
        keys = [s.key for s in subs]
        exact = {k: (uniform[k] + strength * (salient[k] - uniform[k])) / step for k in keys}
        floor = {k: int(exact[k]) for k in keys}
        left = sum(salient[k] for k in keys) // step - sum(floor.values())
        for k in sorted(keys, key=lambda k: (floor[k] - exact[k], k))[:left]:
            floor[k] += 1
        out.update({k: v * step for k, v in floor.items()})
    return out
