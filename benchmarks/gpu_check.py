"""One short GPU check of the CUDA path (run on a lent accelerator; CPU works for a dry run).

1. Scorer: a tiny Llama's maps on CUDA (fp32) equal the CPU maps; a bf16 model gives finite fp32 maps
   whose top-10 % masks overlap the fp32 ones.
2. Scorer cost on a larger bf16 Llama (GQA) as a ratio to plain forward+backward, on the GPU.
3. Exact top-k mask on 1e9 weights (GPU) against torch.topk: time and exactness.
4. GPTQ and ApiQ on CUDA: the quantized tiny model matches the CPU result's perplexity closely.
5. Pruning on CUDA: sliced == masked logits.

    python benchmarks/gpu_check.py [--out results.json] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from surgery.evaluate import perplexity
from surgery.saliency import score, topk_masks
from surgery.saliency.losses import causal_lm_loss


def tiny(seed: int = 0, **kw) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128)
    cfg.update(kw)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def check_scorer(dev: str) -> dict:
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (4, 32), generator=g) for _ in range(6)]
    out = {}
    for kind in ("grad", "abs_grad", "fisher", "taylor"):
        cpu = score(tiny(), batches, kind=kind, progress=False)
        gpu = score(tiny().to(dev), batches, kind=kind, progress=False)
        out[f"{kind}_max_rel_diff"] = max(float((gpu[n].cpu() - cpu[n]).abs().max() / cpu[n].abs().max().clamp_min(1e-30))
                                          for n in cpu)
    bf = score(tiny().to(dev, torch.bfloat16), batches, kind="fisher", progress=False)
    fp = score(tiny().to(dev), batches, kind="fisher", progress=False)
    out["bf16_all_finite"] = all(bool(torch.isfinite(t).all()) for t in bf.values())
    out["bf16_accumulators_fp32"] = all(t.dtype == torch.float32 for t in bf.values())
    mb, mf = bf.mask(0.1), fp.mask(0.1)
    out["bf16_vs_fp32_top10_overlap"] = sum(int((mb[n] & mf[n]).sum()) for n in mb) / mf.selected
    return out


def check_cost(dev: str, dtype: torch.dtype) -> dict:
    model = tiny(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                 intermediate_size=2816, vocab_size=32000, max_position_embeddings=1024).to(dev, dtype)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 32000, (8, 512), generator=g).to(dev) for _ in range(24)]

    def plain() -> None:
        for b in batches:
            causal_lm_loss(model, b).backward()
            for p in model.parameters():
                p.grad = None

    plain()
    best = {}
    for _ in range(5):
        for mode in ("plain", "grad", "abs_grad", "fisher", "taylor"):
            sync(dev)
            t = time.perf_counter()
            plain() if mode == "plain" else score(model, batches, kind=mode, progress=False)
            sync(dev)
            best[mode] = min(best.get(mode, float("inf")), time.perf_counter() - t)
    peak = {}
    if dev == "cuda":
        for mode in ("plain", "fisher"):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            plain() if mode == "plain" else score(model, batches, kind=mode, progress=False)
            peak[mode] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return {"params": sum(p.numel() for p in model.parameters()), "dtype": str(dtype), "seconds": best,
            "ratio": {k: v / best["plain"] for k, v in best.items()}, "peak_extra_mib": peak}


def check_topk(dev: str, n: int) -> dict:
    x = torch.randn(n, device=dev, generator=torch.Generator(device=dev).manual_seed(0)).abs_()
    k = n // 2
    sync(dev)
    t = time.perf_counter()
    ours = topk_masks([x], k)[0]
    sync(dev)
    t_ours = time.perf_counter() - t
    try:
        t = time.perf_counter()
        thr = torch.topk(x, k, sorted=False).values.min()
        sync(dev)
        t_topk = time.perf_counter() - t
    except RuntimeError as e:  # out of memory and the like
        thr, t_topk = None, str(e).splitlines()[0]
    exact = int(ours.sum()) == k and (thr is None or (float(x[ours].min()) == float(thr)
                                                      and float(x[~ours].max()) <= float(thr)))
    return {"n": n, "ours_s": t_ours, "topk_s": t_topk, "exact": exact}


def check_quant(dev: str) -> dict:
    from surgery.quantize import ApiQConfig, GPTQConfig, quantize

    g = torch.Generator().manual_seed(1)
    calib = torch.randint(0, 256, (16, 32), generator=g)
    ev = torch.randint(0, 256, (8, 32), generator=g)
    out = {}
    for method in ("gptq", "apiq"):
        res = {}
        for d in ("cpu", dev):
            m = tiny().to(d)
            cfg = GPTQConfig(num_bits=2, group_size=32) if method == "gptq" else \
                ApiQConfig(num_bits=2, group_size=32, epochs=2, lora_rank=4)
            quantize(m, cfg, calib=calib, batch_size=4, progress=False)
            res[d] = perplexity(m, ev.to(d))
        out[method] = res
    return out


def check_prune(dev: str) -> dict:
    from surgery.prune import PruneConfig, SearchConfig, prune

    m = tiny().to(dev)
    calib = torch.randint(0, 256, (16, 32), generator=torch.Generator().manual_seed(2)).to(dev)
    search = SearchConfig(generations=2, offspring=4, survivors=[2, 1], stage_windows=[2, 4, 8], top_k=32)
    r = prune(m, PruneConfig(sparsity=0.5, batch_size=4, iterations=1, search_samples=8, search=search), calib,
              progress=False)
    small = r.slice().to(dev)
    ids = calib[:2]
    with torch.no_grad():
        diff = float((small(input_ids=ids).logits - m(input_ids=ids).logits).abs().max())
    return {"sliced_vs_masked_max_abs_diff": diff, "achieved_sparsity": r.achieved_sparsity}


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--topk-n", type=int, default=1_000_000_000)
    ap.add_argument("--small", action="store_true", help="a dry run at tiny sizes")
    ap.add_argument("--only", nargs="*", help="run only these steps")
    args = ap.parse_args()
    dev = args.device
    report = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__}
    steps = [("scorer", lambda: check_scorer(dev)),
             ("cost_bf16", lambda: check_cost(dev, torch.bfloat16) if not args.small else {}),
             ("topk", lambda: check_topk(dev, args.topk_n if not args.small else 10_000_000)),
             ("quant", lambda: check_quant(dev)), ("prune", lambda: check_prune(dev))]
    for name, fn in steps:
        if args.only and name not in args.only:
            continue
        t = time.time()
        try:
            report[name] = fn()
        except Exception as e:  # report and go on: one failure must not hide the other checks
            import traceback

            report[name] = {"error": f"{type(e).__name__}: {e}", "where": traceback.format_exc()[-1500:]}
        report[name + "_seconds"] = round(time.time() - t, 1)
        print(name, json.dumps(report[name], default=str), flush=True)
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
