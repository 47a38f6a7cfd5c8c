"""Turn a chosen distribution into a model: masked (full shapes, zero columns) or physically sliced.

Which rows and columns a unit owns comes from the adapter's layout (`Piece`s), so fused
projections (Phi-3's `qkv_proj`, `gate_up_proj`) are cut consistently in every part. With head
units a KV head stays while any of its query heads does; a layer whose KV heads keep different
numbers of query heads records which KV head each query head reads (`layer_head_kv`).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from surgery.models.adapters import DecoderAdapter
from surgery.models.sliced import model_for, sliced_config
from surgery.prune.supernet import Supernet
from surgery.prune.units import Dist, Layout, SubKey
from surgery.saliency import SaliencyMap
from surgery.saliency.structural import Piece, slice_tensor


def apply_masked(adapter: DecoderAdapter, net: Supernet, removed: Dist) -> None:
    """Write each sub-layer's chosen candidate into its output projection (pruned columns are zero,
    so the pruned units contribute nothing; the rows that feed them are left as they are)."""
    with torch.no_grad():
        for key, r in removed.items():
            lin = adapter.output_proj(key.layer, key.kind)
            lin.weight.data = net.weight(key, r).to(lin.weight.device, lin.weight.dtype)


def kept_kv(kept_heads: torch.Tensor, group: int) -> torch.Tensor:
    """The KV heads that keep at least one of the `kept_heads` (ascending)."""
    return torch.unique(kept_heads.to(torch.long) // group)


def head_kv(kept_heads: torch.Tensor, group: int) -> list[int]:
    """For each kept query head, the index of its KV head among the kept ones; [] when every kept KV
    head keeps the same number of query heads (a standard GQA layer)."""
    kv = kept_heads.to(torch.long) // group
    counts = torch.unique(kv, return_counts=True)[1]
    if bool((counts == counts[0]).all()):
        return []
    return torch.searchsorted(kept_kv(kept_heads, group), kv).tolist()


Cuts = dict[str, tuple[list[Piece], list[torch.Tensor]]]


def _cuts(adapter: DecoderAdapter, lay: Layout, net: Supernet, removed: Dist) -> tuple[Cuts, list[str]]:
    """Per parameter: its pieces and each piece's kept units; and the MLPs left with no neuron."""
    cuts: Cuts = {}
    empty = []
    for key, r in removed.items():
        s, kept = lay.get(key), net.kept(key, r)
        sets = [(s.unit_set, kept)]
        if s.kv_set is not None:
            sets.append((s.kv_set, kept_kv(kept, s.group)))
        for us, k in sets:
            for p in us.pieces:
                pieces, kepts = cuts.setdefault(p.param, ([], []))
                pieces.append(p)
                kepts.append(k)
        if key.kind == "mlp" and kept.numel() == 0:
            empty.append(f"{adapter.block_name(key.layer)}.mlp.")
    return cuts, empty


def slice_state(adapter: DecoderAdapter, lay: Layout, net: Supernet, removed: Dist,
                tensors: Mapping[str, torch.Tensor], candidates: bool = True) -> dict[str, torch.Tensor]:
    """`tensors` (named like the model's parameters) cut to what the sliced model keeps; with
    `candidates`, output projections first take the chosen candidate's weights."""
    cuts, empty = _cuts(adapter, lay, net, removed)
    outputs = {f"{_out_name(adapter, k)}.weight": k for k in removed}
    out = {}
    for name, t in tensors.items():
        if any(name.startswith(e) for e in empty):
            continue
        if candidates and name in outputs:
            key = outputs[name]
            t = net.weight(key, removed[key]).to(device=t.device, dtype=t.dtype)
        if name in cuts:
            pieces, kept = cuts[name]
            t = slice_tensor(t, pieces, kept)
        out[name] = t.contiguous()
    return out


def _out_name(adapter: DecoderAdapter, key: SubKey) -> str:
    return adapter.attn_name(key.layer, "o") if key.kind == "attn" else adapter.mlp_name(key.layer, "down")


def slice_map(adapter: DecoderAdapter, lay: Layout, net: Supernet, removed: Dist, smap: SaliencyMap) -> SaliencyMap:
    """The map restricted to the weights the sliced model keeps (same names and shapes as its
    parameters), so a map scored once on the dense model serves later stages."""
    out = slice_state(adapter, lay, net, removed, dict(smap.items()), candidates=False)
    return SaliencyMap(out, smap.kind, smap.loss, f"{smap.data} (restricted to the pruned model)",
                       smap.samples, smap.batches)


@torch.no_grad()
def slice_model(adapter: DecoderAdapter, lay: Layout, net: Supernet, removed: Dist) -> nn.Module:
    """A new, physically smaller model: kept KV groups (or query heads and the KV heads they read)
    and neurons only, output projections from the chosen candidates."""
    model = adapter.model
    subs = {s.key: s for s in lay.sublayers}
    heads, kv_heads, ffn, maps = [], [], [], []
    for i in range(adapter.num_layers):
        s = adapter.block_shape(i)
        g = s.num_heads // s.num_kv_heads
        attn, mlp = SubKey(i, "attn"), SubKey(i, "mlp")
        kept = net.kept(attn, removed[attn]) if attn in removed else None
        if kept is not None and subs[attn].group:  # head units
            heads.append(kept.numel())
            kv_heads.append(kept_kv(kept, g).numel())
            maps.append(head_kv(kept, g))
        else:
            kv = kept.numel() if kept is not None else s.num_kv_heads
            heads.append(kv * g)
            kv_heads.append(kv)
            maps.append([])
        ffn.append(net.kept(mlp, removed[mlp]).numel() if mlp in removed else
                   (s.intermediate_size or adapter.config.intermediate_size))
    first = next(model.parameters())
    config = sliced_config(model.config, heads, kv_heads, ffn, head_kv=maps)
    new = model_for(config).to(device=first.device, dtype=first.dtype)
    DecoderAdapter(new)  # MoE experts in the same per-expert layout as ours
    state = slice_state(adapter, lay, net, removed, model.state_dict())
    missing, unexpected = new.load_state_dict(state, strict=False)
    tied = bool(getattr(new.config, "tie_word_embeddings", False))
    missing = [m for m in missing if not ("rotary" in m or (tied and m.endswith("lm_head.weight")))]
    if missing or unexpected:
        raise RuntimeError(f"slicing left the state dict inconsistent: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if tied:
        new.tie_weights()
    if getattr(model, "generation_config", None) is not None:
        new.generation_config = model.generation_config
    return new.eval()
