"""Dense vs the folders users ship, one code path for `surgery compare`, `surgery run` and the demo.

Each candidate is loaded from its folder the way its model card says (adapter attached), so sizes
come from the files and quality from what ships. Quantized folders are timed with their W4 layers on
the int4 kernel (bf16 activations), or say why there is no fast kernel; pruned folders are timed at
several batch sizes and lengths, with a note where per-layer overhead hides the smaller matrices.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgery.evaluate.compare import Report, evaluate_lm
from surgery.evaluate.cost import throughput
from surgery.evaluate.tasks import run_tasks
from surgery.export.folders import load_folder
from surgery.export.kernels import attach_kernels
from surgery.models.adapters import DecoderAdapter

GRID = ((1, 128), (8, 128), (1, 512))  # (batch, prompt length) points of the pruned-model speed grid


def _bits_per_weight(folder: Path) -> float | None:
    summary = folder / "surgery_quant.json"
    if not summary.is_file():
        return None
    data = json.loads(summary.read_text())
    return data["theoretical_bits"] / max(data["quantized_weights"], 1)


def _speed_grid(dense: nn.Module, model: nn.Module, vocab: int) -> str:
    """Decode / prefill ratios to dense over GRID, and whether overhead dominates."""
    parts, ratios = [], []
    for batch, length in GRID:
        d = throughput(dense, vocab, batch=batch, prompt_len=length, new_tokens=16, repeats=2)
        m = throughput(model, vocab, batch=batch, prompt_len=length, new_tokens=16, repeats=2)
        r = {k: m[k] / d[k] for k in d}
        ratios.append(r["decode_tok_s"])
        parts.append(f"b{batch}×{length}: prefill {r['prefill_tok_s']:.2f}×, decode {r['decode_tok_s']:.2f}×")
    weights = DecoderAdapter(dense).block_linear_params() / max(DecoderAdapter(model).block_linear_params(), 1)
    note = "speed vs dense " + "; ".join(parts)
    if max(ratios) < 0.5 * weights:
        note += (f" — per-layer overhead dominates: {weights:.2f}× fewer block weights but at most "
                 f"{max(ratios):.2f}× faster decoding (a model this small is bound by fixed per-layer cost)")
    return note


def evaluate_folders(dense: nn.Module, dense_folder: str | os.PathLike | None, tokenizer: Any,
                     windows: Mapping[str, torch.Tensor], candidates: Mapping[str, str | os.PathLike],
                     speed: bool = True, tasks: list[str] | None = None, data_dir: str | None = None,
                     batch_size: int = 8, dense_name: str = "dense") -> list[Report]:
    """Reports for `dense` and every candidate folder (name → folder)."""
    vocab = dense.config.vocab_size
    reports = [evaluate_lm(dense, windows, dense_name, path=dense_folder, speed=speed, batch_size=batch_size)]
    reports[0].metrics["bits_per_weight"] = 8.0 * next(dense.parameters()).element_size()
    models = [dense]
    for name, folder in candidates.items():
        folder = Path(folder)
        model, _ = load_folder(folder, device=next(dense.parameters()).device)
        models.append(model)
        quantized = (folder / "surgery_quant.json").is_file() or \
            "quantization_config" in json.loads((folder / "config.json").read_text())
        speed_model, note, fast = None, None, speed
        if speed and quantized:
            kernel, _ = load_folder(folder)
            k = attach_kernels(kernel, folder)
            note = k.note + ("; bf16 activations" if k.on_kernel else "")
            if k.on_kernel:
                speed_model = kernel
            else:
                fast = False
        rep = evaluate_lm(model, windows, name, dense=dense, path=folder, speed=fast, batch_size=batch_size,
                          speed_model=speed_model, speed_note=note, vocab_size=vocab)
        if speed and not fast:
            for key in ("prefill_tok_s", "decode_tok_s"):
                rep.missing(key, "no fast kernel here")
        bits = _bits_per_weight(folder)
        if bits is not None:
            rep.metrics["bits_per_weight"] = bits
        elif quantized:
            rep.missing("bits_per_weight", "no surgery summary")
        else:
            rep.metrics["bits_per_weight"] = 8.0 * next(model.parameters()).element_size()
        if speed and not quantized and rep.metrics.get("params", 0) < reports[0].metrics["params"]:
            rep.notes.append(_speed_grid(dense, model, vocab))
        reports.append(rep)
    for rep, model in zip(reports, models) if tasks else ():
        for spec, acc in run_tasks(model, tokenizer, tasks, data_dir, batch_size).items():
            rep.metrics[f"task:{spec}"] = acc
    return reports
