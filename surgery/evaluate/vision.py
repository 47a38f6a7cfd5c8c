"""Classifier quality: accuracy and per-sample true-label confidence."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from surgery.data.images import ImageSet
from surgery.errors import require


@torch.no_grad()
def predict_proba(model: nn.Module, data: ImageSet, batch_size: int = 512) -> torch.Tensor:
    """Softmax probabilities `[N, classes]` in eval mode."""
    require(len(data) > 0, f"empty image set {data.description!r}")
    model.eval()
    device = next(model.parameters()).device
    out = [F.softmax(model(x.to(device)).float(), dim=-1).cpu() for x, _ in data.loader(batch_size)]
    return torch.cat(out)


def accuracy(model: nn.Module, data: ImageSet, batch_size: int = 512) -> float:
    """Top-1 accuracy in percent."""
    probs = predict_proba(model, data, batch_size)
    return 100.0 * float((probs.argmax(-1) == data.y).double().mean())
