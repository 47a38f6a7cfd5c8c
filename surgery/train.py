"""The supervised training loop that both reference classifiers and the Retrain baseline use."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from surgery.data.images import ImageSet


def fit(model: torch.nn.Module, train: ImageSet, epochs: int, batch_size: int, lr: float,
        weight_decay: float, augment: bool, seed: int, progress: bool = True) -> None:
    """Train in place: SGD(0.9, Nesterov), one-cycle LR, cross-entropy."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=weight_decay)
    steps = epochs * ((len(train) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.25)
    bar = tqdm(total=steps, desc="train-vision", disable=not progress, dynamic_ncols=True)
    device = next(model.parameters()).device
    model.train()
    for epoch in range(epochs):
        for x, y in train.loader(batch_size, shuffle=True, seed=seed * 1000 + epoch, augment=augment):
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
