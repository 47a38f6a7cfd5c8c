"""The unlearn stage of a recipe: build the forget / retain data, unlearn, measure before and after."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgery.data.images import load_images
from surgery.data.windows import calib_windows, eval_windows, tokenize
from surgery.errors import require
from surgery.evaluate import perplexity
from surgery.recipe.schema import Stage
from surgery.unlearn import unlearn
from surgery.unlearn.metrics import classifier_metrics
from surgery.unlearn.splits import class_split, random_split, save_split

Writer = Callable[[Path], None]


def run(net: nn.Module, tok: Any, stage: Stage, text: Callable[[str], str], data_dir: str | None,
        progress: bool) -> tuple[dict[str, Any], list[Writer]]:
    """Unlearn in place; return the stage's metrics and the writers of its files (mask, split)."""
    cfg, d = stage.config, stage.spec.data
    writers: list[Writer] = []
    windows: dict[str, int] | None = None  # language models: how many forget / retain windows
    from surgery.diffusion.model import is_diffusion

    if is_diffusion(net):
        from surgery.recipe.generation_stage import run as run_generation

        return run_generation(net, stage, data_dir, progress)
    if d.images is not None:
        train = load_images(d.images, "train", data_dir)
        test = load_images(d.images, "test", data_dir)
        if d.forget_class is not None:
            f, r = class_split(train, d.forget_class)
            test = test.subset(torch.nonzero(test.y != d.forget_class).flatten())
            meta = {"mode": "class", "forget_class": d.forget_class}
        else:
            f, r = random_split(train, d.forget_fraction, d.split_seed)
            meta = {"mode": "random", "forget_fraction": d.forget_fraction, "split_seed": d.split_seed}
        forget, retain = train.subset(f), train.subset(r)
        before = classifier_metrics(net, forget, retain, test)
        result = unlearn(net, cfg, forget, retain, progress=progress)
        after = classifier_metrics(net, forget, retain, test)
        writers.append(lambda folder: save_split(folder / "forget_split.npz", f, r, dataset=d.images, **meta))
    else:
        require(tok is not None, "the model has no tokenizer; cannot read the forget text")
        seqlen = d.seqlen
        forget = eval_windows(tokenize(tok, text(d.forget)), seqlen, d.max_windows)
        retain_ids = tokenize(tok, text(d.retain))
        per_forget = d.retain_per_forget  # retain windows per forget window
        retain = calib_windows(retain_ids, per_forget * forget.shape[0], seqlen, cfg.seed)
        held = calib_windows(retain_ids, min(32, forget.shape[0]), seqlen, cfg.seed + 1)

        def measure() -> dict[str, float]:
            return {"ppl_forget": perplexity(net, forget), "ppl_retain": perplexity(net, held)}

        before = measure()
        result = unlearn(net, cfg, forget, retain, progress=progress)
        after = measure()
        windows = {"forget": forget.shape[0], "retain": retain.shape[0]}
    if result.mask is not None:
        writers.append(lambda folder: result.mask.save(folder / "mask.safetensors", packed=True))
    metrics = {"stage": stage.name, "modifier": stage.modifier, "method": cfg.method, "masked": cfg.masked,
               "before": before, "after": after, "rte_seconds": round(result.seconds, 2),
               "mask_seconds": round(result.mask_seconds, 2), "trainable": result.trainable}
    if windows:
        metrics["windows"] = windows
    return metrics, writers
