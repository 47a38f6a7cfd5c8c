"""Train a class-conditional DDPM: AdamW with warmup + cosine decay, gradient clipping at 1,
labels dropped to "no class" with probability `p_uncond` (classifier-free guidance), and an
exponential moving average of the weights that becomes the model at the end."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from tqdm.auto import tqdm

from surgery.data.images import ImageSet
from surgery.diffusion.model import null_class
from surgery.diffusion.process import alphas_cumprod, diffusion_loss, noised_batch, to_model_space
from surgery.errors import require


def lr_at(step: int, steps: int, warmup: int) -> float:
    """Multiplier of the peak learning rate: linear warmup, then cosine down to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_ddpm(model: nn.Module, data: ImageSet, steps: int, batch_size: int, lr: float, warmup: int = 100,
               p_uncond: float = 0.1, ema: float = 0.999, seed: int = 0, progress: bool = True) -> list[float]:
    """Train `model` in place on `data` (labels = classes); returns the loss per step."""
    require(len(data) > 0, "empty training set")
    require(steps > 0 and batch_size > 0, "steps and batch_size must be positive")
    device = next(model.parameters()).device
    acp = alphas_cumprod(model)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, steps, warmup))
    average = copy.deepcopy(model).eval().requires_grad_(False) if ema > 0 else None
    null = null_class(model)
    losses: list[float] = []
    model.train()
    bar = tqdm(total=steps, desc="train-ddpm", disable=not progress, dynamic_ncols=True)
    while len(losses) < steps:
        order = torch.randperm(len(data), generator=gen)
        for start in range(0, len(data) - batch_size + 1 if len(data) >= batch_size else 1, batch_size):
            if len(losses) >= steps:
                break
            idx = order[start : start + batch_size]
            labels = data.y[idx].clone()
            labels[torch.rand(labels.shape, generator=gen) < p_uncond] = null
            batch = noised_batch(to_model_space(data.floats(idx)), labels, acp, gen)
            loss = diffusion_loss(model, {k: v.to(device) for k, v in batch.items()})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if average is not None:
                with torch.no_grad():
                    for a, p in zip(average.parameters(), model.parameters()):
                        a.lerp_(p, 1 - ema)
            losses.append(float(loss.detach()))
            bar.update(1)
            if len(losses) % 25 == 0:
                bar.set_postfix(loss=f"{sum(losses[-25:]) / 25:.4f}")
    bar.close()
    if average is not None:
        model.load_state_dict(average.state_dict())
    model.eval()
    return losses


__all__ = ["lr_at", "train_ddpm"]
