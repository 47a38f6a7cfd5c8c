"""The local structural solver of Týr-the-Pruner for one sub-layer output projection, pure math.

Problem: the projection W [out, in] sees inputs X and should reproduce the outputs Y = X_t W_denseᵀ,
where X_t (the target's inputs) is X itself (the layer imitates the dense layer on what it is fed)
or the dense model's inputs X_dense (it also corrects the upstream pruning error). Units are groups
of input columns (a KV group's heads in `o_proj`, one neuron in `down_proj`). With H = XᵀX (damped
by D = 1 % of its mean diagonal) and C = XᵀY:

- start: where the undamped loss ½‖XWᵀ − Y‖² is stationary, moved there by one Newton step when
  X_t ≠ X; what is left of the gradient is the damping's, G = D·W_startᵀ (W_start the given W). The
  OBS term below assumes a stationary point: from W_dense itself it ranks units by weights that the
  upstream error has made wrong (measured: a uniform 50 % stories260K model at 34.5 instead of 30.6);
- saliency of unit p (columns P) at the current W: a first-order term plus the OBS term
  ½·tr(W_P (H⁻¹_PP)⁻¹ W_Pᵀ), the loss increase of removing P when the live columns compensate. The
  first-order term is |⟨F_P, W_P⟩| with F either the gradient G (`gradient`: the damping's alone,
  so in effect OBS) or the output correlation F = Cᵀ = (XᵀY)ᵀ (`output`, Týr's "G = H·W": the
  unit's share of the output along the target, which counts what the compensation fitted on the
  calibration text may not give back elsewhere);
- progressive removal in rounds: the cheapest units go, the rest absorb them by the OBS update
  W ← W − W_P (H⁻¹_PP)⁻¹ H⁻¹_P,: and H⁻¹ is downdated to the inverse of H on the live columns A;
- the kept columns K are finally re-solved by least squares, W_K = (H_KK⁻¹ C_K)ᵀ.

Cost: the OBS update leaves G unchanged on the live columns (its change there is
−W_P (H⁻¹_PP)⁻¹ (H_AA⁻¹ H_AA)_P,A\P = 0), so G is formed once, not once per round; for the same
reason the least-squares solution on K is one Newton step from the path, W_K − G_K·H_KK⁻¹, with
H_KK⁻¹ the downdated inverse at hand (a product, no factorisation). With X_t = X and W = W_dense,
C = H·Wᵀ and the start is W itself: no in×in products at all beyond the one inverse.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from surgery.errors import SurgeryError
from surgery.linalg import damp_, inverse_


class Covariance:
    """Running H = XᵀX/n and M = XᵀX_dense/n for one projection input (C = M·W_denseᵀ).

    When every batch is given with X_dense the very tensor X (the target on the layer's own inputs: dense
    supernet inputs, or `target_inputs: pruned`), M = H and is
    not kept (`M` stays None): half the products and one in×in matrix fewer. `dtype` is the solver's
    precision: float64 by default; float32 (Týr's released code, GPTQ) halves the largest tensor."""

    def __init__(self, dim: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> None:
        self.H = torch.zeros(dim, dim, dtype=dtype, device=device)
        self.M: torch.Tensor | None = None
        self.n = 0

    def add(self, x: torch.Tensor, x_dense: torch.Tensor) -> None:
        paired = x_dense is not x
        if self.n and paired != (self.M is not None):
            raise SurgeryError("Covariance: every batch must come with its own dense inputs, or none may")
        if paired and self.M is None:
            self.M = torch.zeros_like(self.H)
        x = x.reshape(-1, x.shape[-1]).to(self.H.device, self.H.dtype)
        m = x.shape[0]
        scale, alpha = self.n / (self.n + m), 1.0 / (self.n + m)
        self.H.mul_(scale).addmm_(x.t(), x, alpha=alpha)
        if paired:
            xd = x_dense.reshape(-1, x_dense.shape[-1]).to(self.H.device, self.H.dtype)
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


def unit_scores(Wt: torch.Tensor, Gt: torch.Tensor | Gradient, Hinv: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """First-order + OBS saliency of each unit (rows of `cols`: the unit's column indices), from
    Wt = Wᵀ, the first-order matrix Gt [in, out] — the gradient Gᵀ (see `gradient`) or the output
    correlation C — and the inverse Hessian of the live columns."""
    G = Gt if isinstance(Gt, Gradient) else Gradient(Gt)
    if cols.shape[1] == 1:  # one column per unit: per-row sums over all rows, no gathers; a scalar OBS block
        c = cols[:, 0]
        first = G.row_dots(Wt)[c].abs()
        return first + 0.5 * torch.linalg.vector_norm(Wt, dim=1)[c].square() / Hinv.diagonal()[c]
    WP = Wt[cols]  # [U, s, out]
    first = (G.rows(cols.reshape(-1)).view(WP.shape) * WP).sum(dim=(1, 2)).abs()
    blocks = Hinv[cols.unsqueeze(-1), cols.unsqueeze(-2)]  # [U, s, s]
    obs = 0.5 * (WP * _solve_spd(blocks, WP)).sum(dim=(1, 2))
    return first + obs


@dataclass(frozen=True)
class Snapshot:
    """The result at one unit count, stored compactly: the kept unit ids (ascending) and only their
    re-solved columns (a candidate of the supernet is one of these)."""

    kept: torch.Tensor
    columns: torch.Tensor  # [out, kept units · unit]
    shape: tuple[int, int]  # the full weight's [out, in]
    unit: int  # columns per unit

    @classmethod
    def of(cls, kept: torch.Tensor, weight: torch.Tensor, unit: int) -> Snapshot:
        """From a full-shape weight whose other columns are dropped."""
        return cls(kept, weight[:, unit_columns(kept, unit)].contiguous(), tuple(weight.shape), unit)

    def full(self) -> torch.Tensor:
        """The full-shape weight (pruned columns zero)."""
        out = torch.zeros(self.shape, dtype=self.columns.dtype, device=self.columns.device)
        out[:, unit_columns(self.kept, self.unit).to(out.device)] = self.columns
        return out


def unit_columns(kept: torch.Tensor, unit: int) -> torch.Tensor:
    """The column indices of units `kept`, `unit` columns each."""
    return (kept.to(torch.long).view(-1, 1) * unit + torch.arange(unit, device=kept.device)).reshape(-1)


class Gradient:
    """Gᵀ [in, out], constant along the path. Held as a tensor, or — the damping's alone — as D·W_denseᵀ
    formed by rows when used (W_dense is the layer's own weight: no in×out copy). In d's dtype."""

    def __init__(self, Gt: torch.Tensor | None = None, d: torch.Tensor | None = None,
                 W_dense: torch.Tensor | None = None, chunk: int = 256) -> None:
        self.Gt, self.d, self.W_dense, self.chunk = Gt, d, W_dense, chunk

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        if self.Gt is not None:
            return self.Gt[idx]
        return self.d[idx].unsqueeze(1) * self.W_dense[:, idx].t().to(self.d.dtype)

    def row_dots(self, Wt: torch.Tensor) -> torch.Tensor:
        """⟨G_i, W_i⟩ for every input column i."""
        if self.Gt is not None:
            return torch.bmm(self.Gt.unsqueeze(1), Wt.unsqueeze(2)).view(-1)
        out = torch.empty(Wt.shape[0], dtype=Wt.dtype, device=Wt.device)
        for i0 in range(0, Wt.shape[0], self.chunk):
            sl = slice(i0, i0 + self.chunk)
            out[sl] = (self.W_dense[:, sl].t().to(Wt.dtype) * Wt[sl]).sum(1) * self.d[sl]
        return out

    def times(self, A: torch.Tensor) -> torch.Tensor:
        """A·Gᵀ for A [k, in]."""
        if self.Gt is not None:
            return A @ self.Gt
        if self.W_dense.dtype in (torch.float32, torch.float64):  # in W's own precision: the result is stored in it
            return ((A * self.d).to(self.W_dense.dtype) @ self.W_dense.t()).to(A.dtype)
        out = torch.zeros(A.shape[0], self.W_dense.shape[0], dtype=A.dtype, device=A.device)
        for i0 in range(0, A.shape[1], self.chunk):
            sl = slice(i0, i0 + self.chunk)
            out.addmm_(A[:, sl] * self.d[sl], self.W_dense[:, sl].t().to(A.dtype))
        return out

    def tensor(self) -> torch.Tensor:
        if self.Gt is not None:
            return self.Gt
        return self.rows(torch.arange(self.W_dense.shape[1], device=self.W_dense.device))


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


def _dense_t(W_dense: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return W_dense.detach().to(device, dtype).t()


def _ls_error(H: torch.Tensor, C: torch.Tensor, keep: torch.Tensor) -> float:
    """½‖XWᵀ − Y‖² − const of the least-squares solution on columns `keep` (lower is better)."""
    CK = C[keep]
    return -0.5 * float((CK * _solve_spd(H[keep.unsqueeze(1), keep], CK)).sum())


def progressive_prune(W: torch.Tensor, cov: Covariance, W_dense: torch.Tensor, unit_size: int,
                      removals: list[int], damp: float = 0.01, rounds: int = 16,
                      group: int = 0, first_order: str = "gradient") -> dict[int, Snapshot]:
    """Remove units progressively; return a least-squares re-solved snapshot after each count in
    `removals` (ascending, each reachable).

    W is the starting weight (the current, possibly already-updated projection), W_dense the dense
    weight that defines the targets Y. Each step between two requested counts is done in up to
    `rounds` rounds of equal size (the cheapest units of each round go together). The statistics
    are consumed (`cov` is emptied): H is damped and inverted in its own storage and M released
    once C = M·W_denseᵀ is formed (two in×in matrices fewer at the peak). Snapshots hold only the kept
    columns, in W's dtype; the path runs in the statistics' dtype (float64 unless `cov` was made float32).

    With `group` > 1 the units are query heads, `group` to a KV head, and a count is in weight
    units: heads removed plus KV heads left without a query (a KV head weighs what a query head
    does). When only last-of-group heads remain and one weight unit is still due, the snapshot
    removes the cheapest of them and keeps the removed head of a live group whose return fits best
    (least squares); the path itself goes on one unit further.

    `first_order` picks the saliency's first-order term (module docstring); `output` keeps C = XᵀY
    [in, out] along the path: one in×out matrix more than `gradient` with the target on the own inputs.
    """
    if first_order not in ("gradient", "output"):
        raise SurgeryError(f"first_order must be 'gradient' or 'output', got {first_order!r}")
    n_in = W.shape[1]
    n_units = n_in // unit_size
    if n_in % unit_size:
        raise SurgeryError(f"{n_in} input columns do not split into units of {unit_size}")
    if group > 1 and n_units % group:
        raise SurgeryError(f"{n_units} query heads do not split into KV groups of {group}")
    most = n_units if group <= 1 else n_units + n_units // group - 2  # heads: one head and its KV stay
    if any(r < 0 or r > most for r in removals) or removals != sorted(set(removals)):
        raise SurgeryError(f"unit removals {removals} must be ascending in [0, {most}]")
    H, M = cov.H.to(W.device), cov.M
    Wt = torch.empty(n_in, W.shape[0], dtype=H.dtype, device=W.device).copy_(W.detach().t())
    cov.H = cov.M = None
    # the target on the own inputs from the dense weight: C = H·Wᵀ, W is where the loss is stationary
    paired = not (M is None and (W is W_dense or torch.equal(W, W_dense)))
    C: torch.Tensor | None = None
    if paired or first_order == "output":
        C = (H if M is None else M.to(W.device)) @ _dense_t(W_dense, W.device, H.dtype)  # XᵀY [in, out]
    del M
    undamped = H.diagonal().clone()
    damp_(H, damp)
    d = H.diagonal() - undamped  # D, the damping: what is left of the gradient at the start, G = D·Wᵀ
    del undamped
    # else the undamped loss's gradient (the upstream error's pull), formed before H is inverted in place
    E = gradient(Wt, H, C).sub_(d.unsqueeze(1) * Wt) if paired else None
    Hinv = _inv(H) if group > 1 else inverse_(H, "pruning solver: the damped Hessian")
    if E is not None:
        Wt.addmm_(Hinv, E, alpha=-1.0)  # one Newton step to where only the damping pulls
        del E
    G = Gradient(d=d, W_dense=W.detach())
    # H itself is needed later only by the give-back path of query-head units; else it is now H⁻¹
    if group <= 1:
        H = None
    F = G if first_order == "gradient" else C  # the first-order term's matrix, [in, out]
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

    def targets() -> torch.Tensor:  # C, formed when first needed: C = H·W_denseᵀ − G (target on the own inputs)
        nonlocal C
        if C is None:
            C = torch.addmm(G.tensor(), H, _dense_t(W_dense, W.device, H.dtype), beta=-1.0)
        return C

    def snapshot(keep_units: torch.Tensor) -> Snapshot:
        K = cols[keep_units.to(Wt.device)].reshape(-1)
        return Snapshot.of(keep_units, least_squares(H, targets(), K).to(W.dtype), unit_size)

    def path_snapshot(keep_units: torch.Tensor, chunk: int = 128) -> Snapshot:
        """The least-squares solution on the live columns K in one Newton step from the path:
        W_K − G_K·H_KK⁻¹ (G_K is the gradient there, H⁻¹ is already H_KK⁻¹, zero off K) — products
        over row chunks, no solve and no |K|² gather; only K's columns are written."""
        K = cols[keep_units.to(Wt.device)].reshape(-1)
        columns = torch.empty(W.shape[0], K.numel(), dtype=W.dtype, device=W.device)
        for k0 in range(0, K.numel(), chunk):
            Kb = K[k0:k0 + chunk]
            columns[:, k0:k0 + Kb.numel()] = (Wt[Kb] - G.times(Hinv[Kb])).t()
        return Snapshot(keep_units, columns, tuple(W.shape), unit_size)

    for target in removals:
        todo = target - removed
        per_round = max(1, -(-todo // rounds)) if todo else 0
        restored = None
        while removed < target:
            idx = torch.nonzero(alive).flatten()
            order = idx[torch.argsort(unit_scores(Wt, F, Hinv, cols[idx.to(Wt.device)]).cpu(), stable=True)]
            picks = _round_picks(order, alive, group, min(per_round, target - removed))
            if not picks and target - removed > 1:  # only last-of-group heads left: one goes with its KV head
                picks = _round_picks(order, alive, group, 2)
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
