"""Baselines on the same units and budget as the search: Wanda-sp and FLAP-style pruning.

Both read the dense model's o_proj / down_proj input statistics on the calibration windows (one
forward pass) and score every input column; a unit's score is the sum over its columns.
- Wanda-sp (as in the FLAP repository): |W|·‖x‖ per column, the same share of units removed in
  every layer, no weight update.
- FLAP-style (An et al. 2024): fluctuation Var(x_j)·‖W_:,j‖², standardised within each projection,
  ranked across layers per unit type (adaptive per-layer sparsity), and a bias that compensates the
  removed columns' mean contribution, b = W_:,removed · E[x_removed]. The bias lives on the in-memory
  model (stock Llama has no o_proj / down_proj bias), so FLAP results are evaluated masked.
"""
from __future__ import annotations

import torch
from torch import nn

from surgery.models.adapters import DecoderAdapter
from surgery.prune.allocation import greedy, limits
from surgery.prune.units import KINDS, Dist, Layout, SubKey, layout, target_removals


class _Stats:
    def __init__(self, dim: int) -> None:
        self.n = 0
        self.s1 = torch.zeros(dim, dtype=torch.float64)
        self.s2 = torch.zeros(dim, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double().cpu()
        self.n += x.shape[0]
        self.s1 += x.sum(0)
        self.s2 += (x * x).sum(0)

    @property
    def mean(self) -> torch.Tensor:
        return self.s1 / self.n

    @property
    def norm(self) -> torch.Tensor:
        return self.s2.sqrt()

    @property
    def var(self) -> torch.Tensor:
        return (self.s2 / self.n - self.mean**2).clamp_min(0)


@torch.no_grad()
def input_stats(adapter: DecoderAdapter, lay: Layout, calib: torch.Tensor, batch_size: int = 8) -> dict[SubKey, _Stats]:
    """Input statistics of every prunable sub-layer's output projection on the calibration windows."""
    stats, hooks = {}, []
    for s in lay.sublayers:
        lin = adapter.output_proj(s.key.layer, s.key.kind)
        st = stats[s.key] = _Stats(lin.in_features)
        hooks.append(lin.register_forward_pre_hook(lambda m, a, st=st: st.add(a[0])))
    try:
        for chunk in calib.split(batch_size):
            adapter.model(input_ids=chunk)
    finally:
        for h in hooks:
            h.remove()
    return stats


def _unit_sum(col_scores: torch.Tensor, unit_cols: int) -> torch.Tensor:
    return col_scores.view(-1, unit_cols).sum(1)


def _removed_units(scores: torch.Tensor, count: int) -> torch.Tensor:
    return torch.argsort(scores, stable=True)[:count]


@torch.no_grad()
def _mask_units(adapter: DecoderAdapter, lay: Layout, removed: dict[SubKey, torch.Tensor],
                stats: dict[SubKey, _Stats] | None) -> None:
    """Zero the removed units' o_proj / down_proj columns; with `stats`, add FLAP's bias."""
    for s in lay.sublayers:
        lin = adapter.output_proj(s.key.layer, s.key.kind)
        cols = s.unit_set.output.index(removed[s.key]).to(lin.weight.device)
        if stats is not None and cols.numel():
            bias = lin.weight[:, cols].double() @ stats[s.key].mean[cols].to(lin.weight.device)
            if lin.bias is None:
                lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype,
                                                    device=lin.weight.device))
            lin.bias += bias.to(lin.bias.dtype)
        lin.weight[:, cols] = 0


def _column_scores(model: nn.Module, sparsity: float, calib: torch.Tensor, batch_size: int, score
                   ) -> tuple[DecoderAdapter, Layout, dict[SubKey, _Stats], Dist, dict[SubKey, torch.Tensor]]:
    """Adapter, layout, input statistics, uniform targets and per-unit sums of `score(W, stats)`
    (a per-column score of each output projection)."""
    adapter = DecoderAdapter(model)
    lay = layout(adapter)
    stats = input_stats(adapter, lay, calib, batch_size)
    units = {}
    for s in lay.sublayers:
        w = adapter.output_proj(s.key.layer, s.key.kind).weight.detach().double().cpu()
        units[s.key] = _unit_sum(score(w, stats[s.key]), s.unit_cols)
    return adapter, lay, stats, target_removals(lay, sparsity), units


def wanda_sp(model: nn.Module, sparsity: float, calib: torch.Tensor, batch_size: int = 8) -> dict[SubKey, int]:
    """Uniform per-layer removal of the units with the smallest Σ|W|·‖x‖ (in place, masked)."""
    adapter, lay, _, target, units = _column_scores(model, sparsity, calib, batch_size,
                                                    lambda w, st: w.abs().sum(0) * st.norm)
    removed = {s.key: _removed_units(units[s.key], target[s.key]) for s in lay.sublayers}
    _mask_units(adapter, lay, removed, None)
    return {k: int(v.numel()) for k, v in removed.items()}


def flap(model: nn.Module, sparsity: float, calib: torch.Tensor, batch_size: int = 8) -> dict[SubKey, int]:
    """FLAP-style adaptive structure with bias compensation (in place, masked)."""
    adapter, lay, stats, target, units = _column_scores(model, sparsity, calib, batch_size,
                                                        lambda w, st: st.var * (w * w).sum(0))
    unit_scores = {k: (u - u.mean()) / u.std().clamp_min(1e-12) if u.numel() > 1 else u for k, u in units.items()}
    counts = {}
    lim = limits(lay)
    for kind in KINDS:
        keys = [s.key for s in lay.of_kind(kind)]
        counts.update(greedy({k: unit_scores[k].sort().values for k in keys}, sum(target[k] for k in keys),
                             {k: lim[k] for k in keys}))
    removed = {k: _removed_units(unit_scores[k], counts[k]) for k in counts}
    _mask_units(adapter, lay, removed, stats)
    return counts
