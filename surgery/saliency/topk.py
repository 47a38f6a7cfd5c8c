"""Exact top-k selection over many tensors without sorting them.

A non-negative fp32 value and its int32 bit pattern sort the same way, so the k-th largest
magnitude is found by a two-pass radix select on 16-bit digits: one histogram of the high halves,
one of the low halves inside the bucket that holds the k-th value. Memory is two small histograms
plus one chunk of keys; the cost is two streaming passes, against the full sort (and the N-sized
index tensors) of an argsort. Ties at the threshold are broken by position: tensor order, then
flat index — so the count is exact and the result deterministic.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from surgery.errors import SurgeryError

CHUNK = 1 << 22  # elements per streamed chunk: 16 MiB of fp32 keys
_NAN_KEY = 0x7F800000  # bit pattern of +inf; anything above is NaN


def _key_chunks(t: torch.Tensor, chunk: int = CHUNK) -> Iterator[torch.Tensor]:
    """int32 sort keys of |t|, chunk by chunk (flat order)."""
    flat = t.detach().reshape(-1)
    for start in range(0, flat.numel(), chunk):
        part = flat[start : start + chunk]
        yield part.to(torch.float32).abs().view(torch.int32)


def _select_digit(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """The digit whose bucket holds the k-th largest key (k ≥ 1), and the count above it."""
    above = torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])  # above[d] = #keys with digit ≥ d
    # largest d with above[d] ≥ k
    d = int(torch.nonzero(above >= k).max())
    count_gt = int(above[d + 1]) if d + 1 < hist.numel() else 0
    return d, count_gt


@dataclass(frozen=True)
class Threshold:
    """The k-th largest magnitude `value` (as `key`), how many lie strictly above it, and k."""

    key: int
    count_gt: int
    k: int

    @property
    def value(self) -> float:
        return float(torch.tensor([self.key], dtype=torch.int32).view(torch.float32))

    @property
    def ties_needed(self) -> int:
        return self.k - self.count_gt


def kth_largest(tensors: Sequence[torch.Tensor], k: int, chunk: int = CHUNK) -> Threshold:
    """Exact k-th largest |value| over all `tensors` (1 ≤ k ≤ total count)."""
    total = sum(t.numel() for t in tensors)
    if not 1 <= k <= total:
        raise SurgeryError(f"k={k} outside [1, {total}]")
    device = tensors[0].device
    hi = torch.zeros(1 << 15, dtype=torch.int64, device=device)
    for t in tensors:
        for keys in _key_chunks(t, chunk):
            if bool((keys > _NAN_KEY).any()):
                raise SurgeryError("scores contain NaN; cannot rank them")
            hi += torch.bincount(keys >> 16, minlength=1 << 15)
    hi_digit, gt_hi = _select_digit(hi, k)
    lo = torch.zeros(1 << 16, dtype=torch.int64, device=device)
    for t in tensors:
        for keys in _key_chunks(t, chunk):
            inside = keys[(keys >> 16) == hi_digit]
            if inside.numel():
                lo += torch.bincount(inside & 0xFFFF, minlength=1 << 16)
    lo_digit, gt_lo = _select_digit(lo, k - gt_hi)
    return Threshold(key=(hi_digit << 16) | lo_digit, count_gt=gt_hi + gt_lo, k=k)


def topk_masks(
    tensors: Sequence[torch.Tensor], k: int, chunk: int = CHUNK
) -> list[torch.Tensor]:
    """Bool masks (shaped like `tensors`) with exactly k ones at the k largest |values|.

    Ties at the threshold go to the earliest positions (tensor order, then flat index).
    """
    if k <= 0:
        return [torch.zeros_like(t, dtype=torch.bool) for t in tensors]
    total = sum(t.numel() for t in tensors)
    if k >= total:
        return [torch.ones_like(t, dtype=torch.bool) for t in tensors]
    thr = kth_largest(tensors, k, chunk)
    ties_left = thr.ties_needed
    masks = []
    for t in tensors:
        parts = []
        for keys in _key_chunks(t, chunk):
            m = keys > thr.key
            if ties_left > 0:
                eq = keys == thr.key
                n_eq = int(eq.sum())
                if n_eq <= ties_left:
                    m |= eq
                    ties_left -= n_eq
                elif n_eq:
                    idx = torch.nonzero(eq).flatten()[:ties_left]
                    m[idx] = True
                    ties_left = 0
            parts.append(m)
        masks.append(torch.cat(parts).view(t.shape) if parts else torch.zeros_like(t, dtype=torch.bool))
    return masks
