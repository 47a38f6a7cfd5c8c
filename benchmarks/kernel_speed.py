"""Speed of exported quantized folders as served on this machine, against dense, in one process.

For each setting the model is quantized, exported, loaded back from its folder the way a user loads
it (transformers decompresses to bf16/fp32 weights), and — where one exists here — put on PyTorch's
int4 CPU kernel (`_weight_int4pack_mm_for_cpu`, tinygemm; bf16 activations). Prefill and greedy
decode tokens/s, best of 3, at two batch × prompt shapes; dense fp32 and dense bf16 are timed in the
same process, before and after, and the better dense reading is the denominator. 2- and 3-bit
folders have no fast kernel here and are reported as such, not timed as fake-quantized weights.

    SURGERY_DATA_DIR=../shared/data python benchmarks/kernel_speed.py [--model shakespeare-lm] [--threads 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from _common import MODELS, model_path, save

from surgery.data import read_text
from surgery.data.windows import calib_windows, tokenize
from surgery.evaluate import throughput
from surgery.export.folders import load_folder
from surgery.export.kernels import attach_kernels
from surgery.models import load_model
from surgery.quantize import GPTQConfig, export, quantize

SHAPES = [(1, 128), (8, 256)]  # (batch, prompt length)
SETTINGS = {"W4g128": (4, 128), "W4g64": (4, 64), "W8g128": (8, 128), "W2g64": (2, 64)}


def speeds(model: torch.nn.Module, vocab: int) -> dict[str, dict[str, float]]:
    return {f"b{b}x{t}": throughput(model, vocab, batch=b, prompt_len=t, new_tokens=32, repeats=3) for b, t in SHAPES}


def best(*runs: dict) -> dict:
    return {shape: {k: max(r[shape][k] for r in runs) for k in runs[0][shape]} for shape in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shakespeare-lm", choices=list(MODELS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = model_path(args.model)
    dense, tok = load_model(path)
    vocab = dense.config.vocab_size
    calib = calib_windows(tokenize(tok, read_text(MODELS[args.model][1])), 64, 256, seed=0)
    t0 = time.time()
    dense32 = speeds(dense.eval(), vocab)
    print(f"dense fp32 timed ({time.time() - t0:.0f} s)", flush=True)
    dense16 = speeds(load_model(path, dtype=torch.bfloat16)[0].eval(), vocab)
    print(f"dense bf16 timed ({time.time() - t0:.0f} s)", flush=True)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.settings:
            bits, gs = SETTINGS[name]
            model, _ = load_model(path)
            result = quantize(model, GPTQConfig(num_bits=bits, group_size=gs, group_rule="channel"), calib=calib,
                              progress=False)
            folder = export(model, result, f"{tmp}/{name}", tokenizer=tok)
            served, _ = load_folder(folder)
            kernel = attach_kernels(served, folder)
            row = {"label": result.label, "kernel": kernel.note, "on_kernel": kernel.on_kernel}
            if kernel.on_kernel:
                row["speed"] = speeds(served.eval(), vocab)
            rows[name] = row
            print(name, row["kernel"], f"({time.time() - t0:.0f} s)", flush=True)
    dense32 = best(dense32, speeds(dense, vocab))  # dense on both sides of the quantized runs
    lines = ["| setting | kernel | " + " | ".join(f"{s} prefill | {s} decode" for s in dense32) + " |",
             "|---" * (2 + 2 * len(dense32)) + "|"]
    for label, sp in (("dense fp32 (tok/s)", dense32), ("dense bf16 vs fp32", dense16)):
        cells = []
        for shape, v in sp.items():
            if sp is dense32:
                cells += [f"{v['prefill_tok_s']:.0f}", f"{v['decode_tok_s']:.0f}"]
            else:
                cells += [f"{v['prefill_tok_s'] / dense32[shape]['prefill_tok_s']:.2f}×",
                          f"{v['decode_tok_s'] / dense32[shape]['decode_tok_s']:.2f}×"]
        lines.append(f"| {label} | – | " + " | ".join(cells) + " |")
    for name, row in rows.items():
        if "speed" not in row:
            lines.append(f"| {name} ({row['label']}) | {row['kernel']} | " + " | ".join(["no fast kernel here"] * 2 * len(dense32)) + " |")
            continue
        cells = []
        for shape, v in row["speed"].items():
            cells += [f"{v['prefill_tok_s'] / dense32[shape]['prefill_tok_s']:.2f}×",
                      f"{v['decode_tok_s'] / dense32[shape]['decode_tok_s']:.2f}×"]
        lines.append(f"| {name} ({row['label']}) | {row['kernel']} | " + " | ".join(cells) + " |")
    save(f"kernel_speed_{args.model}", {"dense_fp32": dense32, "dense_bf16": dense16, "rows": rows,
                                        "threads": args.threads}, "\n".join(lines))


if __name__ == "__main__":
    main()
