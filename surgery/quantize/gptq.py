"""GPTQ (Frantar et al. 2022) on one linear layer, as pure tensor functions.

Hessian H = (2/n)·Σ x xᵀ over the layer's calibration inputs; damping adds `damp`·mean(diag H)
to the diagonal (1 % by default); columns are quantized left to right in blocks, each column's
error spread over the columns not yet quantized through the upper Cholesky factor of H⁻¹. Group
parameters are taken when a group's first column is reached, from the already-updated weights.
With `act_order`, columns go in order of decreasing diag(H) and the groups are fixed beforehand
on the original weights ("static groups"), so that every group still means consecutive input
columns — the layout compressed-tensors stores.
"""
from __future__ import annotations

import torch

from surgery.export.grid import codes, dequantize, grouped
from surgery.linalg import damp_, inverse_cholesky_upper_
from surgery.quantize.quantizer import QParams, qparams


class HessianAccumulator:
    """Running H = (2/n)·Σ x xᵀ for one layer (inputs [..., in_features])."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu") -> None:
        self.H = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(self.H.device, torch.float32)
        m = x.shape[0]
        self.H.mul_(self.n / (self.n + m))
        self.n += m
        x = x * (2.0 / self.n) ** 0.5
        self.H.addmm_(x.t(), x)

    def release(self) -> torch.Tensor:
        """H, handed over (this accumulator no longer holds it): lets `gptq_quantize(...,
        overwrite=True)` work in its storage with no other reference keeping a copy alive."""
        H, self.H = self.H, None
        return H


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int, damp: float = 0.01,
                  act_order: bool = False, block_size: int = 128, static_groups: bool = False,
                  overwrite: bool = False) -> tuple[torch.Tensor, QParams]:
    """Quantized weights (on the returned grid) and their per-(row, group) parameters.

    `static_groups` (implied by `act_order`) takes every group's grid from the original weights
    before any update, as GPTQ's `--static-groups` and llm-compressor do. With `overwrite`, H is
    the working storage of the damping and the factorisations (the caller gives it up): one in×in
    matrix at the peak instead of two.
    """
    static = static_groups or act_order
    W = W.detach().clone().float()
    rows, cols = W.shape
    H = H.detach().float()
    if not overwrite:
        H = H.clone()
    dead = damp_(H, 0.0)  # dead inputs only; the damping proper comes after the reordering
    W[:, dead] = 0
    ngroups = cols // group_size
    scale = torch.empty(rows, ngroups, device=W.device)
    zero = torch.empty(rows, ngroups, device=W.device)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols, device=W.device)
    if static:  # every group's grid from the original weights
        qp = qparams(W, bits, group_size)
        scale.copy_(qp.scale)
        zero.copy_(qp.zero)
    if act_order:
        W = W[:, perm]
        H = H.index_select(0, perm)  # two steps: at most two in×in matrices at once
        H = H.index_select(1, perm)
    damp_(H, damp)  # a permutation leaves the diagonal's mean unchanged
    Hinv = inverse_cholesky_upper_(H, "GPTQ: the damped Hessian")  # over H's storage
    Q = torch.zeros_like(W)
    block_size = max(block_size, group_size)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            g = int(perm[col]) // group_size
            if not static and col % group_size == 0:
                qp = qparams(W1[:, i : i + group_size], bits, group_size)
                scale[:, g], zero[:, g] = qp.scale[:, 0], qp.zero[:, 0]
            w = W1[:, i]
            q = dequantize(codes(w, scale[:, g], zero[:, g], bits), scale[:, g], zero[:, g])
            Q1[:, i] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if act_order:
        Q = Q[:, torch.argsort(perm)]
    return Q, QParams(scale, zero)


def layer_error(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> float:
    """tr((W − Q) H (W − Q)ᵀ): the layer-output squared error GPTQ minimises (per sample, ×½n)."""
    D = (W - Q).float()
    return float(torch.einsum("ij,jk,ik->", D, H.float(), D))


__all__ = ["HessianAccumulator", "grouped", "gptq_quantize", "layer_error"]
