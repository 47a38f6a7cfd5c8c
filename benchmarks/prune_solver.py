"""The pruning supernet's local solver on one FFN `down_proj` of the scaling benchmark's model shapes.

`progressive_prune` on random correlated inputs (1,024 tokens, dense supernet inputs: the default),
neuron units, the 25 % supernet's five levels (12.5 … 37.5 % of the neurons), 16 rounds between
levels, 1 % damping: time and peak anonymous memory of the call, in this process, one shape after
another. Run it against an older checkout with `PYTHONPATH=<checkout>` to compare solvers; each
run writes its own JSON (`--out`).

    python benchmarks/prune_solver.py [--shapes 50M 200M 1B] [--out results/prune_solver.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from _common import RESULTS, Peak, stamp

SHAPES = {"50M": (1408, 512), "200M": (2816, 1024), "1B": (8192, 2048)}  # down_proj (in, out)


def run(n_in: int, n_out: int, tokens: int = 1024) -> dict:
    import surgery.prune.solver as solver

    g = torch.Generator().manual_seed(0)
    mix = torch.eye(n_in) + 0.1 * torch.randn(n_in, n_in, generator=g) / n_in ** 0.5
    X = torch.randn(tokens, n_in, generator=g) @ mix
    del mix
    W = torch.randn(n_out, n_in, generator=g) / n_in ** 0.5
    cov = solver.Covariance(n_in)
    cov.add(X, X)
    del X
    centre, step = n_in // 4, n_in // 16
    removals = [centre + k * step for k in (-2, -1, 0, 1, 2)]
    w8 = W[:, :8].clone()
    solver.progressive_prune(w8, solver.Covariance(8), w8, 1, [1])  # one-time costs (BLAS threads, imports)
    with Peak() as peak:
        t0 = time.time()
        snaps = solver.progressive_prune(W, cov, W, 1, removals, 0.01, 16)
        seconds = time.time() - t0
    kept = {r: snaps[r].kept.numel() for r in removals}
    return {"seconds": round(seconds, 2), "peak_extra_mib": round(peak.extra, 1),
            "hessian_mib": n_in * n_in * 8 / 2**20, "kept": kept}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--out", default=str(RESULTS / "prune_solver.json"))
    args = ap.parse_args()
    rows = {}
    for name in args.shapes:
        rows[name] = run(*SHAPES[name])
        print(name, json.dumps(rows[name]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({**stamp(), "rows": rows}, indent=2) + "\n")
    lines = ["| shape (down_proj in × out) | seconds | peak extra MiB | ÷ fp64 Hessian |", "|---|---|---|---|"]
    for name, r in rows.items():
        n_in, n_out = SHAPES[name]
        lines.append(f"| {name} ({n_in} × {n_out}) | {r['seconds']:.1f} | {r['peak_extra_mib']:.0f} | "
                     f"{r['peak_extra_mib'] / r['hessian_mib']:.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
