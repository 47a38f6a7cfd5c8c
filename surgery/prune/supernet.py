"""The supernet: for every sub-layer, the local solver's result at several sparsity levels, built
block by block with error accumulation, stored compactly (kept columns + unit ids).

Accumulation (how the next block's calibration inputs are made): `expectation` runs the block
with each projection replaced by the density-weighted mean of its candidates (weights 1 − sparsity,
normalised) — the paper's expectation, exact because a projection is linear in its weight;
`centre` uses the centre candidate only (the public code's "median" version); `none` feeds every
block the dense model's inputs. With accumulated inputs X the solver's target is X·W_denseᵀ
(`target_inputs: pruned`, SparseGPT's sequential calibration: the layer imitates the dense layer on
what it is fed) or X_dense·W_denseᵀ (`dense`: it also makes up for the upstream error; the dense
model then runs beside it). Each finished block is committed to a checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from surgery import dist
from surgery.checkpoint import Checkpoint
from surgery.models.adapters import DecoderAdapter
from surgery.models.blockwise import BlockInputs, block_forward
from surgery.prune.solver import Covariance, Snapshot, progressive_prune, unit_columns
from surgery.prune.units import KINDS, Dist, Layout, SubKey


def level_set(centre: int, step: int, levels: int, units: int, min_units: int) -> list[int]:
    """Removal counts centre + k·step, k ∈ [−(levels−1)/2, +(levels−1)/2], inside [0, units − min_units]."""
    half = levels // 2
    vals = {centre + k * step for k in range(-half, half + 1)}
    return sorted(v for v in vals if 0 <= v <= units - min_units)


Candidate = Snapshot  # one level of one sub-layer: the kept units and only their columns, in float32


def _candidate(snap: Snapshot) -> Candidate:
    return Candidate(snap.kept, snap.columns.to(torch.float32).contiguous(), snap.shape, snap.unit)


@dataclass
class Supernet:
    """Candidates per sub-layer: removal count → candidate (kept units, re-solved weights). With a
    checkpoint, committed blocks' candidates are memory-mapped from their files."""

    candidates: dict[SubKey, dict[int, Candidate]] = field(default_factory=dict)

    def levels(self, key: SubKey) -> list[int]:
        return sorted(self.candidates[key])

    def weight(self, key: SubKey, removed: int) -> torch.Tensor:
        """The full-shape output projection of this level (pruned columns zero)."""
        return self.candidates[key][removed].full()

    def kept(self, key: SubKey, removed: int) -> torch.Tensor:
        return self.candidates[key][removed].kept


def _capture(block: nn.Module, modules: dict[str, nn.Module], hidden: torch.Tensor,
             kwargs: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(the input each of `modules` sees, the block output) when `block` runs on one batch."""
    seen: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, k=k: seen.__setitem__(k, args[0].detach()))
               for k, m in modules.items()]
    try:
        with torch.no_grad():
            out = block_forward(block, hidden, kwargs)
    finally:
        for h in handles:
            h.remove()
    return seen, out


def _propagation_weight(snaps: dict[int, Snapshot], centre: int, units: int, mode: str,
                        dense: torch.Tensor) -> torch.Tensor:
    if mode == "none":
        return dense
    if mode == "centre":
        return snaps[centre].full().to(dense.dtype)
    weights = {r: 1.0 - r / units for r in snaps}  # head units: r and units count KV heads too
    total = sum(weights.values())
    out = torch.zeros(dense.shape, dtype=snaps[centre].columns.dtype, device=dense.device)
    for r, w in weights.items():
        s = snaps[r]
        out[:, unit_columns(s.kept, s.unit).to(out.device)] += (w / total) * s.columns
    return out.to(dense.dtype)


def _pack(cands: dict[SubKey, dict[int, Candidate]]) -> dict[str, torch.Tensor]:
    tensors = {}
    for key, levels in cands.items():
        for r, c in levels.items():
            tensors[f"{key}.{r}.kept"] = c.kept.to(torch.int32)
            tensors[f"{key}.{r}.weight"] = c.columns
            tensors[f"{key}.{r}.shape"] = torch.tensor([*c.shape, c.unit], dtype=torch.int64)
    return tensors


def _unpack(tensors: dict[str, torch.Tensor]) -> dict[SubKey, dict[int, Candidate]]:
    out: dict[SubKey, dict[int, Candidate]] = {}
    for name in tensors:
        if name.endswith(".kept"):
            key_r = name[: -len(".kept")]
            key, r = key_r.rsplit(".", 1)
            rows, cols, unit = tensors[f"{key_r}.shape"].tolist()
            out.setdefault(SubKey.parse(key), {})[int(r)] = Candidate(
                tensors[name].to(torch.long), tensors[f"{key_r}.weight"], (rows, cols), unit)
    return out


def build_supernet(adapter: DecoderAdapter, lay: Layout, levels: dict[SubKey, list[int]], centres: Dist,
                   inputs: BlockInputs, mode: str, damp: float, rounds: int, ckpt: Checkpoint | None = None,
                   progress: bool = False, dtype: torch.dtype = torch.float64,
                   first_order: str = "gradient", target_inputs: str = "pruned") -> Supernet:
    """Solve every sub-layer at its levels, block by block, propagating inputs by `mode`."""
    net = Supernet()
    dense_run = mode == "none" or target_inputs == "dense"  # the dense model's inputs are needed
    dense_in, acc_in = list(inputs.hidden), list(inputs.hidden)
    start = 0
    if ckpt is not None and ckpt.resuming:
        for i in range(ckpt.done + 1):
            net.candidates.update(_unpack(ckpt.step(i)[0]))
        dense_in, acc_in = _saved_inputs(ckpt.inputs(), len(inputs), mode, dense_run)
        start = ckpt.done + 1
    subs = {s.key: s for s in lay.sublayers}
    for i in tqdm(range(start, adapter.num_layers), desc="supernet", disable=not progress, leave=False):
        block, kwargs = adapter.layers[i], inputs.at(i).kwargs
        mine = [subs[SubKey(i, kind)] for kind in KINDS if SubKey(i, kind) in subs]
        projs = {s.key.kind: adapter.output_proj(i, s.key.kind) for s in mine}
        dense_w = {kind: p.weight.data for kind, p in projs.items()}  # the tensors themselves: put back, not copied
        dense_x: dict[str, list[torch.Tensor]] = {kind: [] for kind in projs}
        dense_out = []
        if dense_run:
            for h, kw in zip(dense_in, kwargs):
                xs, out = _capture(block, projs, h, kw)
                for kind in projs:
                    dense_x[kind].append(xs[kind])
                dense_out.append(out)
        cands: dict[SubKey, dict[int, Candidate]] = {}
        try:
            for sub in mine:  # attention first: the FFN sees the propagated attention
                kind = sub.key.kind
                proj, W = projs[kind], dense_w[kind]
                cov = Covariance(proj.in_features, proj.weight.device, dtype)
                for j, (h, kw) in enumerate(zip(acc_in, kwargs)):
                    if mode == "none":
                        cov.add(dense_x[kind][j], dense_x[kind][j])
                        continue
                    x = _capture(block, {kind: proj}, h, kw)[0][kind]
                    cov.add(x, dense_x[kind][j] if target_inputs == "dense" else x)
                del dense_x[kind]  # the statistics hold all the solver needs of these inputs
                cov.n = dist.merge_means_(cov.means, cov.n)
                snaps = progressive_prune(W, cov, W, sub.unit_cols, levels[sub.key], damp, rounds, sub.group,
                                          first_order)
                with torch.no_grad():
                    proj.weight.data = _propagation_weight(snaps, centres[sub.key], sub.units, mode, W)
                cands[sub.key] = {r: _candidate(snaps.pop(r)) for r in sorted(snaps)}
            if mode == "none":
                acc_in = dense_out
            else:
                with torch.no_grad():
                    acc_in = [block_forward(block, h, kw) for h, kw in zip(acc_in, kwargs)]
        finally:
            with torch.no_grad():
                for kind, p in projs.items():
                    p.weight.data = dense_w[kind]
        dense_in = dense_out if dense_run else acc_in
        net.candidates.update(cands)
        if ckpt is not None:  # commit, then keep the block's candidates and the inputs memory-mapped
            saved = {f"dense.{j}": h for j, h in enumerate(dense_in)} if dense_run else {}
            if mode != "none":  # with dense inputs the two are the same tensors: stored once
                saved.update({f"acc.{j}": h for j, h in enumerate(acc_in)})
            ckpt.commit(i, _pack(cands), inputs=saved)
            net.candidates.update(_unpack(ckpt.step(i)[0]))
            if all(h.device.type == "cpu" for h in acc_in):
                dense_in, acc_in = _saved_inputs(ckpt.inputs(), len(acc_in), mode, dense_run)
    return net


def _saved_inputs(saved: dict[str, torch.Tensor], n: int, mode: str,
                  dense_run: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(dense, accumulated) next-block inputs from a checkpoint: one list when they are the same."""
    acc = [saved[f"{'dense' if mode == 'none' else 'acc'}.{j}"] for j in range(n)]
    return ([saved[f"dense.{j}"] for j in range(n)] if dense_run else acc), acc
