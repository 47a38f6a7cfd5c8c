"""`surgery demo`: the main job on the embedded default — no flags, no downloads.

Builds (or loads from cache) the demo LM trained on the embedded corpus, scores its weight
saliency on calibration windows, reduces it to heads / KV groups / neurons, and prints the dense
baseline table. Outputs go to one folder, written atomically.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from surgery.data import text as textdata
from surgery.data.windows import calib_windows, eval_windows, tokenize
from surgery.errors import SurgeryError
from surgery.evaluate import compare
from surgery.io import atomic_dir
from surgery.models.adapters import DecoderAdapter
from surgery.reference import load_reference
from surgery.saliency import score

MARKER = "demo.json"
SEQLEN = 128


def _saliency_table(smap, adapter: DecoderAdapter) -> str:
    """Per block: share of total Fisher mass in attention and MLP, and the top head / KV group."""
    per = smap.per_tensor()
    total = sum(per.values())
    units = smap.structural(adapter.structural_layout())
    lines = ["| block | attention share | MLP share | top head (score) | top KV group | "
             "neurons holding 50% of the block's MLP score |", "|---|---|---|---|---|---|"]
    for i in range(adapter.num_layers):
        attn = sum(per[f"{adapter.module_name(i, r)}.weight"] for r in ("q", "k", "v", "o"))
        mlp = sum(per[f"{adapter.module_name(i, r)}.weight"] for r in ("gate", "up", "down"))
        h = units.heads[i]
        g = units.kv_groups[i]
        n = units.neurons[i].sort(descending=True).values
        half = int((n.cumsum(0) < 0.5 * n.sum()).sum()) + 1
        lines.append(f"| {i} | {attn / total:.3f} | {mlp / total:.3f} | {int(h.argmax())} "
                     f"({float(h.max()):.3g}) | {int(g.argmax())} | {half}/{n.numel()} |")
    return "\n".join(lines)


def run_demo(output: str | Path = "surgery-demo", progress: bool = False) -> dict:
    out = Path(output)
    if out.exists() and not (out / MARKER).exists():
        raise SurgeryError(f"{out} exists and is not a previous demo output; choose --output")
    t0 = time.time()
    torch.manual_seed(0)
    model, tok, ref_path = load_reference("demo-lm", progress=progress)
    splits = textdata.embedded()
    train_ids = tokenize(tok, textdata.join(splits["train"]))
    test_ids = tokenize(tok, textdata.join(splits["test"]))
    calib = calib_windows(train_ids, nsamples=32, seqlen=SEQLEN, seed=0)
    print(f"model: demo-lm ({ref_path}), {sum(p.numel() for p in model.parameters()):,} parameters")

    smap = score(model, calib.split(8), loss="causal_lm", kind="fisher", progress=progress,
                 description=f"embedded:train, 32 windows of {SEQLEN}")
    adapter = DecoderAdapter(model)
    masks = smap.mask(0.1)
    print(f"\n## Saliency (diagonal Fisher, {smap.samples} windows)\n")
    print(_saliency_table(smap, adapter))
    print(f"\ntop-10% mask: {masks.selected:,} of {masks.numel:,} weights selected")

    windows = {"heldout": eval_windows(test_ids, SEQLEN), "train": eval_windows(train_ids, SEQLEN, 32)}
    reports = [compare.evaluate_lm(model, windows, "demo-lm", path=ref_path)]
    table = compare.to_markdown(reports)
    print("\n## Dense baseline\n")
    print(table)

    result = {"model": str(ref_path), "seconds": round(time.time() - t0, 1),
              "saliency": {"kind": smap.kind, "samples": smap.samples},
              "reports": compare.to_json(reports)}
    with atomic_dir(out, overwrite=True) as tmp:
        smap.save(tmp / "saliency.safetensors")
        masks.save(tmp / "mask-top10.safetensors", packed=True)
        compare.write(reports, tmp)
        (tmp / MARKER).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}/ in {result['seconds']} s")
    return result
