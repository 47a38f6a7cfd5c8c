"""Scorer cost on a reference LM, as a ratio to one plain forward+backward over the same batches.

Plain = loss → backward → drop the gradients, per batch (what any training step costs before the
optimizer). Each scorer kind runs on the same batches; rounds are interleaved and the best of
`--rounds` is kept. Peak memory: each mode in its own child process, peak RSS above the process
with the model and batches loaded (activations, gradients and, for the scorer, its accumulators).

    python benchmarks/score_cost.py [--model shakespeare-lm] [--batches 8] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from _common import PeakRSS, run_child, save

from surgery.data import text as textdata
from surgery.data.windows import calib_windows, tokenize
from surgery.reference import load_reference
from surgery.saliency import score
from surgery.saliency.losses import causal_lm_loss

MODES = ("plain", "grad", "abs_grad", "fisher", "taylor")


def setup(name: str, n_batches: int, batch_size: int, seqlen: int):
    model, tok, path = load_reference(name, progress=False)
    corpus = textdata.embedded() if name in ("demo-lm", "tiny-lm") else textdata.shakespeare()
    ids = tokenize(tok, textdata.join(corpus["train"]))
    batches = list(calib_windows(ids, n_batches * batch_size, seqlen, seed=0).split(batch_size))
    return model, batches, path


def run_mode(mode: str, model, batches) -> None:
    if mode == "plain":
        for b in batches:
            causal_lm_loss(model, b).backward()
            for p in model.parameters():
                p.grad = None
    else:
        score(model, batches, kind=mode, progress=False)


def child(mode: str, name: str, nb: int, bs: int, seqlen: int) -> None:
    model, batches, _ = setup(name, nb, bs, seqlen)
    with PeakRSS() as mem:  # model and batches loaded; everything above is the mode's own
        run_mode(mode, model, batches)
    print(json.dumps({"peak_extra_mib": mem.extra}))


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    default = "shakespeare-lm" if os.environ.get("SURGERY_DATA_DIR") else "demo-lm"
    ap.add_argument("--model", default=default)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.model, args.batches, args.batch_size, args.seqlen)
        return
    model, batches, path = setup(args.model, args.batches, args.batch_size, args.seqlen)
    model.eval()
    run_mode("plain", model, batches[:2])  # warm-up
    best = {m: float("inf") for m in MODES}
    for _ in range(args.rounds):
        for m in MODES:
            t = time.perf_counter()
            run_mode(m, model, batches)
            best[m] = min(best[m], time.perf_counter() - t)
    mem = {m: run_child(__file__, "--child", m, "--model", args.model, "--batches", str(args.batches),
                        "--batch-size", str(args.batch_size), "--seqlen", str(args.seqlen))["peak_extra_mib"]
           for m in MODES}
    n_params = sum(p.numel() for p in model.parameters())
    rows = [f"| {m} | {best[m]:.2f} | {best[m] / best['plain']:.3f}× | {mem[m]:.0f} |" for m in MODES]
    table = (f"Model `{args.model}` ({n_params:,} parameters; fp32 map = {4 * n_params / 2**20:.0f} MiB), "
             f"{args.batches} batches × {args.batch_size} × {args.seqlen} tokens, best of {args.rounds}.\n\n"
             "| mode | seconds | ratio to plain fwd+bwd | peak extra MiB |\n|---|---|---|---|\n" + "\n".join(rows))
    save("score_cost", {"model": args.model, "model_path": str(path), "params": n_params,
                        "batches": args.batches, "batch_size": args.batch_size, "seqlen": args.seqlen,
                        "seconds": best, "ratio": {m: best[m] / best["plain"] for m in MODES},
                        "peak_extra_mib": mem}, table)


if __name__ == "__main__":
    main()
