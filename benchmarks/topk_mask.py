"""Top-k mask selection on N random weights: ours (radix select) vs torch.topk vs torch.sort.

Time is measured side by side in one process (best of 3); peak memory of each method in its own
child process (RSS above the data's baseline). Exactness: our mask's count and its agreement
with torch.topk's selected set.

    python benchmarks/topk_mask.py [--n 100000000] [--density 0.5 0.1]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from _common import PeakRSS, run_child, save

from surgery.saliency.topk import topk_masks


def data(n: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(0)).abs_()


def select(method: str, x: torch.Tensor, k: int) -> torch.Tensor:
    if method == "ours":
        return topk_masks([x], k)[0]
    mask = torch.zeros_like(x, dtype=torch.bool)
    if method == "torch.topk":
        mask[torch.topk(x, k, sorted=False).indices] = True
    else:  # torch.sort: the official SalUn route, a full descending sort
        mask[torch.sort(x, descending=True).indices[:k]] = True
    return mask


def child(method: str, n: int, density: float) -> None:
    x = data(n)
    with PeakRSS() as mem:
        select(method, x, round(density * n))
    print(json.dumps({"peak_extra_mib": mem.extra}))


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--n", type=int, default=100_000_000)
    ap.add_argument("--density", type=float, nargs="+", default=[0.5, 0.1])
    ap.add_argument("--child", nargs=3)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), float(args.child[2]))
        return
    x = data(args.n)
    rows, results = [], []
    for d in args.density:
        k = round(d * args.n)
        times = {m: float("inf") for m in ("ours", "torch.topk", "torch.sort")}
        masks = {}
        for _ in range(3):
            for m in times:
                t = time.perf_counter()
                masks[m] = select(m, x, k)
                times[m] = min(times[m], time.perf_counter() - t)
        # Exact: k selected, and nothing unselected beats anything selected. (Sets may differ from
        # topk's only among values equal to the threshold: topk breaks such ties arbitrarily.)
        ours = masks["ours"]
        thr = float(x[masks["torch.topk"]].min())
        exact = (int(ours.sum()) == k and float(x[ours].min()) == thr
                 and float(x[~ours].max()) <= thr
                 and torch.equal(ours & (x != thr), masks["torch.topk"] & (x != thr)))
        mem = {m: run_child(__file__, "--child", m, str(args.n), str(d))["peak_extra_mib"] for m in times}
        for m in times:
            results.append({"density": d, "method": m, "seconds": times[m], "peak_extra_mib": mem[m],
                            "speedup_vs_ours": times[m] / times["ours"], "exact": exact if m == "ours" else None})
            rows.append(f"| {d} | {m} | {times[m]:.2f} | {times[m] / times['ours']:.1f}× | "
                        f"{mem[m]:.0f} | {'yes' if exact else 'NO'} |" if m == "ours" else
                        f"| {d} | {m} | {times[m]:.2f} | {times[m] / times['ours']:.1f}× | {mem[m]:.0f} | – |")
    table = ("| density | method | seconds (best of 3) | time / ours | peak extra MiB | exact (k selected, same threshold and same set as topk apart from threshold ties) |\n"
             "|---|---|---|---|---|---|\n" + "\n".join(rows))
    save("topk_mask", {"n": args.n, "results": results}, table)


if __name__ == "__main__":
    main()
