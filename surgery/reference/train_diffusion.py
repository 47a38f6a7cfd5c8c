"""Train a reference class-conditional DDPM (and, with `exclude_classes`, its Retrain twin)."""
from __future__ import annotations

import os
import time
from typing import Any

import torch

from surgery.diffusion.model import build_unet
from surgery.diffusion.train import train_ddpm
from surgery.reference.specs import DiffusionSpec
from surgery.reference.train_vision import vision_data


def train_diffusion(spec: DiffusionSpec, root: str | os.PathLike | None,
                    progress: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    t0 = time.time()
    train, _ = vision_data(spec, root)
    torch.manual_seed(spec.seed)
    model = build_unet(len(train.classes), spec.image_size, spec.block_out_channels, spec.layers_per_block,
                       channels=int(train.x.shape[1]))
    losses = train_ddpm(model, train, spec.steps, spec.batch_size, spec.lr, spec.warmup, spec.p_uncond, spec.ema,
                        spec.seed, progress)
    tail = losses[-min(200, len(losses)):]
    return model, {"train_samples": len(train), "build_seconds": round(time.time() - t0, 1),
                   "quality": {"final_loss": round(sum(tail) / len(tail), 5)}}
