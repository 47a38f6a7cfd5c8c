"""The uniform asymmetric group quantizer of ApiQ / OmniQuant, as pure tensor functions.

Groups are `group_size` consecutive input columns of one output row (`group_size = in_features`
is per-channel). Learnable weight clipping (LWC) shrinks each group's range: x_max ← σ(γ)·max,
x_min ← σ(β)·min, with γ = β = 4.0 at the start (σ(4) ≈ 0.982). Rounding is straight-through.

The range always contains zero (x_min ≤ 0 ≤ x_max), so the zero point is an integer in
[0, 2^b − 1]: that is what lets it be stored in b bits (compressed-tensors packs it) and makes the
grid exactly the one compressed-tensors dequantizes, (q − zp)·scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from surgery.errors import require
from surgery.export.grid import codes, dequantize_groups, grouped, qmax

BITS = (2, 3, 4, 8)
LWC_INIT = 4.0
SCALE_MIN, SCALE_MAX = 1e-5, 1e4


def check_bits_group(bits: int, group_size: int, in_features: int | None = None) -> None:
    """Reject bit widths outside {2,3,4,8}, group sizes that are not powers of two or that do not
    divide the layer's input width."""
    require(bits in BITS, f"num_bits must be one of {BITS}, got {bits}")
    require(group_size > 0 and group_size & (group_size - 1) == 0,
            f"group_size must be a power of two, got {group_size}")
    if in_features is not None:
        require(in_features % group_size == 0,
                f"group_size {group_size} does not divide the input width {in_features}")


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity gradient backward."""
    return (x.round() - x).detach() + x


@dataclass
class QParams:
    """Per-(row, group) scale (float) and zero point (integer-valued float), shapes [out, in/group]."""

    scale: torch.Tensor
    zero: torch.Tensor


def qparams(w: torch.Tensor, bits: int, group_size: int, gamma: torch.Tensor | None = None,
            beta: torch.Tensor | None = None) -> QParams:
    """Scale and zero point of each group, with optional LWC logits γ, β [out, in/group]."""
    g = grouped(w, group_size)
    xmax, xmin = g.amax(dim=-1), g.amin(dim=-1)
    if gamma is not None:
        xmax = torch.sigmoid(gamma) * xmax
    if beta is not None:
        xmin = torch.sigmoid(beta) * xmin
    xmax = xmax.clamp(min=0)
    xmin = xmin.clamp(max=0)
    scale = ((xmax - xmin) / qmax(bits)).clamp(SCALE_MIN, SCALE_MAX)
    zero = round_ste(-xmin / scale).clamp(0, qmax(bits))
    return QParams(scale, zero)


def fake_quant(w: torch.Tensor, bits: int, group_size: int, gamma: torch.Tensor | None = None,
               beta: torch.Tensor | None = None, qp: QParams | None = None) -> torch.Tensor:
    """Q(w): quantize and dequantize in w's dtype; differentiable in w, γ, β (STE)."""
    qp = qp or qparams(w, bits, group_size, gamma, beta)
    q = codes(grouped(w, group_size), qp.scale.unsqueeze(-1), qp.zero.unsqueeze(-1), bits, round_ste)
    return dequantize_groups(q.reshape(w.shape), qp.scale, qp.zero)


@torch.no_grad()
def quantize_int(w: torch.Tensor, bits: int, group_size: int, qp: QParams) -> torch.Tensor:
    """Integer codes q ∈ [0, 2^b − 1] (int32, shaped like w) on the grid `qp`."""
    q = codes(grouped(w, group_size), qp.scale.unsqueeze(-1), qp.zero.unsqueeze(-1), bits)
    return q.reshape(w.shape).to(torch.int32)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 20·log10(‖x‖ / ‖x − x̂‖) in dB (torchao's compute_error)."""
    noise = (reference.double() - approx.double()).norm()
    return float(20 * torch.log10(reference.double().norm() / noise.clamp_min(1e-30)))
