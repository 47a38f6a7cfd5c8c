"""Train a reference image classifier: SGD with Nesterov momentum and a one-cycle schedule."""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from surgery.data.images import ImageSet, load_images
from surgery.errors import require
from surgery.evaluate.vision import accuracy
from surgery.models.vision import build_vision
from surgery.reference.specs import DiffusionSpec, VisionSpec
from surgery.train import fit


def vision_data(spec: VisionSpec | DiffusionSpec, root: str | os.PathLike | None) -> tuple[ImageSet, ImageSet]:
    """(train, test) as the spec defines them: the fixed subset (if any), then excluded classes /
    indices (into that subset) removed."""
    train = load_images(spec.dataset, "train", root, spec.image_size)
    test = load_images(spec.dataset, "test", root, spec.image_size)
    if getattr(spec, "train_subset", 0):
        require(spec.train_subset <= len(train), f"train_subset {spec.train_subset} exceeds {len(train)} images")
        train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: spec.train_subset])
    keep = torch.ones(len(train), dtype=torch.bool)
    for c in spec.exclude_classes:
        require(0 <= c < len(train.classes), f"class {c} does not exist in {spec.dataset}")
        keep &= train.y != c
    if getattr(spec, "exclude_index_file", ""):
        drop = torch.from_numpy(np.load(spec.exclude_index_file).astype(np.int64))
        keep[drop] = False
    if not bool(keep.all()):
        train = train.subset(torch.nonzero(keep).flatten())
    if spec.exclude_classes:
        test = test.subset(torch.nonzero(~torch.isin(test.y, torch.tensor(spec.exclude_classes))).flatten())
    return train, test


def train_vision(spec: VisionSpec, root: str | os.PathLike | None,
                 progress: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    t0 = time.time()
    train, test = vision_data(spec, root)
    torch.manual_seed(spec.seed)
    model = build_vision({**spec.arch, "num_classes": len(train.classes)})
    fit(model, train, spec.epochs, spec.batch_size, spec.lr, spec.weight_decay, spec.augment,
        spec.seed, progress)
    seconds = time.time() - t0
    quality = {"test_acc": accuracy(model, test), "train_acc": accuracy(model, train)}
    return model, {"train_samples": len(train), "test_samples": len(test),
                   "build_seconds": round(seconds, 1), "quality": quality}
