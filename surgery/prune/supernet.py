"""The supernet: for every sub-layer, the local solver's result at several sparsity levels, built
block by block with error accumulation, stored compactly (kept columns + unit ids).

Accumulation (how the next block's calibration inputs are made): `expectation` runs the block
with each projection replaced by the density-weighted mean of its candidates (weights 1 − sparsity,
normalised) — the paper's expectation, exact because a projection is linear in its weight;
`centre` uses the centre candidate only (the public code's "median" version); `none` feeds every
block the dense model's inputs.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from surgery import dist
from surgery.errors import require
from surgery.io import atomic_path, load_tensors, save_tensors
from surgery.models.adapters import DecoderAdapter
from surgery.models.blockwise import BlockInputs, block_forward
from surgery.prune.solver import Covariance, Snapshot, progressive_prune
from surgery.prune.units import Layout, Sublayer


def level_set(centre: int, step: int, levels: int, units: int, min_units: int) -> list[int]:
    """Removal counts centre + k·step, k ∈ [−(levels−1)/2, +(levels−1)/2], inside [0, units − min_units]."""
    half = levels // 2
    vals = {centre + k * step for k in range(-half, half + 1)}
    return sorted(v for v in vals if 0 <= v <= units - min_units)


@dataclass
class Supernet:
    """Candidates per sub-layer key (`"<layer>.attn"` / `"<layer>.mlp"`): removal count → snapshot."""

    candidates: dict[str, dict[int, Snapshot]] = field(default_factory=dict)

    def levels(self, key: str) -> list[int]:
        return sorted(self.candidates[key])

    def weight(self, key: str, removed: int) -> torch.Tensor:
        return self.candidates[key][removed].weight

    def kept(self, key: str, removed: int) -> torch.Tensor:
        return self.candidates[key][removed].kept_units


def _capture(block: nn.Module, module: nn.Module, hidden: torch.Tensor, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(input seen by `module`, block output) for one batch."""
    seen = {}

    def hook(mod: nn.Module, args: tuple) -> None:
        seen["x"] = args[0].detach()

    h = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            out = block_forward(block, hidden, kwargs)
    finally:
        h.remove()
    return seen["x"], out


def _propagation_weight(snaps: dict[int, Snapshot], centre: int, units: int, mode: str,
                        dense: torch.Tensor) -> torch.Tensor:
    if mode == "none":
        return dense
    if mode == "centre":
        return snaps[centre].weight.to(dense.dtype)
    weights = {r: 1.0 - r / units for r in snaps}
    total = sum(weights.values())
    out = torch.zeros_like(snaps[centre].weight)
    for r, w in weights.items():
        out += (w / total) * snaps[r].weight
    return out.to(dense.dtype)


def _save_block(folder: Path, index: int, cands: dict[str, dict[int, Snapshot]], unit_cols: dict[str, int],
                fingerprint: str, acc: list[torch.Tensor], dense: list[torch.Tensor]) -> None:
    tensors = {}
    for key, snaps in cands.items():
        unit = unit_cols[key]
        for r, sn in snaps.items():
            keep_cols = (sn.kept_units.view(-1, 1) * unit + torch.arange(unit)).reshape(-1)
            tensors[f"{key}.{r}.kept"] = sn.kept_units.to(torch.int32)
            tensors[f"{key}.{r}.weight"] = sn.weight[:, keep_cols].to(torch.float32).contiguous()
            tensors[f"{key}.{r}.shape"] = torch.tensor(list(sn.weight.shape) + [unit], dtype=torch.int64)
    save_tensors({**{f"acc.{j}": h for j, h in enumerate(acc)}, **{f"dense.{j}": h for j, h in enumerate(dense)}},
                 folder / dist.per_rank_name("inputs"))  # every rank its own calibration rows
    dist.barrier()
    if dist.is_main():
        save_tensors(tensors, folder / f"block_{index}.safetensors")
        with atomic_path(folder / "state.json") as tmp:  # written last: the commit point
            tmp.write_text(json.dumps({"fingerprint": fingerprint, "done": index, "world": dist.world_size()}))
    dist.barrier()


def _load_block(folder: Path, index: int) -> dict[str, dict[int, Snapshot]]:
    tensors, _ = load_tensors(folder / f"block_{index}.safetensors")
    out: dict[str, dict[int, Snapshot]] = {}
    for name in tensors:
        if not name.endswith(".kept"):
            continue
        key_r = name[: -len(".kept")]
        key, r = key_r.rsplit(".", 1)
        out_f, in_f, unit = tensors[f"{key_r}.shape"].tolist()
        kept = tensors[name].to(torch.long)
        full = torch.zeros(out_f, in_f)
        cols = (kept.view(-1, 1) * unit + torch.arange(unit)).reshape(-1)
        full[:, cols] = tensors[f"{key_r}.weight"]
        out.setdefault(key, {})[int(r)] = Snapshot(kept, full)
    return out


def build_supernet(adapter: DecoderAdapter, lay: Layout, levels: dict[str, list[int]], centres: dict[str, int],
                   inputs: BlockInputs, mode: str, damp: float, rounds: int,
                   resume: tuple[Path, str] | None = None, progress: bool = False,
                   on_block: Callable[[int], None] | None = None) -> Supernet:
    """Solve every sub-layer at its levels, block by block, propagating inputs by `mode`."""
    net = Supernet()
    dense_in = list(inputs.hidden)
    acc_in = list(inputs.hidden)
    start = 0
    if resume is not None:
        folder, fp = resume
        state = folder / "state.json"
        if state.exists():
            data = json.loads(state.read_text())
            require(data.get("fingerprint") == fp,
                    f"{folder} holds a supernet of another configuration; use another resume_dir")
            require(data.get("world", 1) == dist.world_size(),
                    f"{folder} was written by {data.get('world', 1)} processes; resume it with as many")
            for i in range(data["done"] + 1):
                net.candidates.update(_load_block(folder, i))
            saved, _ = load_tensors(folder / dist.per_rank_name("inputs"))
            acc_in = [saved[f"acc.{j}"] for j in range(len(inputs))]
            dense_in = [saved[f"dense.{j}"] for j in range(len(inputs))]
            start = data["done"] + 1
    subs = {s.key: s for s in lay.sublayers}
    for i in tqdm(range(start, adapter.num_layers), desc="supernet", disable=not progress, leave=False):
        block = adapter.layers[i]
        o, down = adapter.proj(i, "o"), adapter.proj(i, "down")
        Wo, Wd = o.weight.detach().clone(), down.weight.detach().clone()
        dense_ctx, dense_act, dense_out = [], [], []
        for h, kw in zip(dense_in, inputs.kwargs):
            ctx, _ = _capture(block, o, h, kw)
            act, out = _capture(block, down, h, kw)
            dense_ctx.append(ctx)
            dense_act.append(act)
            dense_out.append(out)
        try:
            # attention: o_proj's inputs along the accumulated path
            sa: Sublayer = subs[f"{i}.attn"]
            cov = Covariance(o.in_features, o.weight.device)
            for j, (h, kw) in enumerate(zip(acc_in, inputs.kwargs)):
                x = dense_ctx[j] if mode == "none" else _capture(block, o, h, kw)[0]
                cov.add(x, dense_ctx[j])
            cov.n = dist.merge_means_([cov.H, cov.M], cov.n)
            snaps_a = progressive_prune(Wo, cov, Wo, sa.unit_cols, levels[sa.key], damp, rounds)
            with torch.no_grad():
                o.weight.copy_(_propagation_weight(snaps_a, centres[sa.key], sa.units, mode, Wo))
            # FFN: down_proj's inputs with the propagated attention in place
            sm: Sublayer = subs[f"{i}.mlp"]
            cov = Covariance(down.in_features, down.weight.device)
            for j, (h, kw) in enumerate(zip(acc_in, inputs.kwargs)):
                x = dense_act[j] if mode == "none" else _capture(block, down, h, kw)[0]
                cov.add(x, dense_act[j])
            cov.n = dist.merge_means_([cov.H, cov.M], cov.n)
            snaps_m = progressive_prune(Wd, cov, Wd, sm.unit_cols, levels[sm.key], damp, rounds)
            with torch.no_grad():
                down.weight.copy_(_propagation_weight(snaps_m, centres[sm.key], sm.units, mode, Wd))
            if mode == "none":
                acc_in = dense_out
            else:
                with torch.no_grad():
                    acc_in = [block_forward(block, h, kw) for h, kw in zip(acc_in, inputs.kwargs)]
        finally:
            with torch.no_grad():
                o.weight.copy_(Wo)
                down.weight.copy_(Wd)
        dense_in = dense_out
        cands = {sa.key: {r: Snapshot(s.kept_units, s.weight.float()) for r, s in snaps_a.items()},
                 sm.key: {r: Snapshot(s.kept_units, s.weight.float()) for r, s in snaps_m.items()}}
        net.candidates.update(cands)
        if resume is not None:
            _save_block(resume[0], i, cands, {sa.key: sa.unit_cols, sm.key: sm.unit_cols}, resume[1],
                        acc_in, dense_in)
        if on_block is not None:
            on_block(i)
    return net
