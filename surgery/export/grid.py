"""The integer grid every quantized weight lives on, defined once for the whole package.

A group of weights shares a scale s and an integer zero point z; a code q ∈ [0, 2^b − 1] stands
for the value (q − z)·s. compressed-tensors stores signed codes and zero points (both shifted by
2^(b−1)); the shift cancels in (q − z), so the same formula dequantizes both layouts.
"""
from __future__ import annotations

from collections.abc import Callable

import torch


def qmax(bits: int) -> int:
    return (1 << bits) - 1


def codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
          rounding: Callable[[torch.Tensor], torch.Tensor] = torch.round) -> torch.Tensor:
    """q = clamp(round(w / s) + z, 0, 2^b − 1), broadcasting `scale` and `zero` against `w`."""
    return (rounding(w / scale) + zero).clamp(0, qmax(bits))


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """(q − z)·s, computed in the scale's dtype (as compressed-tensors does)."""
    return (q.to(scale.dtype) - zero.to(scale.dtype)) * scale


def grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """[out, in] → [out, in/group, group]."""
    out, inp = w.shape
    return w.reshape(out, inp // group_size, group_size)


def dequantize_groups(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """A [out, in] code matrix with per-(row, group) `scale`/`zero` [out, in/group] → weights."""
    group_size = q.shape[1] // scale.shape[1]
    g = grouped(q, group_size)
    return dequantize(g, scale.unsqueeze(-1), zero.unsqueeze(-1)).reshape(q.shape)
