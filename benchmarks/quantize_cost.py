"""Calibration cost of each quantization method as a ratio, measured interleaved in one process.

The wall times in `quantize_shakespeare.py` come from runs far apart in time on a shared machine;
here every method runs in the same process, round-robin, `--rounds` times, on the same model and
calibration windows, and the median time is reported with its ratio to ApiQ. The Fisher for the
saliency regulariser is computed inside the timed run (as a user would), and separately timed.

    SURGERY_DATA_DIR=../shared/data python benchmarks/quantize_cost.py [--nsamples 32] [--epochs 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from _common import RESULTS, stamp

from surgery.data import text as textdata
from surgery.data.windows import calib_windows, tokenize
from surgery.quantize import ApiQConfig, GPTQConfig, RTNConfig, quantize
from surgery.reference import load_reference


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--model", default="shakespeare-lm")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "quantize_cost.json"))
    args = ap.parse_args()
    _, tok, _ = load_reference(args.model, progress=False)
    texts = textdata.shakespeare() if args.model == "shakespeare-lm" else textdata.embedded()
    seqlen = 256 if args.model == "shakespeare-lm" else 128
    calib = calib_windows(tokenize(tok, textdata.join(texts["train"])), args.nsamples, seqlen, 0)
    w2 = dict(num_bits=2, group_size=64)
    apiq = dict(epochs=args.epochs, lr_lwc=1e-2, lr_lora=2e-3, lora_rank=8, **w2)
    methods = {"rtn": RTNConfig(**w2), "gptq": GPTQConfig(**w2), "gptq+act_order": GPTQConfig(act_order=True, **w2),
               "apiq": ApiQConfig(**apiq), "apiq+sal": ApiQConfig(saliency={"lam": 10.0}, **apiq)}
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.rounds):
        for name, cfg in methods.items():
            model, _, _ = load_reference(args.model, progress=False)
            t = time.perf_counter()
            quantize(model, cfg, calib=None if name == "rtn" else calib, batch_size=8, progress=False)
            times[name].append(time.perf_counter() - t)
    med = {m: statistics.median(v) for m, v in times.items()}
    lines = [f"| method | median s ({args.rounds} interleaved rounds) | ratio to ApiQ |", "|---|---|---|"]
    lines += [f"| {m} | {med[m]:.2f} | {med[m] / med['apiq']:.3f}× |" for m in methods]
    text = "\n".join(lines)
    Path(args.out).write_text(json.dumps({**stamp(), "nsamples": args.nsamples, "epochs": args.epochs,
                                          "times": times, "median": med}, indent=2))
    Path(args.out).with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
