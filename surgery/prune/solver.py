"""The local structural solver of Týr-the-Pruner for one sub-layer output projection, pure math.

Problem: the projection W [out, in] sees inputs X (possibly carrying upstream pruning error) and
should reproduce the dense outputs Y = X_dense W_denseᵀ. Units are groups of input columns (a KV
group's heads in `o_proj`, one neuron in `down_proj`). With H = XᵀX (damped by 1 % of its mean
diagonal) and C = XᵀY:

- saliency of unit p (columns P) at the current W: first-order |⟨G_P, W_P⟩| with G = W·H − Cᵀ (the
  gradient of ½‖XWᵀ − Y‖², non-zero when X ≠ X_dense) plus the OBS term
  ½·tr(W_P (H⁻¹_PP)⁻¹ W_Pᵀ);
- progressive removal in rounds: the cheapest units go, the rest absorb them by the OBS update
  W ← W − W_P (H⁻¹_PP)⁻¹ H⁻¹_P,: and H⁻¹ is downdated;
- the kept columns K are finally re-solved by least squares, W_K = (H_KK⁻¹ C_K)ᵀ.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from surgery.errors import SurgeryError
from surgery.linalg import damp_, inverse_


class Covariance:
    """Running H = XᵀX/n and M = XᵀX_dense/n for one projection input (C = M·W_denseᵀ)."""

    def __init__(self, dim: int, device: torch.device | str = "cpu") -> None:
        self.H = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.M = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.n = 0

    def add(self, x: torch.Tensor, x_dense: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(self.H.device, torch.float64)
        xd = x_dense.reshape(-1, x_dense.shape[-1]).to(self.H.device, torch.float64)
        m = x.shape[0]
        scale = self.n / (self.n + m)
        self.H.mul_(scale).addmm_(x.t(), x, alpha=1.0 / (self.n + m))
        self.M.mul_(scale).addmm_(x.t(), xd, alpha=1.0 / (self.n + m))
        self.n += m


def damped(H: torch.Tensor, damp: float, inplace: bool = False) -> torch.Tensor:
    H = H if inplace else H.clone()
    damp_(H, damp)
    return H


def _inv(H: torch.Tensor) -> torch.Tensor:
    return inverse_(H.clone(), "pruning solver: the damped Hessian")


def least_squares(H: torch.Tensor, C: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """argmin_W ‖XWᵀ − Y‖² with only columns `keep` non-zero: W_K = (H_KK⁻¹ C_K)ᵀ, [out, in]."""
    W = torch.zeros(C.shape[1], H.shape[0], dtype=H.dtype, device=H.device)
    if keep.numel():
        HK = H[keep][:, keep]
        W[:, keep] = torch.linalg.solve(HK, C[keep]).t()
    return W


def _solve_spd(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A⁻¹B for a batch of symmetric positive definite blocks, by Cholesky.

    Not `torch.linalg.solve`: its batched LU solve fails on this torch 2.13 CPU build once MKL runs
    on two threads (`DLASWP` parameter error, e.g. 2 blocks of 256×256 with 8 right-hand sides).
    Blocks that lost definiteness to round-off are solved one by one.
    """
    L, info = torch.linalg.cholesky_ex(A)
    if not bool((info != 0).any()):
        return torch.cholesky_solve(B, L)
    return torch.stack([torch.linalg.solve(a, b) for a, b in zip(A, B)])


def unit_scores(W: torch.Tensor, H: torch.Tensor, C: torch.Tensor, Hinv: torch.Tensor,
                cols: torch.Tensor) -> torch.Tensor:
    """First-order + OBS saliency of each unit (rows of `cols`: the unit's column indices)."""
    G = W @ H - C.t()  # gradient of ½‖XWᵀ − Y‖² in W
    WP = W[:, cols]  # [out, U, s]
    first = (G[:, cols] * WP).sum(dim=(0, 2)).abs()
    blocks = Hinv[cols.unsqueeze(-1), cols.unsqueeze(-2)]  # [U, s, s]
    z = _solve_spd(blocks, WP.permute(1, 2, 0))  # [U, s, out]
    obs = 0.5 * (WP.permute(1, 2, 0) * z).sum(dim=(1, 2))
    return first + obs


@dataclass
class Snapshot:
    """The result at one unit count: kept unit ids (sorted) and the re-solved weight [out, in]."""

    kept_units: torch.Tensor
    weight: torch.Tensor


def _weight_units(alive: torch.Tensor, group: int) -> int:
    """Units removed plus, with query-head units in KV groups of `group`, KV heads left with no query."""
    gone = int((~alive).sum())
    if group <= 1:
        return gone
    return gone + int((~alive.view(-1, group).any(1)).sum())


def _round_picks(order: torch.Tensor, alive: torch.Tensor, group: int, quota: int) -> list[int]:
    """The cheapest units (in `order`) whose removal spends exactly up to `quota` weight units: a
    query head costs one, two if it is the last of its KV group."""
    if group <= 1:
        return order[:quota].tolist()
    left = alive.view(-1, group).sum(1).tolist()
    picks, spent = [], 0
    for u in order.tolist():
        cost = 2 if left[u // group] == 1 else 1
        if spent + cost <= quota:
            picks.append(u)
            left[u // group] -= 1
            spent += cost
        if spent == quota:
            break
    return picks


def _ls_error(H: torch.Tensor, C: torch.Tensor, keep: torch.Tensor) -> float:
    """½‖XWᵀ − Y‖² − const of the least-squares solution on columns `keep` (lower is better)."""
    HK, CK = H[keep][:, keep], C[keep]
    return -0.5 * float((CK * torch.linalg.solve(HK, CK)).sum())


def progressive_prune(W: torch.Tensor, cov: Covariance, W_dense: torch.Tensor, unit_size: int,
                      removals: list[int], damp: float = 0.01, rounds: int = 16,
                      group: int = 0) -> dict[int, Snapshot]:
    """Remove units progressively; return a least-squares re-solved snapshot after each count in
    `removals` (ascending, each reachable).

    W is the starting weight (the current, possibly already-updated projection), W_dense the dense
    weight that defines the targets Y. Each step between two requested counts is done in up to
    `rounds` rounds of equal size (the cheapest units of each round go together). The statistics
    are consumed: H is damped in place and M released once C = M·W_denseᵀ is formed (two in×in
    matrices fewer at the peak).

    With `group` > 1 the units are query heads, `group` to a KV head, and a count is in weight
    units: heads removed plus KV heads left without a query (a KV head weighs what a query head
    does). When only last-of-group heads remain and one weight unit is still due, the snapshot
    removes the cheapest of them and keeps the removed head of a live group whose return fits best
    (least squares); the path itself goes on one unit further.
    """
    W = W.detach().to(torch.float64).clone()
    H = damped(cov.H.to(W.device), damp, inplace=True)
    C = cov.M.to(W.device, torch.float64) @ W_dense.detach().to(W.device, torch.float64).t()  # XᵀY [in, out]
    cov.H, cov.M = H, None
    n_units = W.shape[1] // unit_size
    if W.shape[1] % unit_size:
        raise SurgeryError(f"{W.shape[1]} input columns do not split into units of {unit_size}")
    if group > 1 and n_units % group:
        raise SurgeryError(f"{n_units} query heads do not split into KV groups of {group}")
    most = n_units if group <= 1 else n_units + n_units // group - 2  # heads: one head and its KV stay
    if any(r < 0 or r > most for r in removals) or removals != sorted(set(removals)):
        raise SurgeryError(f"unit removals {removals} must be ascending in [0, {most}]")
    Hinv = _inv(H)
    alive = torch.ones(n_units, dtype=torch.bool)
    cols = torch.arange(W.shape[1], device=W.device).view(n_units, unit_size)
    out: dict[int, Snapshot] = {}
    removed = 0

    def drop(gone: torch.Tensor) -> None:
        nonlocal W, Hinv
        P = cols[gone.to(W.device)].reshape(-1)
        HPP_inv = torch.linalg.inv(Hinv[P][:, P])
        W -= W[:, P] @ HPP_inv @ Hinv[P, :]
        Hinv -= Hinv[:, P] @ HPP_inv @ Hinv[P, :]
        W[:, P] = 0
        Hinv[P, :] = 0
        Hinv[:, P] = 0
        alive[gone] = False

    def snapshot(keep_units: torch.Tensor) -> Snapshot:
        return Snapshot(keep_units, least_squares(H, C, cols[keep_units.to(W.device)].reshape(-1)))

    for target in removals:
        todo = target - removed
        per_round = max(1, -(-todo // rounds)) if todo else 0
        restored = None
        while removed < target:
            idx = torch.nonzero(alive).flatten()
            order = idx[torch.argsort(unit_scores(W, H, C, Hinv, cols[idx.to(W.device)]).cpu(), stable=True)]
            picks = _round_picks(order, alive, group, min(per_round, target - removed))
            if not picks:  # one unit due, only last-of-group heads left: overshoot, then return one head
                before = alive.clone()
                drop(order[:1])
                live = alive.view(-1, group).any(1).repeat_interleave(group)
                back = torch.nonzero(~before & live.view(-1)).flatten()  # removed before, group still alive
                errs = [_ls_error(H, C, cols[torch.nonzero(alive).flatten().tolist() + [int(b)]].reshape(-1)
                                  .sort().values.to(W.device)) for b in back]
                restored = int(back[min(range(len(errs)), key=errs.__getitem__)])
                removed = _weight_units(alive, group)
                break
            drop(torch.tensor(picks))
            removed = _weight_units(alive, group)
        kept = torch.nonzero(alive).flatten()
        if restored is not None:
            out[target] = snapshot(torch.cat([kept, torch.tensor([restored])]).sort().values)
        if removed == target:
            out[target] = snapshot(kept)
    return out
