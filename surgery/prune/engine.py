"""`prune(model, PruneConfig, calib=...)`: Týr-style global structural pruning.

Per iteration t: a supernet of `levels` candidates per sub-layer around the current centre
distribution (FFN spacing `ffn_step`·I / 2^(t−1); one KV group for attention), built from the
dense weights with error accumulation; then the evolutionary search for the best distribution,
which becomes the next centre. The first centre is uniform or — by default — allocated from the
shared scorer's structural saliency. The model ends masked with the winner (pruned columns zero);
`PruneResult.slice()` gives the physically smaller model.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgery import dist
from surgery.errors import SurgeryError, require
from surgery.models.adapters import DecoderAdapter
from surgery.models.blockwise import capture_block_inputs
from surgery.prune.apply import apply_masked, slice_map, slice_model
from surgery.prune.config import PruneConfig
from surgery.prune.search import Dist, TopKFitness, evolve
from surgery.prune.supernet import Supernet, build_supernet, level_set
from surgery.prune.units import Layout, check_budget, layout, target_removals, trade_ratio
from surgery.saliency import SaliencyMap, score

MIN_UNITS = {"attn": 1, "mlp": 0}  # a layer keeps at least one KV group (a runnable attention)


@dataclass
class PruneResult:
    config: PruneConfig
    layout: Layout
    distribution: Dist
    supernet: Supernet
    adapter: DecoderAdapter
    iterations: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def removed_params(self) -> int:
        return self.layout.removed_params(self.distribution)

    @property
    def achieved_sparsity(self) -> float:
        return self.removed_params / self.layout.denominator

    def per_layer(self) -> list[dict[str, int]]:
        out = []
        for s in self.layout.of_kind("attn"):
            m = next(x for x in self.layout.of_kind("mlp") if x.layer == s.layer)
            out.append({"layer": s.layer, "kv_groups_kept": s.units - self.distribution[s.key],
                        "neurons_kept": m.units - self.distribution[m.key]})
        return out

    def slice(self) -> nn.Module:
        return slice_model(self.adapter, self.supernet, self.distribution)

    def slice_map(self, smap: SaliencyMap) -> SaliencyMap:
        """A map of the dense model restricted to what `slice()` keeps (names and shapes match)."""
        return slice_map(self.adapter, self.supernet, self.distribution, smap)

    def summary(self) -> dict[str, Any]:
        return {"sparsity": self.config.sparsity, "achieved_sparsity": self.achieved_sparsity,
                "removed_params": self.removed_params, "denominator": self.layout.denominator,
                "denominator_is": "decoder-block linear weights (q,k,v,o,gate,up,down)",
                "per_layer": self.per_layer(), "seconds": round(self.seconds, 1),
                "iterations": [{k: v for k, v in it.items() if k != "history"} for it in self.iterations]}


def _greedy(costs: dict[str, torch.Tensor], quota: int, limits: dict[str, int]) -> dict[str, int]:
    """Remove `quota` units, each time the globally cheapest next unit (unit costs sorted ascending)."""
    taken = {k: 0 for k in costs}
    for _ in range(quota):
        best, best_cost = None, None
        for k, c in costs.items():
            if taken[k] < limits[k]:
                v = float(c[taken[k]])
                if best_cost is None or v < best_cost:
                    best, best_cost = k, v
        if best is None:
            break
        taken[best] += 1
    return taken


def unit_scores(model: nn.Module, adapter: DecoderAdapter, batches: list[torch.Tensor], kind: str,
                progress: bool, smap: SaliencyMap | None = None) -> dict[str, torch.Tensor]:
    """Structural saliency of every unit (KV groups, neurons) from the shared scorer (or `smap`)."""
    if smap is None:
        smap = score(model, batches, loss="causal_lm", kind=kind, include=r"\.layers\.", progress=progress,
                     description="pruning calibration windows")
    smap.check_model(model)
    units = smap.structural(adapter.structural_layout())
    out = {}
    for i in range(adapter.num_layers):
        out[f"{i}.attn"] = units.kv_groups[i].abs()
        out[f"{i}.mlp"] = units.neurons[i].abs()
    return out


def saliency_start(lay: Layout, scores: dict[str, torch.Tensor], target: dict[str, int],
                   trade: bool) -> dict[str, int]:
    """The first centre: the cheapest units by saliency, per type (or across types, per weight)."""
    limits = {s.key: s.units - MIN_UNITS[s.kind] for s in lay.sublayers}
    if not trade:
        out = {}
        for kind in ("attn", "mlp"):
            keys = [s.key for s in lay.of_kind(kind)]
            out.update(_greedy({k: scores[k].sort().values for k in keys},
                               sum(target[k] for k in keys), limits))
        return out
    ratio = trade_ratio(lay)  # a KV group weighs `ratio` neurons: cost per neuron-equivalent
    costs = {}
    for s in lay.sublayers:
        c = scores[s.key].sort().values
        costs[s.key] = c / ratio if s.kind == "attn" else c
    budget = sum(target[s.key] * (ratio if s.kind == "attn" else 1) for s in lay.sublayers)
    out = {k: 0 for k in costs}
    spent = 0
    while spent < budget:
        room = {k: costs[k] for k in costs if out[k] < limits[k] and
                (ratio if k.endswith("attn") else 1) <= budget - spent}
        if not room:
            break
        k = min(room, key=lambda key: float(costs[key][out[key]]))
        out[k] += 1
        spent += ratio if k.endswith("attn") else 1
    require(spent == budget, "cannot spend the budget exactly when trading attention for FFN")
    return out


def blend(lay: Layout, uniform: dict[str, int], salient: dict[str, int], strength: float) -> dict[str, int]:
    """uniform + strength·(salient − uniform), rounded, with each type's total equal to the
    salient allocation's (largest remainders get the leftover units)."""
    out = {}
    for kind in ("attn", "mlp"):
        keys = [s.key for s in lay.of_kind(kind)]
        exact = {k: uniform[k] + strength * (salient[k] - uniform[k]) for k in keys}
        floor = {k: int(exact[k]) for k in keys}
        left = sum(salient[k] for k in keys) - sum(floor.values())
        for k in sorted(keys, key=lambda k: (floor[k] - exact[k], k))[:left]:
            floor[k] += 1
        out.update(floor)
    return out


def prune(model: nn.Module, config: PruneConfig, calib: torch.Tensor | None,
          search_calib: torch.Tensor | None = None, progress: bool = True,
          on_iteration: Callable[[int, PruneResult], None] | None = None,
          saliency: SaliencyMap | None = None) -> PruneResult:
    """Prune `model` (in place, masked) and return the result; `result.slice()` is the small model.

    Args:
        calib: calibration windows `[n, T]` for the local solver (and the saliency start).
        search_calib: windows for the search fitness (default: `calib`).
        on_iteration: called after each iteration with the model masked by that iteration's best.
        saliency: a map of this model to use for the saliency start and pre-screening instead of
            scoring `calib` with `saliency_kind` (e.g. one map shared by a recipe's stages).
    """
    t0 = time.time()
    cfg = config
    adapter = DecoderAdapter(model)
    model.eval()
    lay = layout(adapter)
    target = target_removals(lay, cfg.sparsity)
    for kind in ("attn", "mlp"):
        subs = lay.of_kind(kind)
        room = sum(s.units - MIN_UNITS[kind] for s in subs)
        want = sum(target[s.key] for s in subs)
        if want > room:
            raise SurgeryError(f"sparsity {cfg.sparsity} cannot be met: {kind} would need {want} units "
                               f"removed, at most {room} can go (every layer keeps one KV group)")
    if calib is None or calib.numel() == 0:
        raise SurgeryError("empty calibration data: pruning needs calibration windows")
    batches = list(calib.split(cfg.batch_size))
    search_windows = calib if search_calib is None else search_calib
    dense_o = {i: adapter.proj(i, "o").weight.detach().clone() for i in range(adapter.num_layers)}
    dense_d = {i: adapter.proj(i, "down").weight.detach().clone() for i in range(adapter.num_layers)}
    fitness = TopKFitness(model, search_windows, cfg.top_k, cfg.batch_size)
    scores = None
    if cfg.start == "saliency" or cfg.prescreen < 1.0 or cfg.trade_budget:
        scores = unit_scores(model, adapter, batches, cfg.saliency_kind, progress, saliency)
    centres = dict(target)
    if cfg.start == "saliency" or cfg.trade_budget:
        centres = blend(lay, target, saliency_start(lay, scores, target, cfg.trade_budget),
                        cfg.start_strength if cfg.start == "saliency" else 1.0)
    inputs = capture_block_inputs(adapter, dist.shard_rows(batches))  # data-parallel: this rank's rows
    mlp_units = lay.of_kind("mlp")[0].units
    base_step = max(1, round(cfg.ffn_step * mlp_units))
    resume = Path(cfg.resume_dir) if cfg.resume_dir else None
    result = PruneResult(cfg, lay, centres, Supernet(), adapter)
    for t in range(max(1, cfg.iterations)):
        it0 = time.time()
        steps = {"attn": 1, "mlp": max(1, base_step >> t)}
        subs = {s.key: s for s in lay.sublayers}
        levels = {k: level_set(centres[k], steps[s.kind], cfg.levels, s.units, MIN_UNITS[s.kind])
                  for k, s in subs.items()}
        with torch.no_grad():  # every supernet starts from the dense weights
            for i in range(adapter.num_layers):
                adapter.proj(i, "o").weight.copy_(dense_o[i])
                adapter.proj(i, "down").weight.copy_(dense_d[i])
        fp = cfg.fingerprint(t, centres)
        folder = None
        if resume is not None:
            folder = resume / f"iteration_{t}"
            folder.mkdir(parents=True, exist_ok=True)
        net = build_supernet(adapter, lay, levels, centres, inputs, cfg.accumulation, cfg.damp,
                             cfg.solver_rounds, (folder, fp) if folder else None, progress)
        result.supernet = net

        def apply(d: Dist, net: Supernet = net) -> None:
            apply_masked(adapter, net, d)

        def cost(d: Dist, net: Supernet = net) -> float:
            total = 0.0
            for k, r in d.items():
                kept = net.kept(k, r)
                mask = torch.ones(scores[k].numel(), dtype=torch.bool)
                mask[kept] = False
                total += float(scores[k][mask].sum())
            return total

        if cfg.iterations == 0 or cfg.generations == 0:
            apply(centres)
            best, history = dict(centres), [{"generation": 0, "fitness": fitness(model, cfg.stage_plan()[-1])}]
        else:
            best, history = evolve(model, apply, centres, levels, steps, fitness, cfg.offspring,
                                   cfg.generations, cfg.survivor_plan(), cfg.stage_plan(), cfg.seed + t,
                                   cost if scores is not None else None, cfg.prescreen,
                                   folder / "search.json" if folder else None, progress)
        achieved = check_budget(lay, best, cfg.sparsity)
        result.iterations.append({"iteration": t + 1, "ffn_step": steps["mlp"], "distribution": best,
                                  "fitness": history[-1]["fitness"], "achieved_sparsity": achieved,
                                  "seconds": round(time.time() - it0, 1), "history": history})
        centres = best
        result.distribution = best
        if on_iteration is not None:
            on_iteration(t + 1, result)
    result.distribution = centres
    result.seconds = time.time() - t0
    return result
