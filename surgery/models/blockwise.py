"""Layer-wise calibration plumbing (the GPTQ `Catcher` idea): capture what the model feeds its first
decoder block, then replay blocks one at a time on those inputs.

Block inputs are kept once per calibration batch (optionally on CPU), never once per layer; the
keyword arguments (rotary position embeddings, masks) are shared by every block.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from surgery.errors import require
from surgery.models.adapters import DecoderAdapter


class _Caught(Exception):
    """Raised by the capture hook to stop the forward pass after block 0's inputs are seen."""


@dataclass
class BlockInputs:
    """Per calibration batch: the hidden states entering a block, and the block's kwargs."""

    hidden: list[torch.Tensor]
    kwargs: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.hidden)

    @property
    def tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)

    def with_hidden(self, hidden: list[torch.Tensor]) -> BlockInputs:
        return BlockInputs(hidden, self.kwargs)


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


@torch.no_grad()
def capture_block_inputs(adapter: DecoderAdapter, batches: Iterable[torch.Tensor],
                         offload: bool = False) -> BlockInputs:
    """Run the embeddings for each batch of token ids and keep what block 0 receives."""
    model = adapter.model
    device = next(model.parameters()).device
    store = BlockInputs([], [])

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kw = {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values", "past_key_value")}
        kw["use_cache"] = False
        store.hidden.append(hidden.detach().to("cpu" if offload else hidden.device))
        store.kwargs.append(kw)
        raise _Caught

    handle = adapter.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _Caught:
                pass
    finally:
        handle.remove()
    require(len(store) > 0, "empty calibration data: no batch to capture")
    return store


def block_forward(block: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """One block on one batch (hidden moved to the block's device)."""
    device = next(block.parameters()).device
    out = block(hidden.to(device), **_to(kwargs, device))
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs, offload: bool = False) -> list[torch.Tensor]:
    """The block's outputs for every calibration batch (kept on CPU with `offload`)."""
    outs = []
    for h, kw in zip(inputs.hidden, inputs.kwargs):
        o = block_forward(block, h, kw)
        outs.append(o.to("cpu") if offload else o)
    return outs
