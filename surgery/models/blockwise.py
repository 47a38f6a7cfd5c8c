"""Layer-wise calibration plumbing (the GPTQ `Catcher` idea): capture what the model feeds its
decoder blocks, then replay blocks one at a time on those inputs.

One pass per calibration batch runs the embeddings and records, for every block, the keyword
arguments it receives (rotary embeddings, masks): they differ between blocks in models that mix
sliding-window and global attention (Gemma 2/3, Qwen). The blocks themselves do not run during the
capture: each block's forward is swapped for a recorder that passes the hidden states through.
Block inputs are kept once per batch (optionally on CPU); kwargs are shared tensors, not copies.

Sequential onloading (llm-compressor's pipeline): the model stays where it was loaded (CPU,
memory-mapped from safetensors); `onloaded` moves one block — or the modules around the blocks — to
the compute device for its work and back; `rebind` points a finished block's parameters at the
tensors of a committed checkpoint file (memory-mapped), so its copy in anonymous memory is freed.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from surgery.errors import require
from surgery.models.adapters import DecoderAdapter

_DROP = ("past_key_values", "past_key_value", "cache")


class _Caught(Exception):
    """Raised by the last block's recorder: nothing after the blocks needs to run."""


@dataclass
class BlockInputs:
    """Per calibration batch: the hidden states entering block `layer`, and every block's kwargs."""

    hidden: list[torch.Tensor]
    layer_kwargs: list[list[dict[str, Any]]]  # [block][batch]
    layer: int = 0

    def __len__(self) -> int:
        return len(self.hidden)

    @property
    def kwargs(self) -> list[dict[str, Any]]:
        """The kwargs block `layer` receives, per batch."""
        return self.layer_kwargs[self.layer]

    @property
    def tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)

    def with_hidden(self, hidden: list[torch.Tensor], layer: int | None = None) -> BlockInputs:
        return BlockInputs(hidden, self.layer_kwargs, self.layer if layer is None else layer)

    def at(self, layer: int) -> BlockInputs:
        return self.with_hidden(self.hidden, layer)


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def module_device(module: nn.Module) -> torch.device:
    return next(iter(module.parameters()), torch.empty(0)).device


@contextmanager
def onloaded(modules: nn.Module | list[nn.Module], device: torch.device | None) -> Iterator[None]:
    """`modules` on `device` inside the block, back on their own devices after (a no-op without a
    device or when they are there already)."""
    mods = modules if isinstance(modules, list) else [modules]
    homes = [module_device(m) for m in mods]
    moving = device is not None and any(h != torch.device(device) for h in homes)
    if moving:
        for m in mods:
            m.to(device)
    try:
        yield
    finally:
        if moving:
            for m, h in zip(mods, homes):
                m.to(h)


def outer_modules(adapter: DecoderAdapter) -> list[nn.Module]:
    """What runs before the blocks (embeddings, rotary embeddings) and after them (final norm, head)."""
    outer = [m for name, m in adapter.decoder.named_children() if name != "layers"]
    head = adapter.lm_head
    return outer + ([head] if head is not None else [])


def rebind(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Make `module`'s parameters and buffers the given tensors (no copy: memory-mapped tensors stay
    file-backed), by state-dict name."""
    module.load_state_dict(tensors, strict=True, assign=True)
    for p in module.parameters():
        p.requires_grad_(False)


@torch.no_grad()
def capture_block_inputs(adapter: DecoderAdapter, batches: Iterable[torch.Tensor], offload: bool = False,
                         device: torch.device | None = None) -> BlockInputs:
    """Run the embeddings for each batch of token ids (on `device` when given); keep block 0's hidden
    states and every block's kwargs."""
    with onloaded(outer_modules(adapter), device):
        return _capture(adapter, batches, offload)


def _capture(adapter: DecoderAdapter, batches: Iterable[torch.Tensor], offload: bool) -> BlockInputs:
    model = adapter.model
    device = adapter.embed_tokens.weight.device
    layers = adapter.layers
    hidden: list[torch.Tensor] = []
    kwargs: list[list[dict[str, Any]]] = [[] for _ in layers]

    def recorder(i: int):
        def forward(hidden_states: torch.Tensor, *args: Any, **kw: Any) -> torch.Tensor:
            require(not args, "decoder blocks must take their extra inputs as keyword arguments")
            if i == 0:
                hidden.append(hidden_states.detach().to("cpu" if offload else hidden_states.device))
            kw = {k: v for k, v in kw.items() if k not in _DROP}
            kw["use_cache"] = False
            kwargs[i].append(kw)
            if i == len(layers) - 1:
                raise _Caught
            return hidden_states
        return forward

    for i, layer in enumerate(layers):
        layer.forward = recorder(i)
    try:
        for batch in batches:
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _Caught:
                pass
    finally:
        for layer in layers:
            del layer.forward  # back to the class's forward
    require(len(hidden) > 0, "empty calibration data: no batch to capture")
    return BlockInputs(hidden, kwargs, 0)


def block_forward(block: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """One block on one batch (inputs moved to the block's device)."""
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
