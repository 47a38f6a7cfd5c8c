"""Updates that move only the masked weights — and leave every other bit where it was.

Each masked tensor is trained through a flat copy of its selected entries: the optimizer (SGD with
momentum and weight decay, AdamW, anything) sees only those entries, keeps state only for them, and
after each step they are written back with `index_copy_`. Unselected entries are never written, so
they stay bit-identical under any optimizer — unlike masking gradients, where weight decay and
momentum still move them (the official SalUn code until February 2026).

Under FSDP2 each rank trains its own rows of every parameter (the mask sharded like the weights:
a sharded mask is used as is, a whole one is cut to the rank's rows) and writes them back into its
local shard; under DDP every rank holds whole tensors and the averaged gradients keep them equal.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from surgery import dist
from surgery.shards import local, row_shard

Factory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class MaskedOptimizer:
    """Optimizes only `masks`' True entries of `model`'s parameters; the rest of the model is frozen."""

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor], factory: Factory) -> None:
        self.entries: list[tuple[nn.Parameter, torch.Tensor, nn.Parameter]] = []
        params = dict(dist.unwrap(model).named_parameters())
        names = [n for n in params if n in masks]
        parts = {n: _local_mask(masks, n, params[n]) for n in names}
        selected = torch.tensor([int(parts[n].sum()) for n in names], dtype=torch.int64)
        self.sharded = any(row_shard(params[n]) is not None for n in names)
        if self.sharded:
            dist.all_reduce_sum_(selected)  # every rank must agree on which parameters train
        self._trainable = int(selected.sum())
        active = {n for n, c in zip(names, selected.tolist()) if c > 0}
        for name, p in params.items():
            p.requires_grad_(name in active)
            if name not in active:
                continue
            idx = torch.nonzero(parts[name].reshape(-1).to(local(p).device)).flatten()
            flat = nn.Parameter(local(p).detach().reshape(-1).index_select(0, idx).clone())
            self.entries.append((p, idx, flat))
        self.optimizer = factory([flat for _, _, flat in self.entries])

    @property
    def trainable(self) -> int:
        """Weights that train, over every rank's shards."""
        return self._trainable

    def zero_grad(self) -> None:
        for p, _, flat in self.entries:
            p.grad = None
            flat.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p, idx, flat in self.entries:
            if p.grad is not None:
                flat.grad = local(p.grad).reshape(-1).index_select(0, idx)
        self.optimizer.step()
        for p, idx, flat in self.entries:
            local(p).view(-1).index_copy_(0, idx, flat.detach())


def _local_mask(masks: Mapping[str, torch.Tensor], name: str, p: torch.Tensor) -> torch.Tensor:
    """The mask rows matching the parameter's local shard."""
    shard = row_shard(p)
    if hasattr(masks, "local"):  # a MaskSet knows whether it is sharded already
        return masks.local(name, shard)
    return masks[name] if shard is None else shard.take(masks[name])


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


def release(model: nn.Module) -> None:
    """After training: eval mode, every weight trainable again, no gradients left behind."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None


def factory(name: str, lr: float, momentum: float, weight_decay: float) -> Factory:
    if name == "sgd":
        return lambda ps: torch.optim.SGD(list(ps), lr=lr, momentum=momentum, weight_decay=weight_decay)
    return lambda ps: torch.optim.AdamW(list(ps), lr=lr, weight_decay=weight_decay)
