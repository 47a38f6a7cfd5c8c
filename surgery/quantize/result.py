"""What a quantization run leaves: each layer's grid (bits, group size, scale, zero point)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from surgery.quantize.config import QuantConfig
from surgery.quantize.lora import LoRALinear
from surgery.quantize.quantizer import QParams, quantize_int


@dataclass
class LayerQuant:
    """One layer's grid: codes q ∈ [0, 2^bits − 1], value = (q − zero)·scale, per (row, group)."""

    bits: int
    group_size: int
    scale: torch.Tensor  # [out, in/group]
    zero: torch.Tensor  # [out, in/group], integer-valued
    per_channel: bool = False  # quantized per row because asked, or as the group rule's fallback

    @property
    def qparams(self) -> QParams:
        return QParams(self.scale, self.zero)

    @property
    def scheme(self) -> str:
        return f"W{self.bits} " + ("per-channel" if self.per_channel else f"g{self.group_size}")

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """Integer codes of an on-grid weight (exact: the weight is (q − zero)·scale)."""
        return quantize_int(weight.detach().float(), self.bits, self.group_size,
                            QParams(self.scale.float(), self.zero.float()))


@dataclass
class QuantResult:
    config: QuantConfig
    layers: dict[str, LayerQuant] = field(default_factory=dict)
    history: dict[int, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def lora_modules(self, model: nn.Module) -> dict[str, LoRALinear]:
        return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}

    def lora_params(self, model: nn.Module) -> int:
        return sum(m.lora_A.numel() + m.lora_B.numel() for m in self.lora_modules(model).values())

    def quantized_weights(self) -> int:
        return sum(int(lq.scale.shape[0] * lq.scale.shape[1] * lq.group_size) for lq in self.layers.values())

    def theoretical_bits(self, scale_bits: int = 32) -> int:
        """Bits of codes + scales + zero points of the quantized layers."""
        total = 0
        for lq in self.layers.values():
            groups = lq.scale.numel()
            total += groups * lq.group_size * lq.bits + groups * (scale_bits + lq.bits)
        return total

    def schemes(self) -> dict[str, int]:
        """Layers per scheme as applied, e.g. {"W4 g128": 25, "W4 per-channel": 10}."""
        return dict(Counter(lq.scheme for lq in self.layers.values()).most_common())

    @property
    def label(self) -> str:
        """The method and the schemes as applied: "gptq W4 g128; W4 per-channel: 10 of 35 layers"."""
        counts = self.schemes()
        if not counts:
            return f"{self.config.method} (no layer)"
        main = next(iter(counts))
        name = self.config.label.split(" W")[0]
        rest = "; ".join(f"{k}: {v} of {len(self.layers)} layers" for k, v in list(counts.items())[1:])
        return f"{name} {main}" + (f"; {rest}" if rest else "")

    def summary(self) -> dict[str, Any]:
        return {"label": self.label, "requested": self.config.label, "layers": len(self.layers),
                "schemes": self.schemes(), "quantized_weights": self.quantized_weights(),
                "seconds": round(self.seconds, 2)}
