"""Save a quantized model: compressed-tensors weights, the PEFT adapter (ApiQ), a summary.

The engine hands the export layer plain results — per-layer grids and LoRA factors; the formats
themselves live in `surgery.export`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from surgery.config import to_dict
from surgery.export.compressed import write_compressed
from surgery.export.card import model_card
from surgery.export.folders import write_config, write_marker
from surgery.export.peft import write_adapter
from surgery.io import atomic_dir
from surgery.quantize.result import QuantResult


def write_quantized(model: nn.Module, result: QuantResult, folder: Path, tokenizer: Any = None) -> dict[str, Any]:
    """The model's files into an existing folder; returns what the export layer wrote."""
    write_config(model, folder, per_expert=True)
    written = write_compressed(model, result.layers, folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    mods = result.lora_modules(model)
    if mods:
        cfg = result.config
        write_adapter(folder, {n: (m.lora_A, m.lora_B) for n, m in mods.items()}, cfg.lora_rank, cfg.lora_alpha)
    scale_bits = next(iter(result.layers.values())).scale.element_size() * 8
    (folder / "surgery_quant.json").write_text(json.dumps({
        **result.summary(), "config": to_dict(result.config), "export": written,
        "lora_params": result.lora_params(model), "theoretical_bits": result.theoretical_bits(scale_bits),
    }, indent=2) + "\n")
    return written


def export(model: nn.Module, result: QuantResult, path: str | os.PathLike, tokenizer: Any = None,
           overwrite: bool = False) -> Path:
    """Write the compressed-tensors folder (and `adapter/` for LoRA) atomically."""
    with atomic_dir(path, overwrite=overwrite) as tmp:
        written = write_quantized(model, result, tmp, tokenizer)
        write_marker(tmp, "quantized", label=result.label)
        (tmp / "README.md").write_text(model_card(
            tmp, str(getattr(model.config, "_name_or_path", "") or "unknown"), "quantized", ["quantized"],
            result.label, "see surgery_quant.json", "(not evaluated here; see `surgery compare`)", quant=written,
            name=Path(path).name))
    return Path(path)
