"""Forget / retain splits: a whole class, or a seeded random subset; saved so they reproduce."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from surgery.data.images import ImageSet
from surgery.errors import require
from surgery.io import atomic_path


def class_split(data: ImageSet, cls: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(forget, retain) indices: every sample of class `cls` is forgotten."""
    require(0 <= cls < len(data.classes), f"forget class {cls} does not exist in {data.description or 'the data'} "
            f"(classes 0..{len(data.classes) - 1})")
    forget = torch.nonzero(data.y == cls).flatten()
    require(forget.numel() > 0, f"empty forget set: no sample of class {cls}")
    return forget, torch.nonzero(data.y != cls).flatten()


def random_split(data: ImageSet, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(forget, retain) indices: a uniformly drawn `fraction` of the samples is forgotten."""
    require(0 < fraction < 1, f"forget fraction must be in (0, 1), got {fraction}")
    n = len(data)
    k = int(round(fraction * n))
    require(k > 0, f"empty forget set: {fraction} of {n} samples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[perm[:k]] = True
    return torch.nonzero(mask).flatten(), torch.nonzero(~mask).flatten()


def save_split(path: str | os.PathLike, forget: torch.Tensor, retain: torch.Tensor, **meta: object) -> None:
    """`forget_indices.npz`-style file (forget, retain) plus the JSON description beside it."""
    p = Path(path)
    with atomic_path(p) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, forget=forget.numpy(), retain=retain.numpy())
    with atomic_path(p.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({**meta, "forget": int(forget.numel()), "retain": int(retain.numel())}, indent=2))


def load_split(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(path) as d:
        return torch.from_numpy(d["forget"]), torch.from_numpy(d["retain"])
