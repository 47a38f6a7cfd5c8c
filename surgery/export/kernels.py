"""Quantized layers on a real low-bit kernel, to time a quantized folder as it would be served.

W4 grouped layers run on PyTorch's int4 weight-only matmul (`_weight_int4pack_mm_for_cpu` on CPU,
`_weight_int4pack_mm` on CUDA: the tinygemm kernel torchao's int4 weight-only path uses). Our grid
(q − z)·s is the kernel's (q − 8)·s + m with m = (8 − z)·s, so the kernel computes our weights (up to
the rounding of s and m in the activation dtype). The kernel takes bf16 activations; it needs groups
of 32, 64, 128 or 256 columns and a multiple of 16 output rows — other layers, and every 2-, 3- and
8-bit layer, have no fast kernel here and stay dense (the count is reported).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from surgery.export.compressed import ct_helpers, targets
from surgery.export.safetensors_dir import read_state
from surgery.models.modules import set_module

GROUPS = (32, 64, 128, 256)
ACT_DTYPE = torch.bfloat16


class Int4Linear(nn.Module):
    """y = x·Wᵀ (+ b) with W held as packed int4 codes, per-(group, row) scale and offset."""

    def __init__(self, packed: torch.Tensor, scale_offset: torch.Tensor, group_size: int, in_features: int,
                 out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("packed", packed)
        self.register_buffer("scale_offset", scale_offset)
        self.group_size, self.in_features, self.out_features = group_size, in_features, out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(ACT_DTYPE), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(ACT_DTYPE)
        if x2.is_cuda:
            y = torch.ops.aten._weight_int4pack_mm(x2, self.packed, self.group_size, self.scale_offset)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, self.scale_offset)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


def _pack(codes: torch.Tensor, device: torch.device) -> torch.Tensor:
    codes = codes.to(torch.int32)
    if device.type == "cuda":
        return torch.ops.aten._convert_weight_to_int4pack(codes.to(device).to(torch.uint8), 8)
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)


def int4_layer(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bias: torch.Tensor | None,
               device: torch.device) -> Int4Linear:
    """An Int4Linear computing the grid (codes − zero)·scale (codes [out, in] in 0..15)."""
    out, inp = codes.shape
    group_size = inp // scale.shape[1]
    offset = (8 - zero.float()) * scale.float()
    scale_offset = torch.stack([scale.float().t(), offset.t()], dim=-1).contiguous().to(ACT_DTYPE)
    return Int4Linear(_pack(codes, device), scale_offset.to(device), group_size, inp, out, bias).to(device)


def kernel_ok(bits: int, group_size: int | None, out_features: int) -> bool:
    return bits == 4 and group_size in GROUPS and out_features % 16 == 0


@dataclass
class KernelReport:
    on_kernel: int
    layers: int
    note: str


def attach_kernels(model: nn.Module, folder: str | Path) -> KernelReport:
    """Replace, in place, the layers of `model` that a compressed-tensors `folder` stores packed at
    W4 by Int4Linear; return how many went on the kernel and why the others did not."""
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text()).get("quantization_config")
    if not cfg:
        return KernelReport(0, 0, "not quantized")
    _, _, unpack = ct_helpers()
    state = read_state(folder)
    names = [k[: -len(".weight_packed")] for k in state if k.endswith(".weight_packed")]
    device = next(model.parameters()).device
    done, reasons = 0, set()
    for name in names:
        group = next(g for g in cfg["config_groups"].values() if targets(g, name))
        bits, gs = group["weights"]["num_bits"], group["weights"]["group_size"]
        shape = torch.Size(state[f"{name}.weight_shape"].tolist())
        scale = state[f"{name}.weight_scale"]
        gs = gs if gs is not None else shape[1]
        if not kernel_ok(bits, gs, shape[0]):
            reasons.add(f"W{bits}" + (f" g{gs}" if bits == 4 else ""))
            continue
        offset = 1 << (bits - 1)
        codes = unpack(state[f"{name}.weight_packed"], bits, shape) + offset
        zp_t = state[f"{name}.weight_zero_point"].t()
        zp_t = torch.empty(zp_t.shape, dtype=zp_t.dtype).copy_(zp_t)
        zero = unpack(zp_t, bits, torch.Size([scale.shape[1], scale.shape[0]])).t() + offset
        old = model.get_submodule(name)
        set_module(model, name, int4_layer(codes, scale, zero, getattr(old, "bias", None), device))
        done += 1
    note = f"int4 kernel on {done} of {len(names)} packed layers"
    if reasons:
        note += f" (no fast kernel here for {', '.join(sorted(reasons))})"
    return KernelReport(done, len(names), note)
