"""Image data: CIFAR-10 from the JPEG-bytes npz, MNIST from its npz, scikit-learn digits.

Images are kept as uint8 `[N, C, H, W]` and turned into [0, 1] floats per batch (the models
normalise inside). `ImageSet.loader` yields `(x, y)` batches, with optional seeded shuffling and
CIFAR augmentation (random crop with 4-pixel padding, horizontal flip).
"""
from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from surgery.data.text import data_dir
from surgery.errors import SurgeryError, require


@dataclass
class ImageSet:
    """Images (uint8 [N, C, H, W]), integer labels and class names."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    scale: float = 255.0
    description: str = ""

    def __len__(self) -> int:
        return int(self.y.numel())

    def subset(self, index: torch.Tensor | np.ndarray | list[int]) -> ImageSet:
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return ImageSet(self.x[idx], self.y[idx], self.classes, self.scale,
                        f"{self.description}[subset {idx.numel()}]")

    def floats(self, idx: torch.Tensor | slice | None = None) -> torch.Tensor:
        x = self.x if idx is None else self.x[idx]
        return x.float().div_(self.scale)

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0,
               augment: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield `(float images, labels)` batches; one pass over the set."""
        require(len(self) > 0, f"empty image set {self.description!r}")
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle \
            else torch.arange(n)
        gen = torch.Generator().manual_seed(seed + 1)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x = self.floats(idx)
            if augment:
                x = crop_flip(x, gen)
            yield x, self.y[idx]


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, per image."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))
    out = padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(x.shape[1]).view(1, -1, 1, 1),
                 rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(offsets) - 1, 32, 32, 3), dtype=np.uint8)
    for i in range(len(offsets) - 1):
        img = Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB")
        out[i] = np.asarray(img)
    return out


def cifar10(split: str = "train", root: str | os.PathLike | None = None) -> ImageSet:
    """CIFAR-10 (`train` 50,000 / `test` 10,000) from `images/cifar10_jpeg_bytes.npz`."""
    require(split in ("train", "test"), f"CIFAR-10 split must be train or test, got {split!r}")
    path = data_dir(root) / "images" / "cifar10_jpeg_bytes.npz"
    require(path.is_file(), f"CIFAR-10 file not found: {path}")
    with np.load(path) as d:
        imgs = _decode_jpegs(d[f"{split}_jpeg"], d[f"{split}_offsets"])
        labels = d[f"{split}_labels"].astype(np.int64)
        classes = [str(c) for c in d["classes"]]
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
    return ImageSet(x, torch.from_numpy(labels), classes, description=f"cifar10/{split}")


def mnist(split: str = "train", root: str | os.PathLike | None = None) -> ImageSet:
    """MNIST (`train` 60,000 / `test` 10,000) from `images/mnist_uint8.npz`."""
    require(split in ("train", "test"), f"MNIST split must be train or test, got {split!r}")
    path = data_dir(root) / "images" / "mnist_uint8.npz"
    require(path.is_file(), f"MNIST file not found: {path}")
    with np.load(path) as d:
        x = torch.from_numpy(d[f"x_{split}"]).unsqueeze(1).contiguous()
        y = torch.from_numpy(d[f"y_{split}"].astype(np.int64))
    return ImageSet(x, y, [str(i) for i in range(10)], description=f"mnist/{split}")


def digits(split: str = "train", test_fraction: float = 0.25, seed: int = 0) -> ImageSet:
    """scikit-learn's bundled 8×8 digits (1,797 images, pixel values 0–16), split by a seed."""
    from sklearn.datasets import load_digits

    require(split in ("train", "test", "all"), f"digits split must be train, test or all, got {split!r}")
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    full = ImageSet(x, y, [str(i) for i in range(10)], scale=16.0, description="digits")
    if split == "all":
        return full
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(full)))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    out = full.subset(idx)
    out.description = f"digits/{split}"
    return out


def resize(data: ImageSet, size: int) -> ImageSet:
    """The same images at `size`×`size` (antialiased bilinear, kept as integers of the same scale):
    a smaller MNIST makes a diffusion model trainable on two cores."""
    require(size > 0, f"image size must be positive, got {size}")
    if data.x.shape[-1] == size and data.x.shape[-2] == size:
        return data
    out = []
    for start in range(0, len(data), 4096):
        x = data.x[start : start + 4096].float()
        out.append(F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                   .round_().clamp_(0, data.scale).to(torch.uint8))
    return ImageSet(torch.cat(out), data.y, data.classes, data.scale, f"{data.description}@{size}px")


def load_images(name: str, split: str, root: str | os.PathLike | None = None, size: int = 0) -> ImageSet:
    """`cifar10`, `mnist` or `digits` by name; `size` > 0 resizes to `size`×`size`."""
    loaders = {"cifar10": cifar10, "mnist": mnist}
    if name == "digits":
        data = digits(split)
    elif name not in loaders:
        raise SurgeryError(f"unknown image dataset {name!r}; known: cifar10, mnist, digits")
    else:
        data = loaders[name](split, root)
    return resize(data, size) if size else data
