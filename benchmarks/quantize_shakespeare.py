"""Quantization benchmark on a language model: dense, RTN, GPTQ, ApiQ, ApiQ + saliency.

Models: the Shakespeare reference LM (`--model shakespeare-lm`, the default) or stories260K, a real
pretrained Llama from elsewhere (`--model stories260K`: tied embeddings, FFN 172 that no group size
divides, so its per-channel fallback is on). Perplexity follows the GPTQ protocol (non-overlapping
windows of 256 tokens) on held-out in-domain text (test plays / TinyStories test) and on WikiText-2
test; KL(dense ‖ quantized) on the first 64 in-domain windows. Calibration: random 256-token windows
of the training text, one draw per seed. Each run's calibration wall time and peak RSS are measured in
the same process, and the exported folder's bytes (weights + adapter + configs) are measured from
the files. Results are appended to the JSON as runs finish, so a killed benchmark resumes.

    SURGERY_DATA_DIR=../shared/data python benchmarks/quantize_shakespeare.py [--model stories260K] \
        [--settings W2g64 W3g64 W4g128] [--seeds 0 1 2] [--ablation] [--llmc-python PATH]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from _common import MODELS, RESULTS, PeakRSS, model_path, stamp

from surgery.data import read_text
from surgery.data.windows import calib_windows, eval_windows, tokenize
from surgery.evaluate import kl_divergence, perplexity, size_on_disk
from surgery.models import load_model
from surgery.quantize import CONFIGS, export, quantize

SEQLEN = 256
KL_WINDOWS = 64  # KL(dense ‖ quantized) on the first 64 test windows (16k tokens)
SETTINGS = {"W2g64": (2, 64), "W3g64": (3, 64), "W4g128": (4, 128)}
APIQ = dict(epochs=10, lr_lora=2e-3, lr_lwc=1e-2, lora_rank=8, lora_alpha=16.0)
METHODS = {
    "rtn": dict(method="rtn"),
    "gptq": dict(method="gptq"),
    "gptq+act_order": dict(method="gptq", act_order=True),
    "apiq": dict(method="apiq", **APIQ),
    "apiq+sal": dict(method="apiq", saliency={"lam": 10.0}, **APIQ),
    "apiq+sal merged": dict(method="apiq", saliency={"lam": 10.0}, merge_lora=True, **APIQ),
}
ONE_SEED = {"rtn", "gptq", "apiq+sal merged"}  # data-free; plain GPTQ beside act-order; the merge cost once
ABLATION = {  # W2g64, seed 0: λ and stage order
    "λ=1": dict(saliency={"lam": 1.0}),
    "λ=100": dict(saliency={"lam": 100.0}),
    "wpt5→opt5": dict(saliency={"lam": 10.0}, stages=[["wpt", 5], ["opt", 5]]),
}


class Bench:
    def __init__(self, out: Path, nsamples: int, model: str, max_windows: int | None = None) -> None:
        self.out = out
        self.nsamples = nsamples
        self.model_name = model
        self.max_windows = max_windows
        self.runs: dict[str, dict] = json.loads(out.read_text())["runs"] if out.exists() else {}
        _, calib_text, sets, self.group_rule = MODELS[model]
        self.path = model_path(model)
        _, self.tok = load_model(self.path)
        self.train_ids = tokenize(self.tok, read_text(calib_text))
        self.sets = {k: eval_windows(tokenize(self.tok, read_text(v)), SEQLEN, max_windows) for k, v in sets.items()}
        self.dense = self.fresh()

    def fresh(self) -> torch.nn.Module:
        return load_model(self.path)[0].eval()

    def calib(self, seed: int) -> torch.Tensor:
        return calib_windows(self.train_ids, self.nsamples, SEQLEN, seed)

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        out = {f"ppl_{k}": perplexity(model, w, batch_size=32) for k, w in self.sets.items()}
        out["kl_test"] = kl_divergence(self.dense, model, self.sets["test"][:KL_WINDOWS], batch_size=32)
        return out

    def record(self, key: str, row: dict) -> None:
        self.runs[key] = row
        self.out.write_text(json.dumps({**stamp(), "nsamples": self.nsamples, "max_windows": self.max_windows,
                                        "runs": self.runs}, indent=2))
        print(f"{key}: {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})}",
              flush=True)

    def run(self, key: str, bits: int, gs: int, seed: int, **kw) -> None:
        if key in self.runs:
            return
        model = self.fresh()
        kw = dict(kw)
        method = kw.pop("method")
        if method == "apiq":
            kw["seed"] = seed  # LoRA init and batch order follow the calibration seed
        cfg = CONFIGS[method](num_bits=bits, group_size=gs, group_rule=self.group_rule, **kw)
        with PeakRSS() as mem:
            result = quantize(model, cfg, calib=None if method == "rtn" else self.calib(seed), batch_size=8,
                              progress=False)
        with tempfile.TemporaryDirectory() as tmp:  # the folder a user ships: weights + adapter + configs
            folder = export(model, result, f"{tmp}/q", tokenizer=self.tok)
            folder_bytes = size_on_disk(folder)
        self.record(key, {**self.evaluate(model), "seconds": result.seconds, "peak_mib": mem.extra,
                          "lora_params": result.lora_params(model), "label": result.label,
                          "folder_bytes": folder_bytes})

    def run_llmc(self, key: str, python: str, bits: int, gs: int, seed: int) -> None:
        if key in self.runs:
            return
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM
        from transformers.utils.quantization_config import CompressedTensorsConfig

        with tempfile.TemporaryDirectory() as tmp:
            save_file({"input_ids": self.calib(seed).contiguous()}, f"{tmp}/calib.safetensors")
            proc = subprocess.run([python, str(Path(__file__).parent / "peers" / "llmc_gptq.py"),
                                   str(self.path), f"{tmp}/calib.safetensors", f"{tmp}/out", str(bits),
                                   str(gs)], capture_output=True, text=True)
            if proc.returncode:
                self.record(key, {"error": proc.stderr.strip().splitlines()[-1][:300]})
                return
            seconds = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
            model = AutoModelForCausalLM.from_pretrained(
                f"{tmp}/out", quantization_config=CompressedTensorsConfig(dequantize=True)).eval()
            self.record(key, {**self.evaluate(model), "seconds": seconds, "peak_mib": float("nan"),
                              "lora_params": 0})


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(bench: Bench, settings: list[str], seeds: list[int], methods: list[str]) -> str:
    dense = bench.runs["dense"]
    lines = ["| setting | method | ppl in-domain test | ppl WikiText-2 | KL to dense (test) | calib s | peak RSS MiB | "
             "LoRA params | folder bytes | applied |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| – | dense | {dense['ppl_test']:.3f} | {dense['ppl_wikitext2']:.3f} | 0 | – | – | – | "
             f"{dense.get('folder_bytes', 0):,} | fp32 |"]
    gaps = []
    for s in settings:
        for m in methods:
            rows = [bench.runs[k] for k in (f"{s}/{m}/{sd}" for sd in seeds) if k in bench.runs
                    and "error" not in bench.runs[k]]
            if not rows:
                continue
            col = lambda key: [r[key] for r in rows if not (isinstance(r[key], float) and math.isnan(r[key]))]  # noqa: E731
            lines.append(f"| {s} | {m} | {fmt(col('ppl_test'))} | {fmt(col('ppl_wikitext2'))} | "
                         f"{fmt(col('kl_test'))} | {fmt(col('seconds'))} | {fmt(col('peak_mib'))} | "
                         f"{rows[0]['lora_params']:,} | {rows[0].get('folder_bytes', 0):,} | {rows[0].get('label', '–')} |")
        a = [bench.runs.get(f"{s}/apiq/{sd}") for sd in seeds]
        b = [bench.runs.get(f"{s}/apiq+sal/{sd}") for sd in seeds]
        if all(a) and all(b):
            for metric in ("ppl_test", "ppl_wikitext2"):
                pa = statistics.mean(r[metric] for r in a)
                pb = statistics.mean(r[metric] for r in b)
                gaps.append(f"{s} {metric}: saliency closes {100 * (pa - pb) / (pa - dense[metric]):.1f}% "
                            f"of ApiQ's gap to dense ({pa:.3f} → {pb:.3f}; dense {dense[metric]:.3f})")
    return "\n".join(lines) + ("\n\n" + "\n".join(f"- {g}" for g in gaps) if gaps else "")


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--model", default="shakespeare-lm", choices=list(MODELS))
    ap.add_argument("--max-windows", type=int, help="cap on evaluation windows per text (default: all)")
    ap.add_argument("--ablation", action="store_true")
    ap.add_argument("--llmc-python", help="interpreter of a venv with llmcompressor installed")
    ap.add_argument("--out", help="results file (default: results/quantize_<model>.json)")
    ap.add_argument("--table-only", action="store_true", help="print the tables from the JSON; run nothing")
    args = ap.parse_args()
    torch.manual_seed(0)
    name = "shakespeare" if args.model == "shakespeare-lm" else args.model
    args.out = args.out or str(RESULTS / f"quantize_{name}.json")
    bench = Bench(Path(args.out), args.nsamples, args.model, args.max_windows)
    if "dense" not in bench.runs:
        bench.record("dense", {**bench.evaluate(bench.dense), "folder_bytes": size_on_disk(bench.path)})
    methods = list(args.methods)
    for s in [] if args.table_only else args.settings:
        bits, gs = SETTINGS[s]
        for seed in args.seeds:
            for m in args.methods:
                if m in ONE_SEED and seed != args.seeds[0]:
                    continue
                bench.run(f"{s}/{m}/{seed}" if m != "rtn" else f"{s}/rtn/0", bits, gs, seed, **METHODS[m])
            if args.llmc_python and seed == args.seeds[0]:  # the peer on the first seed only (CPU time)
                bench.run_llmc(f"{s}/llm-compressor gptq/{seed}", args.llmc_python, bits, gs, seed)
    if args.llmc_python or args.table_only:
        methods.append("llm-compressor gptq")
    text = table(bench, args.settings, args.seeds, methods)
    if args.ablation:
        for key, kw in ({} if args.table_only else ABLATION).items():
            bench.run(f"ablation/{key}", 2, 64, 0, method="apiq", **{**APIQ, **kw})
        base = {"apiq (λ=0)": bench.runs["W2g64/apiq/0"], "apiq+sal (λ=10, mixedt10)": bench.runs["W2g64/apiq+sal/0"]}
        rows = {**base, **{k: bench.runs[f"ablation/{k}"] for k in ABLATION if f"ablation/{k}" in bench.runs}}
        text += ("\n\nAblation, W2g64, calibration seed 0:\n\n| variant | ppl test | ppl WikiText-2 | KL |\n"
                 "|---|---|---|---|\n" + "\n".join(f"| {k} | {r['ppl_test']:.3f} | {r['ppl_wikitext2']:.3f} | "
                                                    f"{r['kl_test']:.4f} |" for k, r in rows.items()))
    (Path(args.out).with_suffix(".md")).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
