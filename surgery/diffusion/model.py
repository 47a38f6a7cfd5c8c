"""The class-conditional denoiser: a diffusers `UNet2DModel` whose class embedding has one extra
row, the "no class" label of classifier-free guidance, and the noise schedule saved beside it.

A folder holds `config.json` + `diffusion_pytorch_model.safetensors` (the UNet) and
`scheduler_config.json` (the DDPM schedule), so plain diffusers loads it:
`UNet2DModel.from_pretrained(folder)` and `DDPMScheduler.from_pretrained(folder)`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgery.errors import SurgeryError, require
from surgery.models.catalog import DIFFUSION_CLASS

SCHEDULER_FILE = "scheduler_config.json"


def build_unet(num_classes: int, image_size: int, block_out_channels: tuple[int, ...] = (32, 64, 64),
               layers_per_block: int = 1, channels: int = 1) -> nn.Module:
    """A UNet with plain ResNet blocks (no attention: images of 8–32 px do not need it) and
    `num_classes + 1` class embeddings (the last one = unconditional)."""
    from diffusers import UNet2DModel

    levels = len(block_out_channels)
    require(levels >= 1, "block_out_channels needs at least one level")
    require(image_size % (2 ** (levels - 1)) == 0,
            f"image size {image_size} is not divisible by 2^{levels - 1} (one halving per extra level)")
    groups = min(8, min(block_out_channels))
    require(all(c % groups == 0 for c in block_out_channels),
            f"block_out_channels {block_out_channels} must be multiples of {groups} (group norm)")
    return UNet2DModel(sample_size=image_size, in_channels=channels, out_channels=channels,
                       block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                       down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
                       num_class_embeds=num_classes + 1, norm_num_groups=groups)


def scheduler(model: nn.Module | None = None, kind: str = "ddpm") -> Any:
    """The model's noise schedule (`ddpm`, or `ddim` for few-step sampling); diffusers' defaults
    are DDPM's: 1,000 steps, linear β from 1e-4 to 0.02."""
    from diffusers import DDIMScheduler, DDPMScheduler

    config = getattr(model, "surgery_scheduler", None) or {}
    if kind == "ddim":
        return DDIMScheduler.from_config({**config, "clip_sample": True, "set_alpha_to_one": False})
    return DDPMScheduler.from_config(config) if config else DDPMScheduler()


def is_diffusion(model: nn.Module) -> bool:
    return type(model).__name__ == DIFFUSION_CLASS and hasattr(model, "config") and \
        getattr(model.config, "num_class_embeds", None) is not None


def num_classes(model: nn.Module) -> int:
    """Real classes (the last class embedding is the unconditional label)."""
    return int(model.config.num_class_embeds) - 1


def null_class(model: nn.Module) -> int:
    return num_classes(model)


def image_shape(model: nn.Module) -> tuple[int, int, int]:
    size = model.config.sample_size
    size = size if isinstance(size, int) else size[0]
    return int(model.config.in_channels), int(size), int(size)


def load_diffusion(folder: str | os.PathLike, device: str | torch.device | None = None,
                   dtype: torch.dtype | None = None) -> nn.Module:
    """The UNet of a folder (with its schedule attached as `surgery_scheduler`)."""
    from diffusers import UNet2DModel

    folder = Path(folder)
    try:
        model = UNet2DModel.from_pretrained(str(folder), use_safetensors=True, low_cpu_mem_usage=False,
                                            torch_dtype=dtype or torch.float32)
    except Exception as e:  # diffusers raises many types; all mean "cannot load this folder"
        raise SurgeryError(f"cannot load diffusion model from {folder}: {str(e).splitlines()[0]}") from None
    require(is_diffusion(model), f"{folder} holds a UNet without class conditioning; "
            "surgery needs a class-conditional one (num_class_embeds)")
    if (folder / SCHEDULER_FILE).is_file():
        cfg = json.loads((folder / SCHEDULER_FILE).read_text())
        model.surgery_scheduler = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return (model.to(device) if device else model).eval()


def write_diffusion(model: nn.Module, folder: Path) -> None:
    """UNet and schedule into an existing (temporary) folder."""
    model.save_pretrained(str(folder), safe_serialization=True)
    scheduler(model).save_config(str(folder))


__all__ = ["build_unet", "image_shape", "is_diffusion", "load_diffusion", "null_class",
           "num_classes", "scheduler", "write_diffusion"]
