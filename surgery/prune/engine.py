"""`prune(model, PruneConfig, calib=...)`: Týr-style global structural pruning (orchestration).

Per iteration t: a supernet of `levels` candidates per sub-layer around the current centre
distribution (FFN spacing `ffn_step`·I / 2^(t−1); one unit for attention), built from the
dense weights with error accumulation; then the evolutionary search, whose winner is the next
centre. The first centre is uniform or allocated from the shared scorer's structural saliency.
The result is the best distribution over all iterations by fitness (every iteration is reported);
the model ends masked with it, and `PruneResult.slice()` gives the physically smaller model.
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
from surgery.checkpoint import Checkpoint, fingerprint
from surgery.config import to_dict
from surgery.errors import SurgeryError, require
from surgery.models.adapters import DecoderAdapter
from surgery.models.blockwise import capture_block_inputs
from surgery.prune.allocation import blend, limits, saliency_start
from surgery.prune.apply import apply_masked, slice_map, slice_model
from surgery.prune.config import PruneConfig
from surgery.prune.search import Space, TopKFitness, evolve
from surgery.prune.supernet import Supernet, build_supernet, level_set
from surgery.prune.units import (
    KINDS,
    Dist,
    Layout,
    SubKey,
    check_budget,
    dist_to_json,
    layout,
    target_removals,
)
from surgery.saliency import SaliencyMap, score


@dataclass
class PruneResult:
    config: PruneConfig
    layout: Layout
    distribution: Dist
    supernet: Supernet
    adapter: DecoderAdapter
    iterations: list[dict[str, Any]] = field(default_factory=list)
    best_iteration: int = 0
    seconds: float = 0.0

    @property
    def removed_params(self) -> int:
        return self.layout.removed_params(self.distribution)

    @property
    def achieved_sparsity(self) -> float:
        return self.removed_params / self.layout.denominator

    def per_layer(self) -> list[dict[str, int]]:
        out = []
        subs = {s.key: s for s in self.layout.sublayers}
        for i in range(self.adapter.num_layers):
            s = self.adapter.block_shape(i)
            attn, mlp = SubKey(i, "attn"), SubKey(i, "mlp")
            row = {"layer": i, "neurons_kept": s.intermediate_size - self.distribution.get(mlp, 0)}
            if attn in subs and subs[attn].group:  # head units: query heads kept per KV head
                kept = self.supernet.kept(attn, self.distribution[attn])
                per_kv = torch.bincount(kept // subs[attn].group, minlength=s.num_kv_heads)
                row.update(kv_groups_kept=int((per_kv > 0).sum()), heads_kept=int(kept.numel()),
                           heads_per_kv=[int(c) for c in per_kv if c > 0])
            else:
                row["kv_groups_kept"] = s.num_kv_heads - self.distribution.get(attn, 0)
            out.append(row)
        return out

    def slice(self) -> nn.Module:
        return slice_model(self.adapter, self.layout, self.supernet, self.distribution)

    def save(self, path: str | Path, tokenizer: Any = None, overwrite: bool = False) -> Path:
        """The sliced model as a folder (stock config when uniform, else with its modeling file),
        with a model card; loads with `AutoModelForCausalLM.from_pretrained` as the card says."""
        from surgery.export.card import model_card
        from surgery.export.folders import write_marker
        from surgery.io import atomic_dir
        from surgery.models.io import write_model

        small = self.slice()
        with atomic_dir(path, overwrite=overwrite) as tmp:
            write_model(small, tmp, tokenizer)
            write_marker(tmp, "pruned", sparsity=self.achieved_sparsity)
            (tmp / "README.md").write_text(model_card(
                tmp, str(getattr(self.adapter.config, "_name_or_path", "") or "unknown"), "pruned", ["pruned"],
                f"pruned {100 * self.achieved_sparsity:.1f}% (structured)", "see surgery_output.json",
                "(not evaluated here; see `surgery compare`)", name=Path(path).name))
        return Path(path)

    def slice_map(self, smap: SaliencyMap) -> SaliencyMap:
        """A map of the dense model restricted to what `slice()` keeps (names and shapes match)."""
        return slice_map(self.adapter, self.layout, self.supernet, self.distribution, smap)

    def summary(self) -> dict[str, Any]:
        return {"sparsity": self.config.sparsity, "achieved_sparsity": self.achieved_sparsity,
                "removed_params": self.removed_params, "denominator": self.layout.denominator,
                "denominator_is": "decoder-block linear weights (q,k,v,o,gate,up,down)",
                "width_multiple": self.config.width_multiple, "per_layer": self.per_layer(),
                "seconds": round(self.seconds, 1), "best_iteration": self.best_iteration,
                "iterations": [{k: v for k, v in it.items() if k != "history"} for it in self.iterations]}


def unit_scores(model: nn.Module, adapter: DecoderAdapter, lay: Layout, batches: list[torch.Tensor], kind: str,
                progress: bool, smap: SaliencyMap | None = None) -> dict[SubKey, torch.Tensor]:
    """Structural saliency of every prunable unit (KV groups, neurons; with head units the query
    heads, then each KV head's k/v rows) from the shared scorer."""
    if smap is None:
        smap = score(model, batches, loss="causal_lm", kind=kind, include=r"\.layers\.", progress=progress,
                     description="pruning calibration windows")
    smap.check_model(model)
    return {s.key: (torch.cat([s.unit_set.sums(smap), s.kv_set.sums(smap)]) if s.kv_set is not None
                    else s.unit_set.sums(smap)).abs() for s in lay.sublayers}


def _check_feasible(lay: Layout, target: Dist, sparsity: float) -> None:
    lim = limits(lay)
    for kind in KINDS:
        subs = lay.of_kind(kind)
        want, room = sum(target[s.key] for s in subs), sum(lim[s.key] for s in subs)
        if want > room:
            raise SurgeryError(f"sparsity {sparsity} cannot be met: {kind} would need {want} units removed, at most "
                               f"{room} can go (every layer keeps one query head and its KV head)")


def _start(lay: Layout, cfg: PruneConfig, target: Dist, scores: dict[SubKey, torch.Tensor] | None) -> Dist:
    if cfg.start != "saliency" and not cfg.trade_budget:
        return dict(target)
    strength = cfg.start_strength if cfg.start == "saliency" else 1.0
    return blend(lay, target, saliency_start(lay, scores, target, cfg.trade_budget), strength)


def _space(lay: Layout, centres: Dist, cfg: PruneConfig, t: int) -> Space:
    """Iteration t's levels: one unit for attention, ffn_step·I / 2^t neurons (whole steps, at
    least ffn_min_step)."""
    mlp = lay.of_kind("mlp")
    steps = {"attn": max(s.step for s in lay.of_kind("attn")) if lay.of_kind("attn") else 1}
    if mlp:
        unit = mlp[0].step
        step = max(cfg.ffn_min_step, max(1, round(cfg.ffn_step * mlp[0].units)) >> t)
        steps["mlp"] = max(unit, step // unit * unit)
    levels = {s.key: level_set(centres[s.key], steps[s.key.kind], cfg.levels, s.units, s.min_kept)
              for s in lay.sublayers}
    return Space(levels, steps)


def _saliency_cost(lay: Layout, net: Supernet, scores: dict[SubKey, torch.Tensor]) -> Callable[[Dist], float]:
    """Saliency of what a distribution removes (head units: the heads and the KV heads left empty)."""
    def cost(d: Dist) -> float:
        total = 0.0
        for k, r in d.items():
            s, kept = lay.get(k), net.kept(k, r)
            units = s.unit_set.count
            gone = torch.ones(units, dtype=torch.bool)
            gone[kept] = False
            total += float(scores[k][:units][gone].sum())
            if s.group:
                kv_gone = torch.ones(units // s.group, dtype=torch.bool)
                kv_gone[kept // s.group] = False
                total += float(scores[k][units:][kv_gone].sum())
        return total
    return cost


def prune(model: nn.Module, config: PruneConfig, calib: torch.Tensor | None, search_calib: torch.Tensor | None = None,
          *, saliency: SaliencyMap | None = None, resume_dir: str | None = None, progress: bool = True,
          on_iteration: Callable[[int, PruneResult], None] | None = None) -> PruneResult:
    """Prune `model` (in place, masked) and return the result; `result.slice()` is the small model.

    Args:
        calib: calibration windows `[n, T]` for the local solver (and the saliency start).
        search_calib: windows for the search fitness (default: `calib`); the first
            `config.search_samples` are used.
        saliency: a map of this model for the saliency start and pre-screening instead of scoring
            `calib` with `saliency_kind` (e.g. one map shared by a recipe's stages).
        resume_dir: checkpoint supernet blocks and search generations there.
        on_iteration: called after each iteration with the model masked by that iteration's best.
    """
    t0 = time.time()
    cfg = config
    require(calib is not None and calib.numel() > 0, "empty calibration data: pruning needs calibration windows")
    adapter = DecoderAdapter(model)
    model.eval()
    lay = layout(adapter, cfg.width_multiple, cfg.attn_unit)
    target = target_removals(lay, cfg.sparsity)
    _check_feasible(lay, target, cfg.sparsity)
    batches = list(calib.split(cfg.batch_size))
    search_windows = (calib if search_calib is None else search_calib)[: cfg.search_samples]
    require(search_windows.shape[0] >= cfg.search.stage_windows[-1],
            f"the search needs {cfg.search.stage_windows[-1]} fitness windows, got {search_windows.shape[0]}")
    dense = {s.key: adapter.output_proj(s.key.layer, s.key.kind).weight.data for s in lay.sublayers}  # no copy
    fp = fingerprint(model, [calib, search_windows], to_dict(cfg),
                     saliency=saliency.metadata if saliency is not None else None)
    fitness = TopKFitness(model, search_windows, cfg.search.top_k, cfg.batch_size)
    scores = unit_scores(model, adapter, lay, batches, cfg.saliency_kind, progress, saliency) if cfg.uses_saliency else None
    centres = _start(lay, cfg, target, scores)
    inputs = capture_block_inputs(adapter, dist.shard_rows(batches))  # data-parallel: this rank's rows
    result = PruneResult(cfg, lay, centres, Supernet(), adapter)
    best: tuple[float, Dist, Supernet] | None = None
    for t in range(max(1, cfg.iterations)):
        it0 = time.time()
        space = _space(lay, centres, cfg, t)
        with torch.no_grad():  # every supernet starts from the dense weights
            for key, w in dense.items():
                adapter.output_proj(key.layer, key.kind).weight.data = w
        folder = Path(resume_dir) / f"iteration_{t}" if resume_dir else None
        it_fp = fingerprint(config={"base": fp, "iteration": t, "centres": dist_to_json(centres)})
        net = build_supernet(adapter, lay, space.levels, centres, inputs, cfg.accumulation, cfg.damp,
                             cfg.solver_rounds, Checkpoint(folder / "supernet", it_fp, "supernet") if folder else None,
                             progress, getattr(torch, cfg.hessian_dtype), cfg.first_order, cfg.target_inputs)
        apply = (lambda d, net=net: apply_masked(adapter, net, d))
        if cfg.iterations == 0 or cfg.search.generations == 0:
            apply(centres)
            winner, history = dict(centres), []
        else:
            winner, history = evolve(model, apply, centres, space, fitness, cfg.search, cfg.seed + t,
                                     _saliency_cost(lay, net, scores) if scores is not None else None,
                                     Checkpoint(folder / "search", it_fp, "search") if folder else None, progress)
        fit = fitness(model)  # the winner on the whole fitness pool: comparable across iterations
        result.iterations.append({"iteration": t + 1, "ffn_step": space.steps.get("mlp"),
                                  "distribution": dist_to_json(winner), "fitness": fit,
                                  "achieved_sparsity": check_budget(lay, winner), "seconds": round(time.time() - it0, 1),
                                  "history": history})
        if best is None or fit < best[0]:  # NaN never wins
            best, result.best_iteration = (fit, winner, net), t + 1
        result.distribution, result.supernet = winner, net
        if on_iteration is not None:
            on_iteration(t + 1, result)
        centres = winner
    result.distribution, result.supernet = best[1], best[2]
    apply_masked(adapter, best[2], best[1])
    result.seconds = time.time() - t0
    return result
