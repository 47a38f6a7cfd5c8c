"""Modules ApiQ trains and leaves behind.

`QuantLoRALinear` (training): frozen weight seen through the LWC quantizer, plus a LoRA adapter and
an optional Fisher tensor for the saliency regulariser. While training, Q(W) and its autograd
intermediates (several weight-sized tensors per layer) are recomputed in the backward pass instead
of kept from the forward (activation checkpointing over the weight, not the activations): a block
then holds one layer's quantizer temporaries at a time, not all of them.

`LoRALinear` (result): an `nn.Linear` whose weight is already on the quantization grid, plus the
trained adapter, in PEFT's convention y = x Wᵀ + (α/r)·B(A x).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from surgery.quantize.quantizer import LWC_INIT, QParams, fake_quant, qparams


class QuantLoRALinear(nn.Module):
    """A linear layer under training: Q(W; γ, β) + LoRA, W frozen."""

    def __init__(self, base: nn.Linear, bits: int, group_size: int, rank: int, alpha: float,
                 fisher: torch.Tensor | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.bits, self.group_size = bits, group_size
        self.in_features, self.out_features = base.in_features, base.out_features
        # frozen and never written: the base's storage (memory-mapped or onloaded), not a copy
        self.weight = nn.Parameter(base.weight.detach(), requires_grad=False)
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach(), requires_grad=False)
        shape = (base.out_features, base.in_features // group_size)
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.gamma = nn.Parameter(torch.full(shape, LWC_INIT, **like))
        self.beta = nn.Parameter(torch.full(shape, LWC_INIT, **like))
        self.rank = rank
        self.scaling = alpha / rank if rank else 0.0
        if rank:
            self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **like))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)  # PEFT's default
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **like))
        self.register_buffer("fisher", fisher, persistent=False)

    def qweight(self) -> torch.Tensor:
        return fake_quant(self.weight, self.bits, self.group_size, self.gamma, self.beta)

    def _quantized_linear(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.qweight(), self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _recomputed(self._quantized_linear, x)
        if self.rank:
            y = y + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling
        return y

    def effective_weight(self, after_lora: bool = False) -> torch.Tensor:
        """Q(W), or Q(W) + (α/r)·BA (the weight the layer applies, LoRA included)."""
        w = self.qweight()
        if after_lora and self.rank:
            w = w + self.scaling * (self.lora_B @ self.lora_A)
        return w

    def regulariser(self, after_lora: bool = False) -> torch.Tensor:
        """Σ F⊙(W_eff − W)² (plain squared distance without a Fisher tensor).

        `after_lora=False` (the paper code's default, `before_lora`): W_eff = Q(W), so only the
        clipping parameters feel it; `True`: W_eff includes the LoRA delta.
        """
        return _recomputed(self._regulariser, after_lora)

    def _regulariser(self, after_lora: bool) -> torch.Tensor:
        d = (self.effective_weight(after_lora) - self.weight) ** 2
        return (d * self.fisher).sum() if self.fisher is not None else d.sum()

    def lwc_parameters(self) -> list[nn.Parameter]:
        return [self.gamma, self.beta]

    def lora_parameters(self) -> list[nn.Parameter]:
        return [self.lora_A, self.lora_B] if self.rank else []

    @torch.no_grad()
    def finalize(self, merge: bool = False) -> tuple[nn.Linear, QParams]:
        """The trained layer as a plain (or LoRA) linear with on-grid weights, and its grid.

        With `merge`, the LoRA delta is added to Q(W) and the sum is rounded back onto the same
        grid: a plain linear, no adapter.
        """
        qp = qparams(self.weight, self.bits, self.group_size, self.gamma, self.beta)
        w = fake_quant(self.weight, self.bits, self.group_size, qp=qp)
        keep_lora = self.rank > 0 and not merge
        if self.rank and merge:
            w = fake_quant(w + self.scaling * (self.lora_B @ self.lora_A), self.bits, self.group_size, qp=qp)
        like = {"device": w.device, "dtype": w.dtype}
        layer = LoRALinear(self.in_features, self.out_features, self.bias is not None, self.rank,
                           self.scaling, **like) if keep_lora else \
            nn.Linear(self.in_features, self.out_features, self.bias is not None, **like)
        layer.weight.copy_(w)
        if self.bias is not None:
            layer.bias.copy_(self.bias)
        if keep_lora:
            layer.lora_A.copy_(self.lora_A)
            layer.lora_B.copy_(self.lora_B)
        return layer, QParams(qp.scale.detach(), qp.zero.detach())


def _recomputed(fn, *args):
    """fn(*args), its intermediates recomputed in the backward pass when autograd records."""
    if not torch.is_grad_enabled():
        return fn(*args)
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)


class LoRALinear(nn.Linear):
    """nn.Linear plus a LoRA adapter (PEFT convention); `weight` is the quantized base weight."""

    def __init__(self, in_features: int, out_features: int, bias: bool, rank: int, scaling: float,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.rank, self.scaling = rank, scaling
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling
