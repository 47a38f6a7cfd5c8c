"""FSDP2 for the models surgery loads: each decoder block its own shard group, then the root.

Every rank loads the model (memory-mapped from safetensors), then `fully_shard` turns each
parameter into a row-sharded DTensor on the rank's device, so the gradients the scorer and the
unlearning optimizer see are 1/world of the model per rank.
"""
from __future__ import annotations

import torch
from torch import nn

from surgery import dist
from surgery.errors import require
from surgery.models.adapters import DecoderAdapter, is_language_model


def shard_model(model: nn.Module, device: torch.device | None = None) -> nn.Module:
    """Shard `model` in place with FSDP2 over every rank (a 1-D mesh); needs a process group."""
    require(dist.is_distributed(), "FSDP sharding needs several processes: launch with torchrun")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = device or next(model.parameters()).device
    model.to(device)
    mesh = init_device_mesh(device.type, (dist.world_size(),))
    if is_language_model(model):
        for layer in DecoderAdapter(model).layers:
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model
