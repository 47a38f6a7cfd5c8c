"""Damping and inversion of layer Hessians H = XᵀX/n, shared by GPTQ and the pruning solver.

A wide layer's Hessian is the largest tensor a block-wise engine holds (an 8192-wide FFN input:
256 MiB in fp32, 512 MiB in fp64), so these work in H's own storage: no dense identity for the
damping and no second in×in matrix for the factorisations. torch's `cholesky(out=H)` and
`cholesky_inverse(out=H)` still allocate a full-size result before copying it over H, so on the
CPU the factorisations call LAPACK (`potrf`, `potri`, through SciPy) on H's memory itself.
"""
from __future__ import annotations

import numpy as np
import torch

from surgery.errors import SurgeryError

_MIRROR_ROWS = 256  # rows per block when mirroring a triangle (the only temporaries: blocks this tall)


def _in_place(H: torch.Tensor) -> bool:
    return H.device.type == "cpu" and H.dtype in (torch.float32, torch.float64) and H.is_contiguous() \
        and not H.requires_grad


def _lapack(H: torch.Tensor, routine: str, what: str, hint: str) -> None:
    """Run LAPACK `routine` (potrf / potri, lower) on H's memory: numpy's Fortran view of a C-ordered H
    is Hᵀ, so LAPACK's lower triangle is H's upper triangle (H symmetric: Hᵀ = H)."""
    from scipy.linalg import lapack
    from threadpoolctl import threadpool_limits

    F = H.numpy().T
    fn = getattr(lapack, ("d" if H.dtype == torch.float64 else "s") + routine)
    with threadpool_limits(limits=1, user_api="blas"):  # no BLAS worker threads left spinning beside torch's
        out, info = fn(F, lower=1, overwrite_a=1, clean=0) if routine == "potrf" else fn(F, lower=1, overwrite_c=1)
    if info != 0:
        raise SurgeryError(f"{what} is not positive definite{hint}")
    if not np.shares_memory(out, F):  # SciPy copied after all: put the result in place
        F[...] = out


def _mirror_upper_(H: torch.Tensor) -> None:
    """Copy H's upper triangle onto its lower one, in blocks of rows."""
    for i0 in range(0, H.shape[0], _MIRROR_ROWS):
        i1 = min(H.shape[0], i0 + _MIRROR_ROWS)
        H[i0:i1, :i0] = H[:i0, i0:i1].t()
        block = H[i0:i1, i0:i1]
        block.copy_(block.triu() + block.triu(1).t())


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
    if _in_place(H):
        _lapack(H, "potrf", what, hint)
        _lapack(H, "potri", what, hint)
        _mirror_upper_(H)
        return H
    try:
        torch.linalg.cholesky(H, out=H)
        torch.cholesky_inverse(H, out=H)
    except RuntimeError:
        raise SurgeryError(f"{what} is not positive definite{hint}") from None
    return H


def inverse_cholesky_upper_(H: torch.Tensor, what: str = "the damped Hessian") -> torch.Tensor:
    """The upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), computed over H's storage (H is consumed)."""
    inverse_(H, what, "; raise damping")
    if _in_place(H):
        _lapack(H, "potrf", what, "; raise damping")
        return H.triu_()
    try:
        torch.linalg.cholesky(H, upper=True, out=H)
    except RuntimeError:
        raise SurgeryError(f"{what} is not positive definite; raise damping") from None
    return H
