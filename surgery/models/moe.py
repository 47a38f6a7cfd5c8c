"""MoE experts as one `nn.Linear` per projection and expert.

transformers 5 keeps a MoE block's experts fused (`gate_up_proj` [E, 2I, H], `down_proj` [E, H, I]
parameters); checkpoints on the Hub keep them per expert (`experts.<e>.gate_proj.weight`, ...), and
transformers converts between the two when it loads and saves. The engines need a module per
projection to hook, quantize, mask and export, so the fused module is replaced in place by
`UnfusedExperts` — the checkpoint layout, the same routing arithmetic. Saved folders then hold the
Hub layout, which transformers loads into its fused modules again.
"""
from __future__ import annotations

import torch
from torch import nn

from surgery.models.sliced_modeling import UnfusedExperts, is_fused_experts, unfused_like


@torch.no_grad()
def unfuse(fused: nn.Module) -> UnfusedExperts:
    """The per-expert equivalent of a fused experts module, weights copied."""
    out = unfused_like(fused)
    inter = fused.gate_up_proj.shape[1] // 2
    for e, m in enumerate(out):
        m.gate_proj.weight.copy_(fused.gate_up_proj[e, :inter])
        m.up_proj.weight.copy_(fused.gate_up_proj[e, inter:])
        m.down_proj.weight.copy_(fused.down_proj[e])
    return out


def unfuse_experts(model: nn.Module) -> int:
    """Replace every fused experts module of `model` by `UnfusedExperts`; return how many."""
    found = [(n, m) for n, m in model.named_modules() if n.endswith("experts") and is_fused_experts(m)]
    for name, module in found:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, unfuse(module))
    return len(found)
