"""Where models come from and how they are read and written.

A Hub id `org/name[@revision]` is resolved through `huggingface_hub` as transformers does it (the
cache first, `HF_HOME`, `HF_HUB_OFFLINE`); reference names are resolved by `surgery.reference`. Folders are read as safetensors only — never a pickle — and every
weight must be accounted for: a missing or unexpected tensor is an error, not a silent random init.
Our vision classifiers are `model.safetensors` + `config.json` (`surgery_arch`).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from surgery.errors import SurgeryError, require
from surgery.io import atomic_dir
from surgery.models.adapters import SUPPORTED, base_type, unsupported
from surgery.models.vision import build_vision

VISION_KEY = "surgery_arch"
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "tf_model.h5",
            "flax_model.msgpack")


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder (sharded or not), checked to be readable."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = [p for p in _PICKLES if (folder / p).exists()]
        hint = f" (found {', '.join(pickles)}: surgery reads safetensors only, never pickles)" if pickles else ""
        raise SurgeryError(f"no *.safetensors weights in {folder}{hint}")
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as h:
                for key in h.keys():
                    h.get_slice(key)  # header entries must lie inside the file
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise SurgeryError(f"corrupt or truncated safetensors file {f}: {e}") from None
    return files


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """`config.json` of a model folder, or a one-line error."""
    folder = Path(path)
    require(folder.exists(), f"model folder not found: {folder}")
    require(folder.is_dir(), f"model path is not a folder: {folder}")
    cfg_path = folder / "config.json"
    require(cfg_path.is_file(), f"no config.json in {folder} (not a model folder)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SurgeryError(f"corrupt {cfg_path}: {e}") from None
    require(isinstance(cfg, dict), f"corrupt {cfg_path}: not a JSON object")
    return cfg


def is_hub_id(source: str) -> bool:
    return HUB_ID.match(source) is not None and not source.startswith((".", "/", "~"))


def resolve_hub(source: str) -> Path:
    """The local snapshot folder of a Hub id, from the cache (or downloaded when online)."""
    from huggingface_hub import constants, snapshot_download

    m = HUB_ID.match(source)
    require(m is not None, f"not a Hub id: {source!r} (expected org/name or org/name@revision)")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or constants.HF_HUB_OFFLINE
    try:
        path = snapshot_download(m["repo"], revision=m["rev"], local_files_only=offline,
                                 allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"])
    except Exception as e:  # offline / not cached / unknown repo / no network: one line either way
        why = "offline (HF_HUB_OFFLINE) and not in the cache" if offline else \
            (str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise SurgeryError(f"cannot resolve model {source!r}: {why}; cache searched: {constants.HF_HUB_CACHE} "
                           f"(set HF_HOME or HF_HUB_CACHE to another cache)") from None
    return Path(path)


def check_model_type(cfg: dict[str, Any], folder: Path) -> None:
    mtype = cfg.get("model_type")
    if base_type(mtype) not in SUPPORTED:
        raise unsupported(mtype, f"in {folder}/config.json")


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
