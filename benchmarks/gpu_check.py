"""One short GPU check of the CUDA path (run on a lent accelerator; CPU works for a dry run).

1. Scorer: a tiny Llama's maps on CUDA (fp32) equal the CPU maps; a bf16 model gives finite fp32 maps
   whose top-10 % masks overlap the fp32 ones.
2. Scorer cost on a larger bf16 Llama (GQA) as a ratio to plain forward+backward, on the GPU.
3. Exact top-k mask on 1e9 weights (GPU) against torch.topk: time and exactness.
4. GPTQ and ApiQ on CUDA: the quantized tiny model matches the CPU result's perplexity closely.
5. Pruning on CUDA: sliced == masked logits.
6. The command line on the device: `surgery score --device cuda --dtype bf16`, `surgery mask --device
   cuda` (the GPU top-k) and `surgery run` of a GPTQ recipe with `device: cuda` / `--dtype bf16`; every
   output loads, and the run's perplexity is close to the same recipe run on CPU in fp32.
7. A ≥1B random-init bf16 Llama (GQA) through score → GPTQ W4 → prune 25 % → export on the device,
   time and peak device memory per stage.

    python benchmarks/gpu_check.py [--out results.json] [--device cuda] [--only cli pipeline] [--small]
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
    times = {}
    for method in ("radix", "auto"):  # auto = the radix select of torch.kthvalue on CUDA
        sync(dev)
        t = time.perf_counter()
        ours = topk_masks([x], k, method=method)[0]
        sync(dev)
        times[method] = time.perf_counter() - t
    t_ours = times
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


RECIPE = """\
device: {device}
calibration: {{data: {corpus}, nsamples: 16, seqlen: 64}}
quant_stage:
  quant_modifiers:
    GPTQModifier: {{num_bits: 4, group_size: 32}}
eval_stage: {{data: [{corpus}], seqlen: 64, speed: false}}
"""


def check_cli(dev: str) -> dict:
    """The CLI commands a GPU user types, each in a fresh process."""
    import subprocess
    import tempfile

    from surgery.data import text
    from surgery.models import save_model
    from surgery.models.tokenizer import train_bpe

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_model(tiny(vocab_size=300), tmp / "m", tokenizer=train_bpe(text.embedded()["train"].values(), 300))
        (tmp / "c.txt").write_text(text.join(text.embedded()["test"])[:20000])

        def cli(*args: str) -> tuple[int, float, str]:
            t = time.time()
            p = subprocess.run([sys.executable, "-m", "surgery.cli.main", *args], capture_output=True, text=True)
            return p.returncode, round(time.time() - t, 1), (p.stderr.strip().splitlines() or [""])[-1]

        out["score"] = cli("score", "--model", str(tmp / "m"), "--data", str(tmp / "c.txt"), "--seqlen", "64",
                           "--device", dev, "--dtype", "bf16", "--kind", "fisher", "--out", str(tmp / "s.safetensors"))
        out["mask"] = cli("mask", "--map", str(tmp / "s.safetensors"), "--density", "0.1", "--device", dev,
                          "--out", str(tmp / "mask.safetensors"))
        ppl = {}
        for device, dtype in ((dev, "bf16"), ("cpu", "fp32")):
            recipe = tmp / f"{device}.yaml"
            recipe.write_text(RECIPE.format(device=device, corpus=tmp / "c.txt"))
            folder = tmp / f"out-{device}"
            out[f"run_{device}_{dtype}"] = cli("run", str(recipe), "--model", str(tmp / "m"), "--output", str(folder),
                                              "--dtype", dtype)
            if folder.exists():
                models = json.loads((folder / "metrics.json").read_text())["comparison"]["models"]
                ppl[f"{device}_{dtype}"] = models[1]["metrics"][f"ppl:{tmp / 'c.txt'}"]
        out["ppl"] = ppl
        if len(ppl) == 2:
            a, b = ppl.values()
            out["ppl_rel_diff"] = abs(a - b) / b
    return out


def check_pipeline(dev: str, small: bool) -> dict:
    """score → GPTQ W4 → prune 25 % → export of a ≥1B random-init bf16 Llama, stage by stage."""
    import tempfile

    from surgery.prune import PruneConfig, SearchConfig, prune
    from surgery.quantize import GPTQConfig, export, quantize

    h, layers, heads, kv, inter = (256, 2, 4, 2, 512) if small else (2048, 18, 32, 8, 8192)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=512)
    model = LlamaForCausalLM(cfg).to(device=dev, dtype=torch.bfloat16).eval()
    calib = torch.randint(0, 32000, (16, 256), generator=torch.Generator().manual_seed(0))
    report: dict = {"params": sum(p.numel() for p in model.parameters())}

    def stage(name: str, fn):
        if dev == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t = time.time()
        result = fn()
        sync(dev)
        report[name] = {"seconds": round(time.time() - t, 2)}
        if dev == "cuda":
            report[name]["peak_extra_gib"] = round((torch.cuda.max_memory_allocated() - base) / 2**30, 2)
        print(name, report[name], flush=True)
        return result

    stage("score", lambda: score(model, list(calib.to(dev).split(4)), kind="fisher", progress=False, offload=True))
    search = SearchConfig(generations=2, offspring=4, survivors=[2], stage_windows=[4, 16], top_k=64)
    pruned = stage("prune_25", lambda: prune(model, PruneConfig(sparsity=0.25, batch_size=4, iterations=1, levels=5,
                                                                 search_samples=16, search=search),
                                             calib.to(dev), progress=False))
    small_model = stage("slice", pruned.slice)
    q = stage("gptq_w4", lambda: quantize(small_model, GPTQConfig(num_bits=4, group_size=128), calib=calib,
                                          batch_size=4, progress=False))
    with tempfile.TemporaryDirectory() as tmp:
        stage("export", lambda: export(small_model, q, Path(tmp) / "out"))
        report["folder_gib"] = round(sum(f.stat().st_size for f in (Path(tmp) / "out").rglob("*")) / 2**30, 3)
    return report


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
             ("quant", lambda: check_quant(dev)), ("prune", lambda: check_prune(dev)),
             ("cli", lambda: check_cli(dev)), ("pipeline", lambda: check_pipeline(dev, args.small))]
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
