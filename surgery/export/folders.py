"""Model folders as users ship them: configs (with remote code for sliced models), loading back
(adapter attached), the marker that says a folder is a surgery output, and output-folder checks."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgery.errors import SurgeryError
from surgery.export.peft import ADAPTER_DIR, attach_adapter
from surgery.io import MARKER
from surgery.models.io import load_model
from surgery.models.sliced import MODULE, is_sliced, modeling_source



def write_code(config: Any, folder: Path) -> bool:
    """Write the remote-code file a sliced config's `auto_map` names; return whether it did."""
    if not is_sliced(config):
        return False
    (folder / f"{MODULE}.py").write_text(modeling_source())
    return True


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
    """config.json (+ generation_config.json, + the modeling file of a sliced model); with
    `per_expert`, a MoE model's experts stay one module each (see `per_expert_config`)."""
    config = per_expert_config(model) if per_expert else model.config
    config.save_pretrained(str(folder))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(folder))
    write_code(config, folder)


def write_marker(folder: Path, kind: str, **extra: Any) -> None:
    from surgery import __version__

    (folder / MARKER).write_text(json.dumps({"kind": kind, "surgery": __version__, **extra}, indent=2) + "\n")


def is_surgery_output(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MARKER).is_file()


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


def check_output_folder(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an output folder that would destroy what is not ours, before any work starts.

    Not `.`, the current folder or one of its parents; not an existing file; an existing folder
    only with `overwrite` and only if it holds a previous surgery output; a writable parent.
    """
    raw = Path(path)
    out = raw.resolve()
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents or raw.name in ("", ".", ".."):
        raise SurgeryError(f"output {path!s} names the current folder or one of its parents; name a new folder")
    if out.exists() and not out.is_dir():
        raise SurgeryError(f"output {path} exists and is a file; name a new folder")
    if out.exists():
        if not overwrite:
            raise SurgeryError(f"output folder exists: {path} (pass --overwrite to replace it)")
        if any(out.iterdir()) and not is_surgery_output(out):
            raise SurgeryError(f"output folder {path} exists and was not written by surgery (no {MARKER}); "
                               "refusing to replace it, even with --overwrite")
    probe = out.parent
    while not probe.exists():
        probe = probe.parent
    if not (probe.is_dir() and os.access(probe, os.W_OK)):
        raise SurgeryError(f"output folder is not writable: {out.parent}")
    return out
