"""`surgery demo`: the main job on the embedded default — no flags, no downloads.

Builds (or loads from cache) the demo LM trained on the embedded corpus, scores its weight saliency
on calibration windows, reduces it to heads / KV groups / neurons, then exports 2-bit quantization
(RTN, GPTQ, ApiQ, ApiQ + saliency), 50 % structural pruning (sliced, widths in steps of 64) and the
chain prune → GPTQ W4g64, and compares every exported folder with the dense model the way users
judge them: perplexity, KL, the bytes of the folder, speed as served here (the int4 kernel where one
exists), and accuracy on a multiple-choice task through lm-eval. Then SalUn unlearning of a digit
class on the digits reference classifier. Outputs go to one folder, written atomically.
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
from surgery.prune import PruneConfig, SearchConfig, prune
from surgery.quantize import ApiQConfig, GPTQConfig, RTNConfig, export, quantize
from surgery.recipe.report import evaluate_folders
from surgery.saliency import score

MARKER = "demo.json"
SEQLEN = 128
TASKS = ["wordorder@embedded:test"]  # multiple choice built from the held-out play, through lm-eval
QUANT_STEPS = [
    ("RTN W2g64", RTNConfig(num_bits=2, group_size=64)),
    ("GPTQ W2g64 (act-order)", GPTQConfig(num_bits=2, group_size=64, act_order=True)),
    ("ApiQ W2g64", ApiQConfig(num_bits=2, group_size=64, epochs=4, lr_lwc=1e-2, lr_lora=2e-3)),
    ("ApiQ+saliency W2g64", ApiQConfig(num_bits=2, group_size=64, epochs=4, lr_lwc=1e-2, lr_lora=2e-3,
                                       saliency={"lam": 10.0})),
]


def _saliency_table(smap, adapter: DecoderAdapter) -> str:
    """Per block: share of total Fisher mass in attention and MLP, and the top head / KV group."""
    per = smap.per_tensor()
    total = sum(per.values())
    units = smap.structural(adapter.structural_layout())
    lines = ["| block | attention share | MLP share | top head (score) | top KV group | "
             "neurons holding 50% of the block's MLP score |", "|---|---|---|---|---|---|"]
    for i in range(adapter.num_layers):
        attn = sum(per[n] for n in adapter.attention_params(i))
        mlp = sum(per[n] for n in adapter.mlp_params(i))
        h = units.heads[i]
        g = units.kv_groups[i]
        n = units.neurons[i].sort(descending=True).values
        half = int((n.cumsum(0) < 0.5 * n.sum()).sum()) + 1
        lines.append(f"| {i} | {attn / total:.3f} | {mlp / total:.3f} | {int(h.argmax())} "
                     f"({float(h.max()):.3g}) | {int(g.argmax())} | {half}/{n.numel()} |")
    return "\n".join(lines)


def _unlearn_digits(progress: bool, device: torch.device) -> dict:
    from surgery.data.images import digits
    from surgery.unlearn import UnlearnConfig, unlearn
    from surgery.unlearn.metrics import classifier_metrics
    from surgery.unlearn.splits import class_split

    clf, _, _ = load_reference("digits-mlp", progress=progress)
    clf.to(device)
    train, test = digits("train"), digits("test")
    f, r = class_split(train, 3)
    forget, retain = train.subset(f), train.subset(r)
    test = test.subset(torch.nonzero(test.y != 3).flatten())
    before = classifier_metrics(clf, forget, retain, test)
    result = unlearn(clf, UnlearnConfig(method="salun", lr=0.02, epochs=5, batch_size=32), forget, retain,
                     progress=progress)
    return {"before": before, "after": classifier_metrics(clf, forget, retain, test), "rte": result.seconds}


def run_demo(output: str | Path = "surgery-demo", progress: bool = False, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> dict:
    """Run the demo; the models work on `device` in `dtype` (the reference weights are fp32 on disk)."""
    out = Path(output)
    if out.exists() and not (out / MARKER).exists():
        raise SurgeryError(f"{out} exists and is not a previous demo output; choose --output")
    t0 = time.time()
    torch.manual_seed(0)
    device = torch.device(device)

    def reference() -> torch.nn.Module:
        return load_reference("demo-lm", progress=False)[0].to(device=device, dtype=dtype)

    model, tok, ref_path = load_reference("demo-lm", progress=progress)
    model.to(device=device, dtype=dtype)
    splits = textdata.embedded()
    train_ids = tokenize(tok, textdata.join(splits["train"]))
    test_ids = tokenize(tok, textdata.join(splits["test"]))
    calib = calib_windows(train_ids, nsamples=32, seqlen=SEQLEN, seed=0)
    print(f"model: demo-lm ({ref_path}), {sum(p.numel() for p in model.parameters()):,} parameters")

    smap = score(model, calib.split(1), loss="causal_lm", kind="fisher", progress=progress,
                 description=f"embedded:train, 32 windows of {SEQLEN}")
    smap.identify(model, seed=0)
    adapter = DecoderAdapter(model)
    masks = smap.mask(0.1)
    print(f"\n## Saliency (diagonal Fisher, {smap.samples} windows)\n")
    print(_saliency_table(smap, adapter))
    print(f"\ntop-10% mask: {masks.selected:,} of {masks.numel:,} weights selected")

    windows = {"heldout": eval_windows(test_ids, SEQLEN), "train": eval_windows(train_ids, SEQLEN, 32)}
    with atomic_dir(out, overwrite=True) as tmp:
        folders = {}
        for label, cfg in QUANT_STEPS:
            qmodel = reference()
            sal = isinstance(cfg, ApiQConfig) and cfg.saliency.enabled
            result = quantize(qmodel, cfg, calib=calib, fisher=smap if sal else None, batch_size=8, progress=progress)
            folders[label] = export(qmodel, result, tmp / "models" / _slug(label), tokenizer=tok)

        pmodel = reference()
        search = calib_windows(train_ids, nsamples=16, seqlen=SEQLEN, seed=1)
        search_cfg = SearchConfig(generations=4, offspring=8, stage_windows=[2, 4, 16], top_k=64)
        presult = prune(pmodel, PruneConfig(sparsity=0.5, search_samples=16, iterations=2, width_multiple=64,
                                            search=search_cfg), calib, search, progress=progress)
        label = f"pruned {100 * presult.achieved_sparsity:.0f}% (sliced)"
        folders[label] = presult.save(tmp / "models" / "pruned-50", tokenizer=tok)
        small = presult.slice()
        cresult = quantize(small, GPTQConfig(num_bits=4, group_size=64, act_order=True), calib=calib, batch_size=8,
                           progress=progress)
        folders[f"{label} + GPTQ W4g64"] = export(small, cresult, tmp / "models" / "pruned-50-gptq-w4g64",
                                                  tokenizer=tok)

        print("\n## Dense vs every exported folder (sizes from the files; speed as served here)\n")
        reports = evaluate_folders(model, ref_path, tok, windows, folders, speed=True, tasks=TASKS,
                                   dense_name="demo-lm")
        table = compare.to_markdown(reports)
        print(table)
        print("\nkept per block (KV groups of 2, neurons of 384, in steps of 64): "
              + ", ".join(f"{r['kv_groups_kept']}/{r['neurons_kept']}" for r in presult.per_layer()))

        print("\n## Unlearning (SalUn: forget digit 3 of scikit-learn's digits, reference MLP)\n")
        unlearned = _unlearn_digits(progress, device)
        print("| model | UA | RA | TA | MIA-Eff | RTE s |\n|---|---|---|---|---|---|")
        for name in ("before", "after"):
            m = unlearned[name]
            rte = f"{unlearned['rte']:.1f}" if name == "after" else "–"
            print(f"| {name} | {m['UA']:.1f} | {m['RA']:.1f} | {m['TA']:.1f} | {m['MIA']:.1f} | {rte} |")

        result = {"model": str(ref_path), "seconds": round(time.time() - t0, 1), "device": str(device),
                  "dtype": str(dtype).removeprefix("torch."),
                  "saliency": {"kind": smap.kind, "samples": smap.samples},
                  "reports": compare.to_json(reports), "unlearning": unlearned}
        smap.save(tmp / "saliency.safetensors")
        masks.save(tmp / "mask-top10.safetensors", packed=True)
        compare.write(reports, tmp)
        (tmp / MARKER).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}/ in {result['seconds']} s")
    return result


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-").replace("--", "-")
