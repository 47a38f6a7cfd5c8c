"""`unlearn(model, UnlearnConfig, forget=..., retain=...)`: SalUn and its baselines, in place.

Classifiers (forget / retain are `ImageSet`s): `salun` = Random Label with the saliency mask;
`rl`, `ga`, `ft`, `l1_sparse` as in the SalUn code's baselines; `retrain` trains a fresh copy on
the retain set with the same recipe. Causal LMs (forget / retain are token windows): `ga`,
`graddiff` (−NLL forget + α·NLL retain) and `npo` (β, frozen reference = the model before).
With a mask, only the masked weights move (bit-identical elsewhere, under any optimizer).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from surgery.data.images import ImageSet
from surgery.errors import SurgeryError, require
from surgery.models.adapters import is_language_model
from surgery.saliency import MaskSet, score
from surgery.unlearn import losses
from surgery.unlearn.config import CLS_METHODS, LM_METHODS, UnlearnConfig
from surgery.unlearn.masked import DenseOptimizer, MaskedOptimizer, factory


@dataclass
class UnlearnResult:
    config: UnlearnConfig
    mask: MaskSet | None
    seconds: float  # RTE: the whole run, the mask pass included
    mask_seconds: float
    trainable: int
    history: list[dict[str, float]] = field(default_factory=list)


def saliency_mask(model: nn.Module, forget: Any, cfg: UnlearnConfig, progress: bool = False) -> MaskSet:
    """SalUn's mask: top `density` of |Σ∇(forget loss)| on the forget set, model in eval mode."""
    was = model.training
    model.eval()
    try:
        if is_language_model(model):
            batches, loss = list(forget.split(cfg.batch_size)), "neg_causal_lm"
        else:
            batches, loss = list(forget.loader(cfg.batch_size)), "neg_ce"
        smap = score(model, batches, loss=loss, kind="abs_grad", include=cfg.include, exclude=cfg.exclude,
                     progress=progress, description="forget set")
    finally:
        model.train(was)
    return smap.mask(cfg.density, cfg.scope)


def _train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _cycle(it_factory):
    while True:
        yield from it_factory()


def _classifier_epoch(model: nn.Module, opt, cfg: UnlearnConfig, forget: ImageSet, retain: ImageSet | None,
                      epoch: int, gen: torch.Generator, num_classes: int) -> dict[str, float]:
    m, seed = cfg.method, cfg.seed * 1000 + epoch
    logs: dict[str, float] = {}

    def step(loss: torch.Tensor, key: str) -> None:
        opt.zero_grad()
        loss.backward()
        opt.step()
        logs[key] = float(loss.detach())

    device = next(model.parameters()).device

    def batches(data: ImageSet, s: int):
        for x, y in data.loader(cfg.batch_size, shuffle=True, seed=s, augment=cfg.augment):
            yield x.to(device), y.to(device)

    if m in ("salun", "rl") and cfg.schedule == "sequential":
        for x, y in batches(forget, seed):
            step(losses.ce(model, x, losses.random_labels(y, num_classes, gen)), "forget_ce")
        if retain is not None and cfg.alpha > 0:
            for x, y in batches(retain, seed + 1):
                step(cfg.alpha * losses.ce(model, x, y), "retain_ce")
    elif m in ("salun", "rl"):  # joint: forget batches paired with cycling retain batches
        rb = _cycle(lambda: batches(retain, seed + 1)) if retain is not None else None
        for x, y in batches(forget, seed):
            loss = losses.ce(model, x, losses.random_labels(y, num_classes, gen))
            if rb is not None and cfg.alpha > 0:
                xr, yr = next(rb)
                loss = loss + cfg.alpha * losses.ce(model, xr, yr)
            step(loss, "joint")
    elif m == "ga":
        for x, y in batches(forget, seed):
            step(-losses.ce(model, x, y), "forget_neg_ce")
    elif m in ("ft", "l1_sparse"):
        require(retain is not None, f"{m} needs a retain set")
        coef = cfg.l1 * (1 - epoch / max(1, cfg.epochs)) if m == "l1_sparse" else 0.0
        for x, y in batches(retain, seed + 1):
            loss = losses.ce(model, x, y)
            if coef:
                loss = loss + coef * losses.l1_norm(model)
            step(loss, "retain_ce")
    return logs


def _lm_epoch(model: nn.Module, opt, cfg: UnlearnConfig, forget: torch.Tensor, retain: torch.Tensor | None,
              reference: nn.Module | None, epoch: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    order = torch.randperm(forget.shape[0], generator=gen)
    r_order = torch.randperm(retain.shape[0], generator=gen) if retain is not None else None
    logs: dict[str, float] = {}
    device = next(model.parameters()).device
    for j, idx in enumerate(order.split(cfg.batch_size)):
        ids = forget[idx].to(device)
        if cfg.method == "npo":
            loss = losses.npo_loss(model, reference, ids, cfg.beta)
        else:
            loss = -losses.nll(model, ids)
        logs["forget"] = float(loss.detach())
        if cfg.method in ("graddiff", "npo") and retain is not None and cfg.alpha > 0:
            start = (j * cfg.batch_size) % retain.shape[0]
            r_idx = r_order[start : start + cfg.batch_size]
            r_loss = losses.nll(model, retain[r_idx].to(device))
            logs["retain_nll"] = float(r_loss.detach())
            loss = loss + cfg.alpha * r_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return logs


def unlearn(model: nn.Module, config: UnlearnConfig, forget: Any, retain: Any = None,
            mask: MaskSet | None = None, progress: bool = True) -> UnlearnResult:
    """Unlearn `forget` from `model` in place (for `retrain`: replace its weights by a fresh model
    trained on `retain`). Returns the mask used, the run time (RTE) and the loss history."""
    cfg = config
    lm = is_language_model(model)
    if lm:
        require(cfg.method in LM_METHODS, f"method {cfg.method!r} is for classifiers; LM methods: {LM_METHODS}")
        require(isinstance(forget, torch.Tensor) and forget.numel() > 0, "empty forget set")
    else:
        require(cfg.method in CLS_METHODS, f"method {cfg.method!r} is for LMs; classifier methods: {CLS_METHODS}")
        require(isinstance(forget, ImageSet) and len(forget) > 0, "empty forget set")
    if retain is not None:
        require(len(retain) > 0, "empty retain set")
    t0 = time.time()
    if cfg.method == "retrain":
        return _retrain(model, cfg, retain, t0, progress)
    mask_seconds = 0.0
    if cfg.masked:
        if mask is None:
            mask = saliency_mask(model, forget, cfg, progress)
            mask_seconds = time.time() - t0
        mask.check_model(model)
    make = factory(cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
    opt = MaskedOptimizer(model, mask, make) if cfg.masked else DenseOptimizer(model, make)
    reference = None
    if cfg.method == "npo":
        reference = copy.deepcopy(model).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
    gen = torch.Generator().manual_seed(cfg.seed)
    num_classes = None if lm else int(model(forget.floats(slice(0, 1)).to(next(model.parameters()).device)).shape[-1])
    history = []
    try:
        for epoch in tqdm(range(cfg.epochs), desc=f"unlearn[{cfg.method}]", disable=not progress, leave=False):
            if lm:
                model.train()
                logs = _lm_epoch(model, opt, cfg, forget, retain, reference, epoch)
            else:
                _train_mode(model, cfg.freeze_bn_stats)
                logs = _classifier_epoch(model, opt, cfg, forget, retain, epoch, gen, num_classes)
            history.append({"epoch": epoch + 1, **logs})
    finally:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
            p.grad = None
    return UnlearnResult(cfg, mask, time.time() - t0, mask_seconds, opt.trainable, history)


def _retrain(model: nn.Module, cfg: UnlearnConfig, retain: ImageSet | None, t0: float,
             progress: bool) -> UnlearnResult:
    from surgery.models.vision import build_vision
    from surgery.train import fit

    require(retain is not None, "retrain needs a retain set")
    spec = getattr(model, "surgery_config", None)
    if spec is None:
        raise SurgeryError("retrain needs a model built by surgery.models.build_vision (its config)")
    torch.manual_seed(cfg.seed)
    fresh = build_vision(spec).to(next(model.parameters()).device)
    fit(fresh, retain, cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.augment, cfg.seed, progress)
    model.load_state_dict(fresh.state_dict())
    model.eval()
    return UnlearnResult(cfg, None, time.time() - t0, 0.0, sum(p.numel() for p in model.parameters()))


__all__ = ["UnlearnResult", "saliency_mask", "unlearn"]
