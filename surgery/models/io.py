"""Save and load models as folders: HF decoders through `save_pretrained`, our vision classifiers as
`model.safetensors` + `config.json` (`surgery_arch`). Every failure is one clear line."""
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
from surgery.models.adapters import DECODER_TYPES
from surgery.models.vision import build_vision

VISION_KEY = "surgery_arch"


def _check_safetensors(folder: Path) -> None:
    files = sorted(folder.glob("*.safetensors"))
    require(bool(files), f"no *.safetensors weights in {folder}")
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as h:
                for key in h.keys():
                    h.get_slice(key)  # header entries must lie inside the file
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise SurgeryError(f"corrupt or truncated safetensors file {f}: {e}") from None


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """`config.json` of a model folder, or a one-line error."""
    folder = Path(path)
    require(folder.exists(), f"model folder not found: {folder}")
    require(folder.is_dir(), f"model path is not a folder: {folder}")
    cfg_path = folder / "config.json"
    require(cfg_path.is_file(), f"no config.json in {folder} (not a model folder)")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise SurgeryError(f"corrupt {cfg_path}: {e}") from None


def load_model(
    path: str | os.PathLike, dtype: torch.dtype | None = None, device: str | None = None
) -> tuple[nn.Module, Any]:
    """(model, tokenizer or None) from a folder written by `save_model` or `save_pretrained`."""
    folder = Path(path)
    cfg = read_config(folder)
    _check_safetensors(folder)
    if VISION_KEY in cfg:
        model = build_vision(cfg[VISION_KEY])
        tensors = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as h:
                tensors.update({k: h.get_tensor(k) for k in h.keys()})
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as e:
            raise SurgeryError(f"weights in {folder} do not fit its config: {str(e).splitlines()[0]}") from None
        if dtype is not None:
            model.to(dtype)
        return (model.to(device) if device else model), None
    mtype = cfg.get("model_type")
    if mtype not in DECODER_TYPES:
        raise SurgeryError(
            f"unsupported architecture {mtype!r} in {folder}/config.json; supported: "
            f"{', '.join(DECODER_TYPES)} decoders and surgery vision classifiers"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    qcfg = cfg.get("quantization_config") or {}
    try:
        if len(qcfg.get("config_groups", {})) > 1:
            model = _load_mixed_compressed(folder, cfg, dtype or torch.float32)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype or torch.float32)
    except Exception as e:  # transformers raises many types; all mean "cannot load this folder"
        raise SurgeryError(f"cannot load model from {folder}: {str(e).splitlines()[0]}") from None
    tokenizer = None
    if (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if device:
        model.to(device)
    return model, tokenizer


def _load_mixed_compressed(folder: Path, cfg: dict[str, Any], dtype: torch.dtype) -> nn.Module:
    """A compressed-tensors folder with several config groups (e.g. pruned widths quantized per
    channel beside grouped layers): transformers 5.24 dequantizes every layer with the first group's
    scheme, so we decompress with our reader and load the dense weights ourselves."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    import surgery.models.sliced  # noqa: F401  (registers sliced decoders)
    from surgery.models.sliced import model_for
    from surgery.quantize.export import dequantized_weights

    plain = {k: v for k, v in cfg.items() if k != "quantization_config"}
    config = AutoConfig.for_model(**plain)
    model = model_for(config)
    state = {k: v for k, v in load_file(str(folder / "model.safetensors")).items()
             if not k.endswith(("_packed", "_scale", "_zero_point", "_shape"))}
    state.update({f"{name}.weight": w for name, w in dequantized_weights(folder).items()})
    model.load_state_dict(state, strict=True)
    return model.to(dtype)


def save_model(
    model: nn.Module,
    path: str | os.PathLike,
    tokenizer: Any = None,
    overwrite: bool = False,
    extra_json: dict[str, Any] | None = None,
) -> Path:
    """Write `model` (and tokenizer) to a folder atomically; `extra_json` adds JSON files."""
    with atomic_dir(path, overwrite=overwrite) as tmp:
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(str(tmp))
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
        else:
            cfg = getattr(model, "surgery_config", None)
            require(cfg is not None, f"{type(model).__name__} was not built by surgery.models; "
                    "cannot describe it in config.json")
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(tmp / "model.safetensors"))
            (tmp / "config.json").write_text(json.dumps({VISION_KEY: cfg}, indent=2) + "\n")
        for name, obj in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return Path(path)
