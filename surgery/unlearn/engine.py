"""`unlearn(model, UnlearnConfig, forget=..., retain=...)`: SalUn and its baselines, in place.

Classifiers (forget / retain are `ImageSet`s): `salun` = Random Label with the saliency mask;
`rl`, `ga`, `ft`, `l1_sparse` as in the SalUn code's baselines; `retrain` trains a fresh copy on
the retain set with the same recipe. Causal LMs (forget / retain are token windows): `ga`,
`graddiff` (−NLL forget + α·NLL retain) and `npo` (β, frozen reference = the model before).
With a mask, only the masked weights move (bit-identical elsewhere, under any optimizer).

Under torchrun every batch is split over the ranks by rows (each rank's loss weighted by its
share), so the update equals the one-process update at any world size: a replicated model is
wrapped in DDP here, after the mask has fixed which parameters train; an FSDP2-sharded model
(`fully_shard`) trains its own shards (see `masked.py`). NPO's reference log-probabilities are
computed once before training, so no second copy of the model is kept.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from surgery import dist
from surgery.data.images import ImageSet
from surgery.errors import SurgeryError, require
from surgery.models.adapters import is_language_model
from surgery.saliency import MaskSet, score
from surgery.shards import is_dtensor
from surgery.unlearn import losses
from surgery.unlearn.config import CLS_METHODS, LM_METHODS, UnlearnConfig
from surgery.unlearn.masked import DenseOptimizer, MaskedOptimizer, factory, release


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
    from surgery.diffusion.model import is_diffusion

    if is_diffusion(model):
        from surgery.unlearn.generation import diffusion_saliency_mask

        return diffusion_saliency_mask(model, forget, cfg, progress)
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
    device = _device(model)

    def step(loss: torch.Tensor, key: str) -> None:
        opt.zero_grad()
        loss.backward()
        opt.step()
        logs[key] = float(loss.detach())

    def batches(data: ImageSet, s: int, relabel: bool = False):
        """(x, y, weight) of this rank's rows; random labels are drawn for the whole batch."""
        for x, y in data.loader(cfg.batch_size, shuffle=True, seed=s, augment=cfg.augment):
            if relabel:
                y = losses.random_labels(y, num_classes, gen, cfg.relabel_rule(diffusion=False))
            rows, w = dist.local_rows(x.shape[0])
            yield x[rows].to(device), y[rows].to(device), w

    if m in ("salun", "rl") and cfg.schedule == "sequential":
        for x, y, w in batches(forget, seed, relabel=True):
            step(w * losses.ce(model, x, y), "forget_ce")
        if retain is not None and cfg.alpha > 0:
            for x, y, w in batches(retain, seed + 1):
                step(w * cfg.alpha * losses.ce(model, x, y), "retain_ce")
    elif m in ("salun", "rl"):  # joint: forget batches paired with cycling retain batches
        rb = _cycle(lambda: batches(retain, seed + 1)) if retain is not None else None
        for x, y, w in batches(forget, seed, relabel=True):
            loss = w * losses.ce(model, x, y)
            if rb is not None and cfg.alpha > 0:
                xr, yr, wr = next(rb)
                loss = loss + wr * cfg.alpha * losses.ce(model, xr, yr)
            step(loss, "joint")
    elif m == "ga":
        for x, y, w in batches(forget, seed):
            step(-w * losses.ce(model, x, y), "forget_neg_ce")
    elif m in ("ft", "l1_sparse"):
        require(retain is not None, f"{m} needs a retain set")
        coef = cfg.l1 * (1 - epoch / max(1, cfg.epochs)) if m == "l1_sparse" else 0.0
        for x, y, w in batches(retain, seed + 1):
            loss = w * losses.ce(model, x, y)
            if coef:
                loss = loss + coef * losses.l1_norm(model)
            step(loss, "retain_ce")
    return logs


def _lm_epoch(model: nn.Module, opt, cfg: UnlearnConfig, forget: torch.Tensor, retain: torch.Tensor | None,
              reference: torch.Tensor | None, epoch: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    order = torch.randperm(forget.shape[0], generator=gen)
    r_order = torch.randperm(retain.shape[0], generator=gen) if retain is not None else None
    logs: dict[str, float] = {}
    device = _device(model)
    for j, idx in enumerate(order.split(cfg.batch_size)):
        rows, w = dist.local_rows(idx.numel())
        idx = idx[rows]
        ids = forget[idx].to(device)
        if cfg.method == "npo":
            loss = losses.npo_loss(model, reference[idx].to(device), ids, cfg.beta)
        else:
            loss = -losses.nll(model, ids)
        logs["forget"] = float(loss.detach())
        loss = w * loss
        if cfg.method in ("graddiff", "npo") and retain is not None and cfg.alpha > 0:
            start = (j * cfg.batch_size) % retain.shape[0]
            r_idx = r_order[start : start + cfg.batch_size]
            r_rows, r_w = dist.local_rows(r_idx.numel())
            r_loss = losses.nll(model, retain[r_idx[r_rows]].to(device))
            logs["retain_nll"] = float(r_loss.detach())
            loss = loss + r_w * cfg.alpha * r_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return logs


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters())
    return p.to_local().device if is_dtensor(p) else p.device


@torch.no_grad()
def reference_logprobs(model: nn.Module, forget: torch.Tensor, batch_size: int) -> torch.Tensor:
    """log π_ref(x) of every forget window under the model as it is now (NPO's frozen reference);
    under FSDP every rank computes all of them (each forward is a collective)."""
    was = model.training
    model.eval()
    try:
        device = _device(model)
        out = [losses.sequence_logprob(model, b.to(device)).float().cpu() for b in forget.split(batch_size)]
    finally:
        model.train(was)
    return torch.cat(out)


def unlearn(model: nn.Module, config: UnlearnConfig, forget: Any, retain: Any = None,
            mask: MaskSet | None = None, progress: bool = True) -> UnlearnResult:
    """Unlearn `forget` from `model` in place (for `retrain`: replace its weights by a fresh model
    trained on `retain`). Returns the mask used, the run time (RTE) and the loss history."""
    cfg = config
    model = dist.unwrap(model)
    from surgery.diffusion.model import is_diffusion

    if is_diffusion(model):
        from surgery.unlearn.generation import unlearn_class

        return unlearn_class(model, cfg, forget, retain, mask, progress)
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
    opt, mask, mask_seconds = optimizer_over_mask(model, cfg, forget, mask, t0, progress)
    reference = reference_logprobs(model, forget, cfg.batch_size) if cfg.method == "npo" else None
    net = _data_parallel(model)  # after the optimizer fixed which parameters train
    gen = torch.Generator().manual_seed(cfg.seed)
    num_classes = None if lm else int(model(forget.floats(slice(0, 1)).to(_device(model))).shape[-1])
    history = []
    try:
        for epoch in tqdm(range(cfg.epochs), desc=f"unlearn[{cfg.method}]", disable=not progress or not dist.is_main(),
                          leave=False):
            if lm:
                model.train()
                logs = _lm_epoch(net, opt, cfg, forget, retain, reference, epoch)
            else:
                _train_mode(model, cfg.freeze_bn_stats)
                logs = _classifier_epoch(net, opt, cfg, forget, retain, epoch, gen, num_classes)
            history.append({"epoch": epoch + 1, **logs})
    finally:
        release(model)
    return UnlearnResult(cfg, mask, time.time() - t0, mask_seconds, opt.trainable, history)


def optimizer_over_mask(model: nn.Module, cfg: UnlearnConfig, forget: Any, mask: MaskSet | None, t0: float,
                        progress: bool) -> tuple[MaskedOptimizer | DenseOptimizer, MaskSet | None, float]:
    """The optimizer over what may move — the saliency mask's entries (the mask computed now unless
    given) or every weight — with the mask and the seconds its pass took (part of RTE)."""
    mask_seconds = 0.0
    if cfg.masked:
        if mask is None:
            mask = saliency_mask(model, forget, cfg, progress)
            mask_seconds = time.time() - t0
        mask.check_model(model)
    make = factory(cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
    return (MaskedOptimizer(model, mask, make) if cfg.masked else DenseOptimizer(model, make)), mask, mask_seconds


def _data_parallel(model: nn.Module) -> nn.Module:
    """DDP around a replicated model under torchrun (FSDP2 models already sync their gradients)."""
    if not dist.is_distributed() or any(is_dtensor(p) for p in model.parameters()):
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = _device(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _retrain(model: nn.Module, cfg: UnlearnConfig, retain: ImageSet | None, t0: float,
             progress: bool) -> UnlearnResult:
    from surgery.models.vision import build_vision
    from surgery.train import fit

    require(retain is not None, "retrain needs a retain set")
    require(not dist.is_distributed(), "retrain runs in one process (it trains a fresh model)")
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
