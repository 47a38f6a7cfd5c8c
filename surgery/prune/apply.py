"""Turn a chosen distribution into a model: masked (full shapes, zero columns) or physically sliced."""
from __future__ import annotations

import torch
from torch import nn

from surgery.models.adapters import DecoderAdapter
from surgery.models.sliced import model_for, sliced_config
from surgery.prune.supernet import Supernet
from surgery.saliency import SaliencyMap


def apply_masked(adapter: DecoderAdapter, net: Supernet, removed: dict[str, int]) -> None:
    """Write each sub-layer's chosen candidate into o_proj / down_proj (pruned columns are zero,
    so the pruned units contribute nothing; q/k/v/gate/up rows are left as they are)."""
    with torch.no_grad():
        for i in range(adapter.num_layers):
            for kind, role in (("attn", "o"), ("mlp", "down")):
                key = f"{i}.{kind}"
                lin = adapter.proj(i, role)
                lin.weight.copy_(net.weight(key, removed[key]).to(lin.weight.dtype))


def _rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.index_select(0, idx.to(t.device))


def _plans(adapter: DecoderAdapter, net: Supernet, removed: dict[str, int]
           ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per layer: kept q rows (= o_proj columns), kept k/v rows, kept neurons."""
    d = adapter.head_dim
    plans = []
    for i in range(adapter.num_layers):
        shape = adapter.block_shape(i)
        g = shape.num_heads // shape.num_kv_heads
        groups = net.kept(f"{i}.attn", removed[f"{i}.attn"])
        neurons = net.kept(f"{i}.mlp", removed[f"{i}.mlp"])
        q_heads = (groups.view(-1, 1) * g + torch.arange(g)).reshape(-1)
        q_rows = (q_heads.view(-1, 1) * d + torch.arange(d)).reshape(-1)
        kv_rows = (groups.view(-1, 1) * d + torch.arange(d)).reshape(-1)
        plans.append((q_rows, kv_rows, neurons))
    return plans


def _cut(name: str, v: torch.Tensor, q_rows: torch.Tensor, kv_rows: torch.Tensor,
         neurons: torch.Tensor) -> torch.Tensor:
    """The kept part of one block tensor (`name` relative to the block)."""
    if name.startswith("self_attn.q_proj."):
        return _rows(v, q_rows)
    if name.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
        return _rows(v, kv_rows)
    if name == "self_attn.o_proj.weight":
        return v[:, q_rows.to(v.device)]
    if name.startswith(("mlp.gate_proj.", "mlp.up_proj.")):
        return _rows(v, neurons)
    if name == "mlp.down_proj.weight":
        return v[:, neurons.to(v.device)]
    return v


def slice_map(adapter: DecoderAdapter, net: Supernet, removed: dict[str, int], smap: SaliencyMap) -> SaliencyMap:
    """The map restricted to the weights that the sliced model keeps (same names and shapes as
    `slice_model`'s parameters), so a map scored once on the dense model serves later stages."""
    plans = _plans(adapter, net, removed)
    out = {}
    for name, t in smap.items():
        if name.startswith(f"{adapter.prefix}."):
            rest = name[len(adapter.prefix) + 1:]
            i, local = rest.split(".", 1)
            q_rows, kv_rows, neurons = plans[int(i)]
            if local.startswith("mlp.") and neurons.numel() == 0:
                continue
            t = _cut(local, t, q_rows, kv_rows, neurons)
        out[name] = t.contiguous()
    return SaliencyMap(out, smap.kind, smap.loss, f"{smap.data} (restricted to the pruned model)",
                       smap.samples, smap.batches)


@torch.no_grad()
def slice_model(adapter: DecoderAdapter, net: Supernet, removed: dict[str, int]) -> nn.Module:
    """A new, physically smaller model: kept KV groups (with their query heads) and neurons only,
    o_proj / down_proj columns from the chosen candidates."""
    model = adapter.model
    plans = _plans(adapter, net, removed)
    heads = [q.numel() // adapter.head_dim for q, _, _ in plans]
    kv_heads = [kv.numel() // adapter.head_dim for _, kv, _ in plans]
    ffn = [n.numel() for _, _, n in plans]
    cfg = sliced_config(model.config, heads, kv_heads, ffn)
    first = next(model.parameters())
    new = model_for(cfg).to(device=first.device, dtype=first.dtype)
    sd = {k: v for k, v in model.state_dict().items() if ".layers." not in k}
    for i, (q_rows, kv_rows, neurons) in enumerate(plans):
        p = f"{adapter.prefix}.{i}."
        old = {k[len(p):]: v for k, v in model.state_dict().items() if k.startswith(p)}
        o_full = net.weight(f"{i}.attn", removed[f"{i}.attn"]).to(old["self_attn.o_proj.weight"].dtype)
        down_full = net.weight(f"{i}.mlp", removed[f"{i}.mlp"]).to(old["mlp.down_proj.weight"].dtype)
        for k, v in old.items():
            if k == "self_attn.o_proj.weight":
                v = o_full.to(v.device)
            elif k == "mlp.down_proj.weight":
                v = down_full.to(v.device)
            v = _cut(k, v, q_rows, kv_rows, neurons)
            if k.startswith("mlp.") and neurons.numel() == 0:
                continue
            sd[p + k] = v.contiguous()
    missing, unexpected = new.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert all("rotary" in m or m.endswith("lm_head.weight") and model.config.tie_word_embeddings
               for m in missing), missing
    if getattr(model, "generation_config", None) is not None:
        new.generation_config = model.generation_config
    return new.eval()
