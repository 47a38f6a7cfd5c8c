"""How cost grows with model size: random-init GQA Llamas from ~10M to ~1B parameters.

Each size is saved once as safetensors and every stage runs in a fresh process that loads it the
way `surgery` does (memory-mapped), on the same calibration tokens at every size:
- `fwd_bwd`: a plain forward + backward over the calibration batches (the scorer's yardstick);
- `score`: the diagonal-Fisher scorer on the same batches (time as a ratio to `fwd_bwd`);
- `gptq`: GPTQ W4 g128 with block checkpoints (finished blocks released to their files);
- `apiq`: ApiQ W4 g128, one epoch, LoRA rank 8, with block checkpoints;
- `apiq_stored`: the same with the quantizer's autograd intermediates kept from the forward pass
  instead of recomputed in the backward (what ApiQ did before; the time/memory trade of the recompute);
- `prune`: the 25 % supernet build (5 levels) and one search generation (4 offspring);
- `prune_fp32`: the same with the local solver in float32 (`hessian_dtype: float32`);
- `prune_dense_inputs`: the same on the dense model's inputs (`accumulation: none`, the default before
  2026-12-07), where the default calibrates each block on what the pruned model feeds it.
Peak memory is anonymous RSS above the process after loading (the mapped weights are file pages),
sampled every 2 ms; "/ model" divides it by the fp32 weight bytes. The growth exponent of each
stage is the least-squares slope of log(time) and log(memory) against log(parameters), over the
sizes where the stage ran. Finished (size, stage) runs are kept in results/scaling.json and skipped
on a rerun (`--force` redoes the sizes and stages named), so sizes and stages can be run in parts.

    python benchmarks/scaling.py [--sizes 10M 50M 200M 1B] [--stages ...] [--threads 2] [--windows 8] \
        [--seqlen 128] [--force]
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import RESULTS, Peak, save
from memory import record_peak

VOCAB = 8192
SIZES = {  # hidden, layers, heads, kv heads, intermediate
    "10M": (256, 6, 4, 2, 768),
    "50M": (512, 16, 8, 2, 1408),
    "200M": (1024, 16, 16, 4, 2816),
    "1B": (2048, 16, 32, 8, 8192),
}
STAGES = ("fwd_bwd", "score", "gptq", "apiq", "apiq_stored", "prune", "prune_fp32", "prune_dense_inputs")


def build(folder: Path, size: str) -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    h, layers, heads, kv, inter = SIZES[size]
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=512,
                      tie_word_embeddings=False)
    with torch.device("meta"):
        n = sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return n


def _warm_up() -> None:
    """One-time costs (thread pools, the autograd engine, kernel selection) paid on a tiny model, so
    neither the clock nor the allocator's cache sees them at the measured model's size."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from surgery.saliency.losses import causal_lm_loss

    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=1, intermediate_size=64))
    causal_lm_loss(tiny, torch.randint(0, 64, (1, 8))).backward()
    torch.linalg.cholesky(torch.eye(8))
    from surgery.linalg import inverse_

    inverse_(torch.eye(300, dtype=torch.float64))  # SciPy's LAPACK: its import, the BLAS buffers


def worker(stage: str, folder: str, windows: int, seqlen: int) -> None:
    """One stage in this process; prints a JSON line."""
    from surgery.models import load_model
    from surgery.prune import PruneConfig, SearchConfig, prune
    from surgery.quantize import ApiQConfig, GPTQConfig, quantize
    from surgery.saliency import score
    from surgery.saliency.losses import causal_lm_loss

    model, _ = load_model(folder)
    model.eval()
    calib = torch.randint(0, VOCAB, (windows, seqlen), generator=torch.Generator().manual_seed(0))
    batches = list(calib.split(4))
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    extra: dict = {}
    _warm_up()
    with tempfile.TemporaryDirectory() as ckpt, Peak() as peak:
        t0 = time.time()
        if stage == "fwd_bwd":
            for b in batches:
                causal_lm_loss(model, b).backward()
            for p in model.parameters():
                p.grad = None
        elif stage == "score":
            score(model, batches, kind="fisher", progress=False)
        elif stage == "gptq":
            quantize(model, GPTQConfig(num_bits=4, group_size=128), calib=calib, batch_size=4, resume_dir=ckpt,
                     progress=False)
        elif stage in ("apiq", "apiq_stored"):
            if stage == "apiq_stored":
                import surgery.quantize.lora as lora

                lora._recomputed = lambda fn, *args: fn(*args)
            quantize(model, ApiQConfig(num_bits=4, group_size=128, epochs=1, lora_rank=8), calib=calib,
                     batch_size=4, resume_dir=ckpt, progress=False)
        elif stage.startswith("prune"):
            # the current defaults: query-head units where KV heads are shared, sequential calibration
            # (the centre's inputs); prune_fp32: the solver in float32; prune_dense_inputs: dense inputs
            other = {"prune_fp32": {"hessian_dtype": "float32"}, "prune_dense_inputs": {"accumulation": "none"}}
            cfg = PruneConfig(sparsity=0.25, start="uniform", iterations=1, levels=5, search_samples=windows,
                              batch_size=4, **other.get(stage, {}),
                              search=SearchConfig(generations=1, offspring=4, stage_windows=[2, windows],
                                                  survivors=[2], top_k=64))
            import surgery.prune.engine as engine

            built: dict = {}
            record_peak(engine, "build_supernet", built)  # the build's own peak, above the stage's start
            result = prune(model, cfg, calib, calib, resume_dir=ckpt, progress=False)
            it = result.iterations[0]
            generation = it["history"][-1]["seconds"]
            extra = {"search_generation_s": round(generation, 2), "supernet_s": round(it["seconds"] - generation, 2),
                     "supernet_peak_extra_mib": round(built["peak"] - peak.start, 1)}
        seconds = time.time() - t0
    print(json.dumps({"stage": stage, "seconds": round(seconds, 3), "peak_extra_mib": round(peak.extra, 1),
                      "weights_mib": round(weights, 1), **extra}))


def fit_exponent(xs: list[float], ys: list[float]) -> float | None:
    """Slope of log y against log x (None with fewer than two positive points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--force", action="store_true",
                    help="redo the named sizes and stages even if results/scaling.json has them")
    ap.add_argument("--worker", nargs=2, metavar=("STAGE", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        worker(args.worker[0], args.worker[1], args.windows, args.seqlen)
        return
    store = RESULTS / "scaling.json"
    kept = json.loads(store.read_text()) if store.exists() else {}
    same = kept.get("windows") == args.windows and kept.get("seqlen") == args.seqlen
    rows: dict[str, dict] = kept.get("sizes", {}) if same else {}
    for size in args.sizes:
        todo = [st for st in args.stages if args.force or "seconds" not in rows.get(size, {}).get(st, {})]
        if not todo:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            rows.setdefault(size, {})["params"] = build(Path(tmp), size)
            for stage in todo:
                cmd = [sys.executable, __file__, "--worker", stage, tmp, "--threads", str(args.threads),
                       "--windows", str(args.windows), "--seqlen", str(args.seqlen)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    rows[size][stage] = {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
                else:
                    rows[size][stage] = json.loads(out.stdout.strip().splitlines()[-1])
                rows[size][stage]["threads"] = args.threads
                print(size, stage, json.dumps(rows[size][stage]), flush=True)
                save("scaling", {"sizes": rows, "windows": args.windows, "seqlen": args.seqlen,
                                 "shared_machine": "nothing else ran"}, "(partial)")
    order = [s for s in SIZES if s in rows]
    head = "| stage | " + " | ".join(f"{s} ({rows[s]['params'] / 1e6:.0f}M)" for s in order) + \
        " | time exponent | memory exponent |"
    lines = [head, "|---" * (len(order) + 3) + "|"]
    exponents = {}
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    for stage in STAGES:
        cells, done = [], [s for s in order if "seconds" in rows[s].get(stage, {})]
        for s in order:
            r = rows[s].get(stage)
            if r is None:
                cells.append("not run")
                continue
            if "error" in r:
                cells.append(f"error: {r['error'][:60]}")
                continue
            base = rows[s].get("fwd_bwd", {}).get("seconds")
            ratio = f" ({r['seconds'] / base:.2f}× fwd+bwd)" if stage == "score" and base else ""
            split = f"; supernet {r['supernet_s']} s + 1 generation {r['search_generation_s']} s" \
                if stage.startswith("prune") else ""
            if "supernet_peak_extra_mib" in r:
                sup = r["supernet_peak_extra_mib"]
                split += f"; supernet build +{sup:.0f} MiB ({sup / r['weights_mib']:.2f}× model)"
            cells.append(f"{r['seconds']:.1f} s{ratio}{split}; +{r['peak_extra_mib']:.0f} MiB "
                         f"({r['peak_extra_mib'] / r['weights_mib']:.2f}× model)")
        params = [rows[s]["params"] for s in done]
        t_exp = fit_exponent(params, [rows[s][stage]["seconds"] for s in done])
        m_exp = fit_exponent(params, [rows[s][stage]["peak_extra_mib"] for s in done])
        exponents[stage] = {"time": t_exp, "memory": m_exp, "sizes": done}
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {fmt(t_exp)} | {fmt(m_exp)} |")
    save("scaling", {"sizes": rows, "exponents": exponents, "windows": args.windows, "seqlen": args.seqlen,
                     "shared_machine": "nothing else ran"}, "\n".join(lines))


if __name__ == "__main__":
    main()
