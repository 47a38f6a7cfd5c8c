"""What can be known about a model without loading it: supported types, config.json, Hub ids.

Light on purpose (no torch): the CLI and recipes check a model against what they will ask of it
before any weight loads.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from surgery.errors import SurgeryError, require

# Model types whose every path (score, quantize, export, prune, slice, unlearn) is tested.
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "olmo2", "qwen3_moe")
SLICED_PREFIX = "surgery_sliced_"
VISION_KEY = "surgery_arch"
DIFFUSION_CLASS = "UNet2DModel"  # diffusers' `_class_name` of the UNets surgery unlearns from


def is_diffusion_config(cfg: dict[str, Any]) -> bool:
    """A diffusers UNet's config.json (class conditioning is checked where it matters)."""
    return cfg.get("_class_name") == DIFFUSION_CLASS
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "tf_model.h5",
            "flax_model.msgpack")
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")


def base_type(model_type: str | None) -> str | None:
    """The architecture a (possibly sliced) model type derives from."""
    return model_type.removeprefix(SLICED_PREFIX) if model_type else model_type


def unsupported(model_type: object, detail: str = "") -> SurgeryError:
    more = f" ({detail})" if detail else ""
    return SurgeryError(f"unsupported architecture {model_type!r}{more}; supported: {', '.join(SUPPORTED)}, "
                        "their surgery_sliced_* forms, and surgery vision classifiers")


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


def check_model_type(cfg: dict[str, Any], folder: Path) -> None:
    """Refuse a config that is neither a supported decoder nor one of our vision classifiers."""
    if VISION_KEY in cfg or is_diffusion_config(cfg):
        return
    mtype = cfg.get("model_type")
    if base_type(mtype) not in SUPPORTED:
        raise unsupported(mtype, f"in {folder}/config.json")


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder (sharded or not), checked to be readable."""
    from safetensors import SafetensorError, safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        pickles = [p for p in _PICKLES if (folder / p).exists()]
        hint = f" (found {', '.join(pickles)}: surgery reads safetensors only, never pickles)" if pickles else ""
        raise SurgeryError(f"no *.safetensors weights in {folder}{hint}")
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as h:  # header checks only; no torch needed
                for key in h.keys():
                    h.get_slice(key)  # header entries must lie inside the file
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise SurgeryError(f"corrupt or truncated safetensors file {f}: {e}") from None
    return files


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
