"""Where models come from and how they are read and written.

Where a model comes from (folders, Hub ids, reference names) is resolved before: see
`surgery.models.catalog` and `surgery.reference.resolve_model`. Folders are read as safetensors only — never a pickle — and every
weight must be accounted for: a missing or unexpected tensor is an error, not a silent random init.
Our vision classifiers are `model.safetensors` + `config.json` (`surgery_arch`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from surgery.errors import SurgeryError, require
from surgery.io import atomic_dir
from surgery.models.catalog import VISION_KEY, check_model_type, is_diffusion_config, read_config, weight_files
from surgery.models.vision import build_vision

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def _load_vision(folder: Path, cfg: dict[str, Any]) -> nn.Module:
    model = build_vision(cfg[VISION_KEY])
    tensors = {}
    for f in weight_files(folder):
        with safe_open(str(f), framework="pt") as h:
            tensors.update({k: h.get_tensor(k) for k in h.keys()})
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise SurgeryError(f"weights in {folder} do not fit its config: {str(e).splitlines()[0]}") from None
    return model


def _check_loading_info(info: dict[str, Any], folder: Path, model: nn.Module) -> None:
    """Refuse missing, unexpected or mis-shaped weights (a tied output head may be absent)."""
    tied = {"lm_head.weight"} if getattr(getattr(model, "config", None), "tie_word_embeddings", False) else set()
    missing = [k for k in info.get("missing_keys", []) if k not in tied]
    problems = [("missing", missing), ("unexpected", list(info.get("unexpected_keys", []))),
                ("mis-shaped", [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", [])])]
    for what, keys in problems:
        if keys:
            keys = sorted(keys)
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            raise SurgeryError(f"{folder}: {len(keys)} {what} weight(s): {', '.join(keys[:3])}{more} "
                               "(the folder does not hold this model's weights)")


def load_model(path: str | os.PathLike, dtype: torch.dtype | None = None,
               device: str | torch.device | None = None) -> tuple[nn.Module, Any]:
    """(model, tokenizer or None) from a folder written by `save_model` or `save_pretrained`."""
    folder = Path(path)
    cfg = read_config(folder)
    if is_diffusion_config(cfg):
        from surgery.diffusion.model import load_diffusion

        return load_diffusion(folder, device, dtype), None
    if VISION_KEY in cfg:
        model = _load_vision(folder, cfg)
        if dtype is not None:
            model.to(dtype)
        return (model.to(device) if device else model), None
    check_model_type(cfg, folder)
    weight_files(folder)
    import surgery.models.sliced  # noqa: F401  (registers the sliced decoders)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype or torch.float32,
                                                           use_safetensors=True, output_loading_info=True)
    except SurgeryError:
        raise
    except Exception as e:  # transformers raises many types; all mean "cannot load this folder"
        raise SurgeryError(f"cannot load model from {folder}: {str(e).splitlines()[0]}") from None
    _check_loading_info(info, folder, model)
    tokenizer = None
    if (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists():
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except Exception as e:
            raise SurgeryError(f"cannot load the tokenizer in {folder}: {str(e).splitlines()[0]}") from None
    if device:
        model.to(device)
    return model.eval(), tokenizer


def save_model(model: nn.Module, path: str | os.PathLike, tokenizer: Any = None, overwrite: bool = False,
               extra_json: dict[str, Any] | None = None) -> Path:
    """Write `model` (and tokenizer) to a folder atomically; `extra_json` adds JSON files."""
    with atomic_dir(path, overwrite=overwrite) as tmp:
        write_model(model, tmp, tokenizer)
        for name, obj in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return Path(path)


def write_model(model: nn.Module, folder: Path, tokenizer: Any = None) -> None:
    """The model's files into an existing (temporary) folder."""
    from surgery.diffusion.model import is_diffusion, write_diffusion

    if is_diffusion(model):
        write_diffusion(model, folder)
        return
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(str(folder))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))
        return
    cfg = getattr(model, "surgery_config", None)
    require(cfg is not None, f"{type(model).__name__} was not built by surgery.models; cannot describe it in config.json")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({VISION_KEY: cfg}, indent=2) + "\n")
