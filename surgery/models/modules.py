"""Swapping a submodule of a model by its dotted name."""
from __future__ import annotations

from torch import nn


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace `model.<name>` by `module`."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
