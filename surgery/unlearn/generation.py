"""Unlearning a class from a class-conditional diffusion model (SalUn §5, DDPM setting).

Methods (`UnlearnConfig.method`), each step one forget batch and/or one retain batch:
- `salun` / `rl`: the random-label analogue — the noise prediction for the forget images under
  their own class is pulled to the (detached) prediction under another class c' (`relabel`: c + 1
  for all by default, as the official DDPM code; `other`: drawn per image, c' ≠ c), plus α × the
  retain diffusion loss; `salun` moves only the saliency mask's weights.
- `ga`: −(forget diffusion loss) + α × retain loss.  `ft`: the retain loss alone.
- `esd`: ESD's negative guidance — ε_θ(x_t | c) is pulled to ε₀(x_t | ∅) − η·(ε₀(x_t | c) − ε₀(x_t | ∅))
  of the frozen original (η = `negative_guidance`); x_t are the forget images noised (ESD draws
  them by partial sampling of the model: the data version costs no sampling).
- `retrain`: a fresh UNet of the same config trained on the retain set (`steps`, `lr`).
The saliency map is |Σ ∇ diffusion loss| on the forget class, the mask its top `density`.
Adam-family updates with gradient clipping at 1, as the official DDPM code; with a mask, weights
outside it stay bit-identical (`masked.MaskedOptimizer`).
"""
from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from surgery import dist
from surgery.data.images import ImageSet
from surgery.diffusion.model import null_class, num_classes
from surgery.diffusion.process import alphas_cumprod, diffusion_loss, noised_batch, predict, to_model_space
from surgery.diffusion.train import train_ddpm
from surgery.errors import require
from surgery.saliency import MaskSet, score
from surgery.unlearn.config import GEN_METHODS, UnlearnConfig
from surgery.unlearn.losses import random_labels
from surgery.unlearn.masked import release


def noised_batches(data: ImageSet, batch_size: int, seed: int, model: nn.Module, limit: int | None = None):
    """Seeded `{noisy, timesteps, labels, noise}` batches over `data` (one pass, shuffled)."""
    acp = alphas_cumprod(model)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=gen)
    for i, idx in enumerate(order.split(batch_size)):
        if limit is not None and i >= limit:
            return
        yield noised_batch(to_model_space(data.floats(idx)), data.y[idx], acp, gen)


def diffusion_saliency_mask(model: nn.Module, forget: ImageSet, cfg: UnlearnConfig,
                            progress: bool = False) -> MaskSet:
    """SalUn's mask for generation: top `density` of |Σ ∇ ‖ε − ε_θ(x_t | c)‖²| over the forget images."""
    was = model.training
    model.eval()
    try:
        smap = score(model, list(noised_batches(forget, cfg.batch_size, cfg.seed + 7, model)), loss=diffusion_loss,
                     kind="abs_grad", include=cfg.include, exclude=cfg.exclude, progress=progress,
                     description="forget class (diffusion loss)")
    finally:
        model.train(was)
    return smap.mask(cfg.density, cfg.scope)


def relabel_loss(model: nn.Module, batch: dict[str, torch.Tensor], gen: torch.Generator,
                 rule: str = "other") -> torch.Tensor:
    """‖ε_θ(x_t | c) − sg[ε_θ(x_t | c')]‖² with c' from `random_labels` (`rule`: by default c' ≠ c drawn
    per image; `next`: c + 1, the official DDPM code) — SalUn's generation objective."""
    other = random_labels(batch["labels"], num_classes(model), gen, rule).to(batch["labels"].device)
    with torch.no_grad():
        target = predict(model, batch["noisy"], batch["timesteps"], other).float()
    return F.mse_loss(predict(model, batch["noisy"], batch["timesteps"], batch["labels"]).float(), target)


def esd_loss(model: nn.Module, frozen: nn.Module, batch: dict[str, torch.Tensor], eta: float) -> torch.Tensor:
    """‖ε_θ(x_t | c) − [ε₀(x_t | ∅) − η·(ε₀(x_t | c) − ε₀(x_t | ∅))]‖² (ESD's negative guidance)."""
    x, t, c = batch["noisy"], batch["timesteps"], batch["labels"]
    with torch.no_grad():
        uncond = predict(frozen, x, t, torch.full_like(c, null_class(frozen))).float()
        cond = predict(frozen, x, t, c).float()
    return F.mse_loss(predict(model, x, t, c).float(), uncond - eta * (cond - uncond))


def _cycle(data: ImageSet, batch_size: int, seed: int, model: nn.Module):
    epoch = 0
    while True:
        yield from noised_batches(data, batch_size, seed + 1000 * epoch, model)
        epoch += 1


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def unlearn_class(model: nn.Module, cfg: UnlearnConfig, forget: ImageSet, retain: ImageSet | None,
                  mask: MaskSet | None = None, progress: bool = True):
    """Unlearn `forget` (the images of one class) from a diffusion `model` in place."""
    from surgery.unlearn.engine import UnlearnResult, optimizer_over_mask

    require(cfg.method in GEN_METHODS, f"method {cfg.method!r} is not for diffusion models; use one of {GEN_METHODS}")
    require(not dist.is_distributed(), "diffusion unlearning runs in one process")
    require(len(forget) > 0, "empty forget set")
    needs_retain = cfg.method in ("ft", "retrain") or (cfg.method in ("salun", "rl", "ga") and cfg.alpha > 0)
    require(not needs_retain or (retain is not None and len(retain) > 0), f"{cfg.method} needs a retain set")
    device = next(model.parameters()).device
    steps = cfg.steps or cfg.epochs * -(-len(forget) // cfg.batch_size)
    t0 = time.time()
    if cfg.method == "retrain":
        torch.manual_seed(cfg.seed)
        fresh = type(model).from_config(model.config).to(device)
        fresh.surgery_scheduler = getattr(model, "surgery_scheduler", None)
        history = train_ddpm(fresh, retain, steps, cfg.batch_size, cfg.lr, warmup=min(100, steps // 10),
                             seed=cfg.seed, progress=progress)
        model.load_state_dict(fresh.state_dict())
        model.eval()
        return UnlearnResult(cfg, None, time.time() - t0, 0.0, sum(p.numel() for p in model.parameters()),
                             [{"step": len(history), "loss": history[-1]}])
    frozen = copy.deepcopy(model).eval().requires_grad_(False) if cfg.method == "esd" else None
    opt, mask, mask_seconds = optimizer_over_mask(model, cfg, forget, mask, t0, progress)
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(cfg.seed)
    forget_batches = _cycle(forget, cfg.batch_size, cfg.seed, model)
    retain_batches = _cycle(retain, cfg.batch_size, cfg.seed + 1, model) if retain is not None else None
    history: list[dict[str, float]] = []
    model.train()
    try:
        for step in tqdm(range(steps), desc=f"unlearn[{cfg.method}]", disable=not progress, leave=False):
            logs: dict[str, float] = {"step": step + 1}
            loss = torch.zeros((), device=device)
            if cfg.method != "ft":
                fb = _to(next(forget_batches), device)
                if cfg.method in ("salun", "rl"):
                    forget_loss = relabel_loss(model, fb, gen, cfg.relabel_rule(diffusion=True))
                elif cfg.method == "ga":
                    forget_loss = -diffusion_loss(model, fb)
                else:
                    forget_loss = esd_loss(model, frozen, fb, cfg.negative_guidance)
                loss = loss + forget_loss
                logs["forget"] = float(forget_loss.detach())
            if retain_batches is not None and (cfg.method == "ft" or (cfg.method != "esd" and cfg.alpha > 0)):
                retain_loss = diffusion_loss(model, _to(next(retain_batches), device))
                loss = loss + (1.0 if cfg.method == "ft" else cfg.alpha) * retain_loss
                logs["retain"] = float(retain_loss.detach())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            history.append(logs)
    finally:
        release(model)
    return UnlearnResult(cfg, mask, time.time() - t0, mask_seconds, opt.trainable, history)


__all__ = ["diffusion_saliency_mask", "esd_loss", "noised_batches", "relabel_loss", "unlearn_class"]
