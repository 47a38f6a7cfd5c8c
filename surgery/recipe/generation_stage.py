"""The unlearn stage for a class-conditional diffusion model: forget one class, measure the
generator before and after (judge-scored samples, held-out diffusion losses), write a sample grid."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgery.data.images import ImageSet, load_images
from surgery.diffusion.model import image_shape
from surgery.diffusion.process import diffusion_loss
from surgery.recipe.schema import Stage
from surgery.unlearn import unlearn
from surgery.unlearn.generation import noised_batches
from surgery.unlearn.splits import class_split, save_split

Writer = Any


@torch.no_grad()
def heldout_loss(model: nn.Module, data: ImageSet, seed: int = 0, batches: int = 8) -> float:
    """Mean diffusion loss on held-out images (fixed noise and timesteps: comparable across models)."""
    device = next(model.parameters()).device
    vals = [float(diffusion_loss(model, {k: v.to(device) for k, v in b.items()}))
            for b in noised_batches(data, 128, seed, model, limit=batches)]
    return sum(vals) / len(vals)


def run(net: nn.Module, stage: Stage, data_dir: str | None, progress: bool) -> tuple[dict[str, Any], list[Writer]]:
    cfg, d = stage.config, stage.spec.data
    size = image_shape(net)[-1]
    train = load_images(d.images, "train", data_dir, size)
    test = load_images(d.images, "test", data_dir, size)
    f, r = class_split(train, d.forget_class)
    forget, retain = train.subset(f), train.subset(r)
    test_f, test_r = (test.subset(torch.nonzero(m).flatten()) for m in (test.y == d.forget_class, test.y != d.forget_class))
    judge = _judge(d.judge, data_dir) if d.judge else None

    def measure() -> tuple[dict[str, float], Any]:
        out = {"loss_forget": heldout_loss(net, test_f), "loss_retain": heldout_loss(net, test_r)}
        rep = None
        if judge is not None:
            from surgery.evaluate.generation import generation_metrics

            rep = generation_metrics(net, judge, d.forget_class, test, 5 * d.samples_per_class, d.samples_per_class,
                                     d.sampling_steps, d.guidance, seed=cfg.seed)
            out.update(UA=rep.UA, retain_acc=rep.retain_acc, feature_fid=rep.feature_fid)
        return out, rep

    before, rep_before = measure()
    result = unlearn(net, cfg, forget, retain, progress=progress)
    after, rep_after = measure()
    meta = {"mode": "class", "forget_class": d.forget_class}
    writers: list[Writer] = [lambda folder: save_split(folder / "forget_split.npz", f, r, dataset=d.images, **meta)]
    if result.mask is not None:
        writers.append(lambda folder: result.mask.save(folder / "mask.safetensors", packed=True))
    if rep_after is not None:
        from surgery.evaluate.generation import save_grid

        def grid(folder: Path) -> None:
            save_grid([rep_before.forget_images, rep_after.forget_images, *rep_after.retain_images],
                      folder / "samples.png")
        writers.append(grid)
    metrics = {"stage": stage.name, "modifier": stage.modifier, "method": cfg.method, "masked": cfg.masked,
               "before": before, "after": after, "rte_seconds": round(result.seconds, 2),
               "mask_seconds": round(result.mask_seconds, 2), "trainable": result.trainable}
    if rep_after is not None:
        metrics["per_class_acc"] = {"before": rep_before.summary()["per_class_acc"],
                                    "after": rep_after.summary()["per_class_acc"]}
        metrics["samples"] = "samples.png: row 1 the forgotten class before, row 2 after, then one row per retained class"
    return metrics, writers


def _judge(source: str, data_dir: str | None) -> nn.Module:
    from surgery.models.io import load_model
    from surgery.reference.resolve import resolve_model

    from surgery.errors import require

    model, _ = load_model(resolve_model(source, data_dir))
    require(getattr(model, "surgery_config", None) is not None,
            f"judge {source!r} is not an image classifier (a surgery vision model)")
    return model.eval()
