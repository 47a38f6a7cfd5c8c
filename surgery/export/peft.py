"""LoRA adapters as a PEFT adapter folder (`adapter/` beside the quantized weights)."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

ADAPTER_DIR = "adapter"


def write_adapter(folder: Path, lora: Mapping[str, tuple[torch.Tensor, torch.Tensor]], rank: int,
                  alpha: float) -> Path:
    """`folder/adapter/` with `adapter_config.json` and `adapter_model.safetensors`
    (y = x Wᵀ + (alpha/rank)·B(A x) for each named linear)."""
    out = folder / ADAPTER_DIR
    out.mkdir()
    tensors = {}
    for name, (a, b) in lora.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.detach().cpu().contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.detach().cpu().contiguous()
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
              "lora_dropout": 0.0, "bias": "none", "target_modules": sorted(lora), "fan_in_fan_out": False,
              "inference_mode": True, "init_lora_weights": True, "base_model_name_or_path": None}
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(out / "adapter_model.safetensors"))
    return out


def attach_adapter(model: torch.nn.Module, folder: Path) -> torch.nn.Module:
    """`model` with the folder's PEFT adapter applied (a PeftModel), or `model` if there is none."""
    path = Path(folder) / ADAPTER_DIR
    if not (path / "adapter_config.json").is_file():
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(path)).eval()
