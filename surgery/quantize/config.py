"""One config type per method (torchao's pattern): `RTNConfig`, `GPTQConfig`, `ApiQConfig`.

The shared scheme fields follow llm-compressor: `targets` (module class names or `re:` regexes on
module names), `ignore`, `num_bits`, `group_size`, `strategy` (`group` | `channel`). Calibration
(which windows, how many, how batched) is not part of a method's config: it is what `quantize`
is given.
"""
from __future__ import annotations

import dataclasses
from typing import Annotated, ClassVar, Literal

from pydantic import Field, Strict

from surgery.config import (
    Bool,
    Int,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    Str,
    config_class,
)
from surgery.errors import require

BITS = (2, 3, 4, 8)
STAGES = {"wpt": (0.0, 1.0), "mixedt": (1.0, 1.0), "opt": (1.0, 0.0)}  # (output-MSE a, λ factor)
Stage = tuple[Literal["wpt", "mixedt", "opt"], NonNegInt]


@config_class
class RTNConfig:
    """Round-to-nearest onto the grid (data-free).

    Attributes:
        num_bits: 2, 3, 4 or 8 (uniform asymmetric; the zero point lies inside the range).
        group_size: consecutive input columns per (row, group); a power of two. Ignored with
            `strategy: channel` (one group per row).
        targets / ignore: which block linears (class name `Linear` or `re:` regex on names); MoE
            routers are never quantized.
        group_rule: a layer whose input width `group_size` does not divide — `error` (default) or
            `channel` (that layer is quantized per channel; the export records it per layer).
    """

    method: ClassVar[str] = "rtn"
    num_bits: Literal[2, 3, 4, 8] = 4
    group_size: PosInt = 128
    strategy: Literal["group", "channel"] = "group"
    targets: list[Str] = dataclasses.field(default_factory=lambda: ["Linear"])
    ignore: list[Str] = dataclasses.field(default_factory=lambda: ["lm_head"])
    group_rule: Literal["error", "channel"] = "error"

    def __post_init__(self) -> None:
        g = self.group_size
        require(self.strategy == "channel" or g & (g - 1) == 0, f"group_size must be a power of two, got {g}")

    @property
    def label(self) -> str:
        gs = "ch" if self.strategy == "channel" else f"g{self.group_size}"
        return f"{self.method} W{self.num_bits}{gs}"


@config_class
class GPTQConfig(RTNConfig):
    """GPTQ (Frantar et al. 2022): `damp` (share of the mean Hessian diagonal), `act_order`,
    `static_groups` (each group's grid fixed on the original weights, as llm-compressor does;
    act-order implies it), `block_size` (columns per lazy-batch update)."""

    method: ClassVar[str] = "gptq"
    damp: Annotated[float, Strict(), Field(ge=0, lt=1)] = 0.01
    act_order: Bool = False
    static_groups: Bool = False
    block_size: PosInt = 128


@config_class
class SaliencyRegulariser:
    """λ_i·Σ F⊙(Q(W) − W)² beside ApiQ's block-output error (Cao & Aref 2025); off when `lam` is 0.

    Attributes:
        lam: λ; `multiplier`: λ_i = λ·multiplier^i for block i.
        target: `before_lora` (W_eff = Q(W), the paper code's default) or `after_lora`
            (W_eff = Q(W) + the LoRA delta).
        fisher_samples: calibration windows used for the Fisher F (default: all).
        fisher_batch_size: windows per backward pass of the Fisher; 1 sums per-sample squared
            gradients (the empirical Fisher, as SqueezeLLM's gradient tool computes it).
    """

    lam: NonNegFloat = 0.0
    multiplier: PosFloat = 1.0
    target: Literal["before_lora", "after_lora"] = "before_lora"
    fisher_samples: PosInt | None = None
    fisher_batch_size: PosInt = 1

    @property
    def enabled(self) -> bool:
        return self.lam > 0

    def lam_at(self, block: int) -> float:
        return self.lam * self.multiplier**block


@config_class
class ApiQConfig(RTNConfig):
    """ApiQ-bw (Liao et al. 2024): learnable weight clipping + LoRA trained block by block on the
    block-output MSE, quantized inputs fed forward, with the saliency regulariser as an option.

    Attributes:
        epochs / lr_lwc / lr_lora / wd_lwc / wd_lora / lora_rank / lora_alpha / seed: training.
        stages: `[name, epochs]` — `wpt` (weights only), `mixedt` (both), `opt` (output only).
            Default: `[[mixedt, epochs]]` with the regulariser on, else `[[opt, epochs]]`.
        saliency: the regulariser (see `SaliencyRegulariser`).
        merge_lora: fold each LoRA delta into its weight and put the sum back on the grid, so the
            export needs no adapter (it costs accuracy: measured in BENCHMARKS.md).
    """

    method: ClassVar[str] = "apiq"
    epochs: NonNegInt = 10
    lr_lwc: PosFloat = 5e-3
    lr_lora: PosFloat = 5e-4
    wd_lwc: NonNegFloat = 0.1
    wd_lora: NonNegFloat = 0.1
    lora_rank: NonNegInt = 8
    lora_alpha: PosFloat = 16.0
    seed: Int = 0
    stages: list[Stage] | None = None
    saliency: SaliencyRegulariser = dataclasses.field(default_factory=SaliencyRegulariser)
    merge_lora: Bool = False

    def stage_plan(self) -> list[tuple[str, int]]:
        if self.stages is None:
            return [("mixedt" if self.saliency.enabled else "opt", self.epochs)]
        return [(str(name), int(n)) for name, n in self.stages]

    @property
    def label(self) -> str:
        sal = f"+sal(λ={self.saliency.lam:g})" if self.saliency.enabled else ""
        gs = "ch" if self.strategy == "channel" else f"g{self.group_size}"
        return f"apiq{sal} W{self.num_bits}{gs}"


QuantConfig = RTNConfig | GPTQConfig | ApiQConfig
CONFIGS: dict[str, type] = {"rtn": RTNConfig, "gptq": GPTQConfig, "apiq": ApiQConfig}
