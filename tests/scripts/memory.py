"""Peak anonymous memory (RssAnon: beyond the memory-mapped weights) while GPTQ quantizes a model
loaded lazily from safetensors, with and without releasing finished blocks to their checkpoint.
Prints JSON. Used by tests/test_memory.py and benchmarks/scaling.py."""
from __future__ import annotations

import json
import re
import sys
import tempfile
import threading
from pathlib import Path

import torch


def anon_mib() -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"RssAnon:\s+(\d+)", text).group(1)) / 1024


class Peak:
    """Peak of `read()` (MiB) above its level at entry, sampled by a thread every `interval` seconds.
    Default: RssAnon; benchmarks/_common.py's PeakRSS samples the whole resident set."""

    def __init__(self, read=anon_mib, interval: float = 0.002) -> None:
        self.read, self.interval = read, interval

    def __enter__(self):
        self.start = self.read()
        self.peak = self.start
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, self.read())
                self._stop.wait(self.interval)

        self._t = threading.Thread(target=sample, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.read())

    @property
    def extra(self) -> float:
        return self.peak - self.start


def record_peak(module, name: str, into: dict) -> None:
    """Wrap `module.name` so that each call stores its absolute peak of RssAnon in `into["peak"]`."""
    fn = getattr(module, name)

    def measured(*args, **kwargs):
        with Peak() as p:
            out = fn(*args, **kwargs)
        into["peak"] = p.peak
        return out

    setattr(module, name, measured)


def build(folder: Path, hidden: int, layers: int, inter: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 32,
                      num_key_value_heads=2, intermediate_size=inter, max_position_embeddings=256)
    LlamaForCausalLM(cfg).save_pretrained(folder)


def main(folder: str, mode: str, method: str = "gptq") -> None:
    from surgery.linalg import inverse_
    from surgery.models import DecoderAdapter, load_model
    from surgery.quantize import ApiQConfig, GPTQConfig, quantize

    model, _ = load_model(folder)
    ad = DecoderAdapter(model)
    block = sum(p.numel() * p.element_size() for p in ad.layers[0].parameters()) / 2**20
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    calib = torch.randint(0, 256, (16, 64), generator=torch.Generator().manual_seed(0))
    cfg = GPTQConfig(num_bits=4, group_size=32) if method == "gptq" else ApiQConfig(num_bits=4, group_size=32,
                                                                                      epochs=1, lora_rank=4)
    from surgery.prune import PruneConfig, SearchConfig, prune

    def run(tmp: str | None) -> None:
        if method == "supernet":  # the supernet build alone (no search generation)
            prune(model, PruneConfig(sparsity=0.25, start="uniform", iterations=1, levels=5, search_samples=4,
                                     batch_size=4, search=SearchConfig(generations=0, stage_windows=[2, 4],
                                                                       survivors=[2], top_k=16)),
                  calib, calib, resume_dir=tmp, progress=False)
        else:
            quantize(model, cfg, calib=calib, batch_size=4, resume_dir=tmp, progress=False)
    with torch.no_grad():  # one-time allocations (kernels, thread pools) before the measurement
        model(calib[:4])
        torch.linalg.cholesky(torch.eye(8))
        inverse_(torch.eye(300, dtype=torch.float64))  # SciPy's LAPACK: its import, the BLAS buffers
    built: dict = {}
    if method == "supernet":  # the build's own peak, apart from writing the chosen candidates into the model
        import surgery.prune.engine as engine

        record_peak(engine, "build_supernet", built)
    with tempfile.TemporaryDirectory() as tmp, Peak() as peak:
        run(tmp if mode == "release" else None)
    extra = {"build_peak_extra_mib": built["peak"] - peak.start} if built else {}
    print(json.dumps({"peak_extra_mib": peak.extra, "block_mib": block, "weights_mib": weights,
                      "blocks": len(ad.layers), **extra}))


def solver(n_in: int, n_out: int, dtype: str = "float64") -> None:
    """The pruning solver alone on one neuron-unit layer with dense inputs (the supernet's default), five
    levels around 25 %: its peak beside the sizes of the Hessian and Wᵀ (in `dtype`) and of the compact
    snapshots."""
    from surgery.linalg import inverse_
    from surgery.prune.solver import Covariance, progressive_prune

    g = torch.Generator().manual_seed(0)
    X = torch.randn(1024, n_in, generator=g)
    W = torch.randn(n_out, n_in, generator=g) / n_in ** 0.5
    cov = Covariance(n_in, dtype=getattr(torch, dtype))
    cov.add(X, X)
    del X
    removals = [n_in // 4 + k * (n_in // 16) for k in (-2, -1, 0, 1, 2)]
    w8 = W[:, :8].clone()
    progressive_prune(w8, Covariance(8), w8, 1, [1])  # one-time costs (thread pools, imports)
    inverse_(torch.eye(300, dtype=torch.float64))
    with Peak() as peak:
        snaps = progressive_prune(W, cov, W, 1, removals)
    compact = sum(s.columns.numel() * s.columns.element_size() for s in snaps.values()) / 2**20
    size = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    print(json.dumps({"peak_extra_mib": peak.extra, "wt_mib": n_in * n_out * size / 2**20, "compact_mib": compact,
                      "hessian_mib": n_in * n_in * size / 2**20,
                      "full_mib": len(snaps) * W.numel() * W.element_size() / 2**20}))


if __name__ == "__main__":
    if sys.argv[1] == "solver":
        solver(int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:5])
    elif sys.argv[1] == "build":
        build(Path(sys.argv[2]), *map(int, sys.argv[3:6]))
    else:
        main(*sys.argv[1:])
