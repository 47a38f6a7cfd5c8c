"""Damping and inversion of layer Hessians H = XᵀX/n, shared by GPTQ and the pruning solver.

A wide layer's Hessian is the largest tensor a block-wise engine holds (an 8192-wide FFN input:
256 MiB in fp32, 512 MiB in fp64), so these work in H's own storage: no dense identity for the
damping and no second in×in matrix for the factorisations.
"""
from __future__ import annotations

import torch

from surgery.errors import SurgeryError


def damp_(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Damp H in place: dead inputs (zero diagonal) get 1 on the diagonal, then `damp`·mean(diag H)
    is added to the whole diagonal. Returns the mask of dead inputs (their weights see no data)."""
    diag = H.diagonal()
    dead = diag == 0
    diag[dead] = 1.0
    diag.add_(damp * diag.mean())
    return dead


def inverse_(H: torch.Tensor, what: str = "the damped Hessian", hint: str = "") -> torch.Tensor:
    """H⁻¹ for a symmetric positive definite H, computed over H's storage (H is consumed)."""
    try:
        torch.linalg.cholesky(H, out=H)
        torch.cholesky_inverse(H, out=H)
    except RuntimeError:
        raise SurgeryError(f"{what} is not positive definite{hint}") from None
    return H


def inverse_cholesky_upper_(H: torch.Tensor, what: str = "the damped Hessian") -> torch.Tensor:
    """The upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), computed over H's storage (H is consumed)."""
    inverse_(H, what, "; raise damping")
    try:
        torch.linalg.cholesky(H, upper=True, out=H)
    except RuntimeError:
        raise SurgeryError(f"{what} is not positive definite; raise damping") from None
    return H
