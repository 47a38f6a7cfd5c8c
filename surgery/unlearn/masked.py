"""Updates that move only the masked weights — and leave every other bit where it was.

Each masked tensor is trained through a flat copy of its selected entries: the optimizer (SGD with
momentum and weight decay, AdamW, anything) sees only those entries, keeps state only for them, and
after each step they are written back with `index_copy_`. Unselected entries are never written, so
they stay bit-identical under any optimizer — unlike masking gradients, where weight decay and
momentum still move them (the official SalUn code until February 2026).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

Factory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class MaskedOptimizer:
    """Optimizes only `masks`' True entries of `model`'s parameters; the rest of the model is frozen."""

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor], factory: Factory) -> None:
        self.entries: list[tuple[nn.Parameter, torch.Tensor, nn.Parameter]] = []
        params = dict(model.named_parameters())
        for name, p in params.items():
            mask = masks.get(name)
            p.requires_grad_(mask is not None and bool(mask.any()))
            if not p.requires_grad:
                continue
            idx = torch.nonzero(mask.reshape(-1).to(p.device)).flatten()
            flat = nn.Parameter(p.detach().reshape(-1).index_select(0, idx).clone())
            self.entries.append((p, idx, flat))
        self.optimizer = factory([flat for _, _, flat in self.entries])

    @property
    def trainable(self) -> int:
        return sum(flat.numel() for _, _, flat in self.entries)

    def zero_grad(self) -> None:
        for p, _, flat in self.entries:
            p.grad = None
            flat.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p, idx, flat in self.entries:
            if p.grad is not None:
                flat.grad = p.grad.reshape(-1).index_select(0, idx)
        self.optimizer.step()
        for p, idx, flat in self.entries:
            p.view(-1).index_copy_(0, idx, flat.detach())


class DenseOptimizer:
    """The same interface over all parameters (the unmasked methods)."""

    def __init__(self, model: nn.Module, factory: Factory) -> None:
        for p in model.parameters():
            p.requires_grad_(True)
        self.params = list(model.parameters())
        self.optimizer = factory(self.params)

    @property
    def trainable(self) -> int:
        return sum(p.numel() for p in self.params)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.optimizer.step()


def factory(name: str, lr: float, momentum: float, weight_decay: float) -> Factory:
    if name == "sgd":
        return lambda ps: torch.optim.SGD(list(ps), lr=lr, momentum=momentum, weight_decay=weight_decay)
    return lambda ps: torch.optim.AdamW(list(ps), lr=lr, weight_decay=weight_decay)
