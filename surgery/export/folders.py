"""Model folders as users ship them: configs (with remote code for sliced models), loading back
(adapter attached), the marker that says a folder is a surgery output, and output-folder checks."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgery._version import __version__
from surgery.errors import SurgeryError
from surgery.export.peft import ADAPTER_DIR, attach_adapter
from surgery.io import MARKER
from surgery.models.io import load_model
from surgery.models.sliced import is_sliced



def per_expert_config(model: nn.Module) -> Any:
    """For a MoE model: its config as the per-expert form of `surgery_sliced_<base>` (same widths).

    A quantized MoE checkpoint keeps one packed tensor set per expert; transformers 5.24 cannot
    dequantize asymmetric experts into its fused modules (its expert path drops the zero point), so
    such a folder is described by our per-expert modeling file (remote code) instead."""
    from surgery.models.adapters import DecoderAdapter
    from surgery.models.sliced import sliced_config

    ad = DecoderAdapter(model)
    if not any(ad.is_moe(i) for i in range(ad.num_layers)) or is_sliced(model.config):
        return model.config
    shapes = [ad.block_shape(i) for i in range(ad.num_layers)]
    return sliced_config(model.config, [s.num_heads for s in shapes], [s.num_kv_heads for s in shapes],
                         [s.intermediate_size or model.config.intermediate_size for s in shapes], stock=False)


def write_config(model: nn.Module, folder: Path, per_expert: bool = False) -> None:
    """config.json (+ generation_config.json; a sliced config also copies its modeling file); with
    `per_expert`, a MoE model's experts stay one module each (see `per_expert_config`)."""
    config = per_expert_config(model) if per_expert else model.config
    config.save_pretrained(str(folder))
    if is_sliced(config):  # a config alone names only its own class: add the model's
        from surgery.models.sliced import SLICED, base_type

        path = folder / "config.json"
        data = json.loads(path.read_text())
        module = data["auto_map"]["AutoConfig"].split(".")[0]
        data["auto_map"]["AutoModelForCausalLM"] = f"{module}.{SLICED[base_type(config.model_type)][1].__name__}"
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(folder))


def write_marker(folder: Path, kind: str, **extra: Any) -> None:
    (folder / MARKER).write_text(json.dumps({"kind": kind, "surgery": __version__, **extra}, indent=2) + "\n")


def has_adapter(folder: str | os.PathLike) -> bool:
    return (Path(folder) / ADAPTER_DIR / "adapter_config.json").is_file()


def load_folder(path: str | os.PathLike, dtype: torch.dtype | None = None,
                device: str | torch.device | None = None) -> tuple[nn.Module, Any]:
    """(model, tokenizer) of a model folder, with its `adapter/` (ApiQ's LoRA) attached: the model
    as its card describes it."""
    model, tok = load_model(path, dtype=dtype, device=device)
    if has_adapter(path):
        try:
            model = attach_adapter(model, Path(path))
        except Exception as e:  # peft raises many types for a bad adapter folder
            raise SurgeryError(f"cannot attach the adapter in {path}/{ADAPTER_DIR}: {str(e).splitlines()[0]}") from None
    return model, tok

