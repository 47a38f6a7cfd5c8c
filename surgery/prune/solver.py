"""The local structural solver of Týr-the-Pruner for one sub-layer output projection, pure math.

Problem: the projection W [out, in] sees inputs X (possibly carrying upstream pruning error) and
should reproduce the dense outputs Y = X_dense W_denseᵀ. Units are groups of input columns (a KV
group's heads in `o_proj`, one neuron in `down_proj`). With H = XᵀX (damped by 1 % of its mean
diagonal) and C = XᵀY:

- saliency of unit p (columns P) at the current W: first-order |⟨G_P, W_P⟩| with G = W·H − Cᵀ (the
  gradient of ½‖XWᵀ − Y‖², non-zero when X ≠ X_dense, and by the damping) plus the OBS term
  ½·tr(W_P (H⁻¹_PP)⁻¹ W_Pᵀ);
- progressive removal in rounds: the cheapest units go, the rest absorb them by the OBS update
  W ← W − W_P (H⁻¹_PP)⁻¹ H⁻¹_P,: and H⁻¹ is downdated to the inverse of H on the live columns A;
- the kept columns K are finally re-solved by least squares, W_K = (H_KK⁻¹ C_K)ᵀ.

Cost: the OBS update leaves G unchanged on the live columns (its change there is
−W_P (H⁻¹_PP)⁻¹ (H_AA⁻¹ H_AA)_P,A\P = 0), so G is formed once, not once per round; for the same
reason the least-squares solution on K is one Newton step from the path, W_K − G_K·H_KK⁻¹, with
H_KK⁻¹ the downdated inverse at hand (a product, no factorisation). With dense inputs (X = X_dense)
and W = W_dense, C = H·Wᵀ and G = D·Wᵀ (D the damping on the diagonal): no in×in products at all
beyond the one inverse.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from surgery.errors import SurgeryError
from surgery.linalg import damp_, inverse_


class Covariance:
    """Running H = XᵀX/n and M = XᵀX_dense/n for one projection input (C = M·W_denseᵀ).

    When every batch is given with X_dense the very tensor X (dense supernet inputs), M = H and is
    not kept (`M` stays None): half the products and one in×in matrix fewer."""

    def __init__(self, dim: int, device: torch.device | str = "cpu") -> None:
        self.H = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.M: torch.Tensor | None = None
        self.n = 0

    def add(self, x: torch.Tensor, x_dense: torch.Tensor) -> None:
        paired = x_dense is not x
        if self.n and paired != (self.M is not None):
            raise SurgeryError("Covariance: every batch must come with its own dense inputs, or none may")
        if paired and self.M is None:
            self.M = torch.zeros_like(self.H)
        x = x.reshape(-1, x.shape[-1]).to(self.H.device, torch.float64)
        m = x.shape[0]
        scale, alpha = self.n / (self.n + m), 1.0 / (self.n + m)
        self.H.mul_(scale).addmm_(x.t(), x, alpha=alpha)
        if paired:
            xd = x_dense.reshape(-1, x_dense.shape[-1]).to(self.H.device, torch.float64)
            self.M.mul_(scale).addmm_(x.t(), xd, alpha=alpha)
        self.n += m

    @property
    def means(self) -> list[torch.Tensor]:
        """The running means held (for merging across ranks)."""
        return [self.H] if self.M is None else [self.H, self.M]


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
        W[:, keep] = _solve_spd(H[keep.unsqueeze(1), keep], C[keep]).t()
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
    if A.dim() == 2:
        return torch.linalg.solve(A, B)
    return torch.stack([torch.linalg.solve(a, b) for a, b in zip(A, B)])


def gradient(Wt: torch.Tensor, H: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Gᵀ = H·Wᵀ − C [in, out]: the gradient of ½‖XWᵀ − Y‖² in W, from Wt = Wᵀ.

    The solver keeps W and G transposed (one row per input column) so that a unit's columns are
    contiguous rows: its per-unit sums and gathers run at memory speed."""
    return torch.addmm(C, H, Wt, alpha=1.0, beta=-1.0)


def unit_scores(Wt: torch.Tensor, Gt: torch.Tensor, Hinv: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """First-order + OBS saliency of each unit (rows of `cols`: the unit's column indices), from
    Wt = Wᵀ, the gradient Gt = Gᵀ (see `gradient`) and the inverse Hessian of the live columns."""
    if cols.shape[1] == 1:  # one column per unit: per-row sums over all rows, no gathers; a scalar OBS block
        c = cols[:, 0]
        first = torch.bmm(Gt.unsqueeze(1), Wt.unsqueeze(2)).view(-1)[c].abs()
        return first + 0.5 * torch.linalg.vector_norm(Wt, dim=1)[c].square() / Hinv.diagonal()[c]
    WP = Wt[cols]  # [U, s, out]
    first = (Gt[cols] * WP).sum(dim=(1, 2)).abs()
    blocks = Hinv[cols.unsqueeze(-1), cols.unsqueeze(-2)]  # [U, s, s]
    obs = 0.5 * (WP * _solve_spd(blocks, WP)).sum(dim=(1, 2))
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


def _dense_t(W_dense: torch.Tensor, device: torch.device) -> torch.Tensor:
    return W_dense.detach().to(device, torch.float64).t()


def _ls_error(H: torch.Tensor, C: torch.Tensor, keep: torch.Tensor) -> float:
    """½‖XWᵀ − Y‖² − const of the least-squares solution on columns `keep` (lower is better)."""
    CK = C[keep]
    return -0.5 * float((CK * _solve_spd(H[keep.unsqueeze(1), keep], CK)).sum())


def progressive_prune(W: torch.Tensor, cov: Covariance, W_dense: torch.Tensor, unit_size: int,
                      removals: list[int], damp: float = 0.01, rounds: int = 16,
                      group: int = 0) -> dict[int, Snapshot]:
    """Remove units progressively; return a least-squares re-solved snapshot after each count in
    `removals` (ascending, each reachable).

    W is the starting weight (the current, possibly already-updated projection), W_dense the dense
    weight that defines the targets Y. Each step between two requested counts is done in up to
    `rounds` rounds of equal size (the cheapest units of each round go together). The statistics
    are consumed (`cov` is emptied): H is damped and inverted in its own storage and M released
    once C = M·W_denseᵀ is formed (two in×in matrices fewer at the peak). Snapshot weights come in
    W's dtype; the path runs in float64.

    With `group` > 1 the units are query heads, `group` to a KV head, and a count is in weight
    units: heads removed plus KV heads left without a query (a KV head weighs what a query head
    does). When only last-of-group heads remain and one weight unit is still due, the snapshot
    removes the cheapest of them and keeps the removed head of a live group whose return fits best
    (least squares); the path itself goes on one unit further.
    """
    n_in = W.shape[1]
    n_units = n_in // unit_size
    if n_in % unit_size:
        raise SurgeryError(f"{n_in} input columns do not split into units of {unit_size}")
    if group > 1 and n_units % group:
        raise SurgeryError(f"{n_units} query heads do not split into KV groups of {group}")
    most = n_units if group <= 1 else n_units + n_units // group - 2  # heads: one head and its KV stay
    if any(r < 0 or r > most for r in removals) or removals != sorted(set(removals)):
        raise SurgeryError(f"unit removals {removals} must be ascending in [0, {most}]")
    Wt = torch.empty(n_in, W.shape[0], dtype=torch.float64, device=W.device).copy_(W.detach().t())
    H, M = cov.H.to(W.device), cov.M
    cov.H = cov.M = None
    C: torch.Tensor | None = None
    if M is None and (W is W_dense or torch.equal(W, W_dense)):
        # dense inputs from the dense weight: C = H·Wᵀ, so G = (H + D)·Wᵀ − C = D·Wᵀ, D the damping
        undamped = H.diagonal().clone()
        damp_(H, damp)
        Gt = (H.diagonal() - undamped).unsqueeze(1) * Wt
        del undamped
    else:
        C = (H if M is None else M.to(W.device, torch.float64)) @ _dense_t(W_dense, W.device)  # XᵀY [in, out]
        del M
        damp_(H, damp)
        Gt = gradient(Wt, H, C)  # constant on the live columns along the path (module docstring)
    # H itself is needed later only by the give-back path of query-head units; else it becomes H⁻¹
    Hinv = _inv(H) if group > 1 else inverse_(H, "pruning solver: the damped Hessian")
    if group <= 1:
        H = None
    alive = torch.ones(n_units, dtype=torch.bool)
    cols = torch.arange(Wt.shape[0], device=Wt.device).view(n_units, unit_size)
    out: dict[int, Snapshot] = {}
    removed = 0

    def drop(gone: torch.Tensor) -> None:
        P = cols[gone.to(Wt.device)].reshape(-1)
        HinvP = Hinv[P, :]
        HPP_inv = torch.linalg.inv(HinvP[:, P])
        Wt.addmm_(HinvP.t(), HPP_inv @ Wt[P], alpha=-1.0)  # Hinv symmetric: Hinv[:, P] = HinvPᵀ
        Hinv.addmm_(HinvP.t() @ HPP_inv, HinvP, alpha=-1.0)
        Wt[P] = 0
        Hinv[P, :] = 0
        Hinv[:, P] = 0
        alive[gone] = False

    def targets() -> torch.Tensor:  # C, formed when first needed: C = H·W_denseᵀ − G with dense inputs
        nonlocal C
        if C is None:
            C = torch.addmm(Gt, H, _dense_t(W_dense, W.device), beta=-1.0)
        return C

    def snapshot(keep_units: torch.Tensor) -> Snapshot:
        return Snapshot(keep_units, least_squares(H, targets(), cols[keep_units.to(Wt.device)].reshape(-1)).to(W.dtype))

    def path_snapshot(keep_units: torch.Tensor, chunk: int = 1024) -> Snapshot:
        """The least-squares solution on the live columns K in one Newton step from the path:
        W_K − G_K·H_KK⁻¹ (G_K is the gradient there, H⁻¹ is already H_KK⁻¹, zero off K) — products
        over row chunks, no solve and no |K|² gather."""
        K = cols[keep_units.to(Wt.device)].reshape(-1)
        weight = torch.zeros(W.shape, dtype=W.dtype, device=W.device)
        for Kb in K.split(chunk):
            weight[:, Kb] = torch.addmm(Wt[Kb], Hinv[Kb], Gt, alpha=-1.0).t().to(W.dtype)
        return Snapshot(keep_units, weight)

    for target in removals:
        todo = target - removed
        per_round = max(1, -(-todo // rounds)) if todo else 0
        restored = None
        while removed < target:
            idx = torch.nonzero(alive).flatten()
            order = idx[torch.argsort(unit_scores(Wt, Gt, Hinv, cols[idx.to(Wt.device)]).cpu(), stable=True)]
            picks = _round_picks(order, alive, group, min(per_round, target - removed))
            if not picks:  # one unit due, only last-of-group heads left: overshoot, then return one head
                before = alive.clone()
                drop(order[:1])
                live = alive.view(-1, group).any(1).repeat_interleave(group)
                back = torch.nonzero(~before & live.view(-1)).flatten()  # removed before, group still alive
                errs = [_ls_error(H, targets(), cols[torch.nonzero(alive).flatten().tolist() + [int(b)]].reshape(-1)
                                  .sort().values.to(Wt.device)) for b in back]
                restored = int(back[min(range(len(errs)), key=errs.__getitem__)])
                removed = _weight_units(alive, group)
                break
            drop(torch.tensor(picks))
            removed = _weight_units(alive, group)
        kept = torch.nonzero(alive).flatten()
        if restored is not None:
            out[target] = snapshot(torch.cat([kept, torch.tensor([restored])]).sort().values)
        if removed == target:
            out[target] = path_snapshot(kept)
    return out
