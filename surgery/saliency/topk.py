"""Exact top-k selection over many tensors without sorting them, in one process or across shards.

A non-negative fp32 value and its int32 bit pattern sort the same way, so the k-th largest
magnitude is found by a radix select on the 31-bit keys: one histogram per digit, each counting
only the keys that share the digits already fixed. Memory is one small histogram plus one chunk
of keys; the cost is a few streaming passes, against the full sort (and N-sized index tensors) of
an argsort. On CPU two 16-bit digits (two passes), the keys outside the current prefix filtered
out first. On CUDA, when the keys fit beside the scores (N < 2^31), torch's own radix select
(`kthvalue`, the kernel behind `torch.topk`) finds the exact threshold on their concatenation;
otherwise four 8-bit digits are counted without boolean indexing, so no pass waits on the host.

Ties at the threshold go to the earliest positions: tensor order, then flat index — so the count
is exact and the result deterministic. With `distributed=True` each rank holds its row shards of
the tensors (FSDP2's layout); histograms and tie counts are summed over ranks, never the scores,
and the global position order is tensor order, then rank, then local flat index.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from surgery import dist
from surgery.errors import SurgeryError

CHUNK = 1 << 22  # elements per streamed chunk: 16 MiB of fp32 keys
_NAN_KEY = 0x7F800000  # bit pattern of +inf; anything above is NaN
_DIGITS = {"cpu": ((16, 15), (0, 16)), "cuda": ((24, 7), (16, 8), (8, 8), (0, 8))}  # (shift, bits)


def _key_chunks(t: torch.Tensor, chunk: int = CHUNK) -> Iterator[torch.Tensor]:
    """int32 sort keys of |t|, chunk by chunk (flat order)."""
    flat = t.detach().reshape(-1)
    for start in range(0, flat.numel(), chunk):
        part = flat[start : start + chunk]
        yield part.to(torch.float32).abs().view(torch.int32)


def _select_digit(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """The digit whose bucket holds the k-th largest key (k ≥ 1), and the count above it."""
    above = torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])  # above[d] = #keys with digit ≥ d
    d = int(torch.nonzero(above >= k).max())  # largest d with above[d] ≥ k
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


def _histogram(tensors: Sequence[torch.Tensor], shift: int, bits: int, prefix: int | None,
               chunk: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts of digit (key >> shift) & (2^bits − 1) among keys whose higher digits equal `prefix`,
    and the count of NaN keys."""
    nbins = 1 << bits
    hist = torch.zeros(nbins + 1, dtype=torch.int64, device=device)
    nan = torch.zeros((), dtype=torch.int64, device=device)
    for t in tensors:
        for keys in _key_chunks(t, chunk):
            if prefix is None:
                nan += (keys > _NAN_KEY).sum()
            elif device.type == "cpu":  # a host-side filter is free here and shrinks the count
                keys = keys[(keys >> (shift + bits)) == prefix]
            digit = (keys >> shift) & (nbins - 1)
            if prefix is not None and device.type != "cpu":  # no sync: park other keys in bin nbins
                digit = torch.where((keys >> (shift + bits)) == prefix, digit, nbins)
            hist += torch.bincount(digit, minlength=nbins + 1)
    return hist[:nbins], nan


def _kth_by_select(tensors: Sequence[torch.Tensor], k: int) -> Threshold:
    """The threshold from one radix select over the concatenated keys (memory: N fp32 keys)."""
    keys = torch.cat([t.detach().reshape(-1).to(torch.float32).abs() for t in tensors]).view(torch.int32)
    if bool((keys > _NAN_KEY).any()):
        raise SurgeryError("scores contain NaN; cannot rank them")
    key = int(torch.kthvalue(keys, keys.numel() - k + 1).values)  # int32 keys order like the values
    return Threshold(key=key, count_gt=int((keys > key).sum()), k=k)


def kth_largest(tensors: Sequence[torch.Tensor], k: int, chunk: int = CHUNK, distributed: bool = False,
                digits: Sequence[tuple[int, int]] | None = None, method: str = "auto") -> Threshold:
    """Exact k-th largest |value| over all `tensors` (1 ≤ k ≤ total count; with `distributed`,
    over every rank's tensors). `method`: `auto` (by device, see above), `select` or `radix`;
    `digits` overrides the radix passes' (shift, bits)."""
    device = tensors[0].device
    total = torch.tensor([sum(t.numel() for t in tensors)], dtype=torch.int64, device=device)
    if distributed:
        dist.all_reduce_sum_(total)
    if not 1 <= k <= int(total):
        raise SurgeryError(f"k={k} outside [1, {int(total)}]")
    if method == "auto":
        method = "select" if device.type == "cuda" and not distributed and int(total) < 2**31 else "radix"
    if method == "select":
        return _kth_by_select(tensors, k)
    passes = digits or _DIGITS["cuda" if device.type == "cuda" else "cpu"]
    prefix, key, above, rest = None, 0, 0, k
    for shift, bits in passes:
        hist, nan = _histogram(tensors, shift, bits, prefix, chunk, device)
        if distributed:
            both = torch.cat([hist, nan.view(1)])
            dist.all_reduce_sum_(both)
            hist, nan = both[:-1], both[-1]
        if prefix is None and int(nan):
            raise SurgeryError("scores contain NaN; cannot rank them")
        d, gt = _select_digit(hist, rest)
        key, above, rest = key | (d << shift), above + gt, rest - gt
        prefix = key >> shift
    return Threshold(key=key, count_gt=above, k=k)


def _tie_quota(tensors: Sequence[torch.Tensor], thr: Threshold, chunk: int, distributed: bool) -> list[int]:
    """How many threshold ties each tensor (this rank's part of it) takes, in global position order."""
    device = tensors[0].device
    local = torch.tensor([sum(int((keys == thr.key).sum()) for keys in _key_chunks(t, chunk)) for t in tensors],
                         dtype=torch.int64, device=device)
    counts = dist.all_gather_stack(local) if distributed else local.view(1, -1)  # [ranks, tensors]
    left, me = thr.ties_needed, dist.rank() if distributed else 0
    quota = [0] * len(tensors)
    for i in range(len(tensors)):
        for r in range(counts.shape[0]):
            take = min(int(counts[r, i]), left)
            left -= take
            if r == me:
                quota[i] = take
    return quota


def topk_masks(tensors: Sequence[torch.Tensor], k: int, chunk: int = CHUNK, distributed: bool = False,
               digits: Sequence[tuple[int, int]] | None = None, method: str = "auto") -> list[torch.Tensor]:
    """Bool masks (shaped like `tensors`) with exactly k ones at the k largest |values| (over every
    rank's tensors with `distributed`). Ties at the threshold go to the earliest positions."""
    total = torch.tensor([sum(t.numel() for t in tensors)], dtype=torch.int64, device=tensors[0].device)
    if distributed:
        dist.all_reduce_sum_(total)
    if k <= 0:
        return [torch.zeros_like(t, dtype=torch.bool) for t in tensors]
    if k >= int(total):
        return [torch.ones_like(t, dtype=torch.bool) for t in tensors]
    thr = kth_largest(tensors, k, chunk, distributed, digits, method)
    quota = _tie_quota(tensors, thr, chunk, distributed) if thr.ties_needed else [0] * len(tensors)
    masks = []
    for t, ties_left in zip(tensors, quota):
        parts = []
        for keys in _key_chunks(t, chunk):
            m = keys > thr.key
            if ties_left > 0:
                idx = torch.nonzero(keys == thr.key).flatten()[:ties_left]
                m[idx] = True
                ties_left -= idx.numel()
            parts.append(m)
        masks.append(torch.cat(parts).view(t.shape) if parts else torch.zeros_like(t, dtype=torch.bool))
    return masks
