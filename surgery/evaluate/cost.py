"""Cost of a model: parameters, size on disk, and prefill / decode throughput."""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from surgery.io import REPORTS


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def size_on_disk(path: str | os.PathLike) -> int:
    """Bytes of everything a user ships to serve the model — weights, adapter, configs, tokenizer,
    modeling code — measured from the files (not the reports beside them); a file's own size."""
    root = Path(path)
    if root.is_file():
        return root.stat().st_size
    return sum(f.stat().st_size for f in root.rglob("*")
               if f.is_file() and not (f.parent == root and f.name in REPORTS) and not f.name.startswith("."))


@torch.no_grad()
def throughput(model: nn.Module, vocab_size: int, batch: int = 4, prompt_len: int = 128,
               new_tokens: int = 32, repeats: int = 3, seed: int = 0) -> dict[str, float]:
    """Prefill and greedy-decode tokens/s (best of `repeats`), with the KV cache on.

    Decode time = generate(prompt, new_tokens) − generate(prompt, 1 token), for the new_tokens − 1
    tokens after the prefill's: both calls pay the same prefill, so a slow or noisy prefill (bf16 on
    a CPU without bf16 units) cannot leak into the decode figure; tokens/s counts the whole batch.
    """
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (batch, prompt_len), generator=g).to(device)

    def _sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def _generate(n: int) -> float:
        _sync()
        t = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                       do_sample=False, pad_token_id=0)
        _sync()
        return time.perf_counter() - t

    model(input_ids=ids)  # warm-up
    prefill, first, full = float("inf"), float("inf"), float("inf")
    for _ in range(repeats):
        _sync()
        t = time.perf_counter()
        model(input_ids=ids, use_cache=True)
        _sync()
        prefill = min(prefill, time.perf_counter() - t)
        first = min(first, _generate(1))
        full = min(full, _generate(new_tokens))
    decode = max(full - first, 1e-9)
    return {
        "prefill_tok_s": batch * prompt_len / prefill,
        "decode_tok_s": batch * (new_tokens - 1) / decode,
    }
