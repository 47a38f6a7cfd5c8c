"""`QuantConfig`: one dataclass for every quantization method, validated on construction.

Vocabulary follows llm-compressor where it fits: `targets` (module class names or `re:` regexes
over module names), `ignore`, `num_bits`, `group_size`, `strategy` (`group` | `channel`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from surgery.errors import SurgeryError, require
from surgery.quantize.quantizer import BITS

METHODS = ("rtn", "gptq", "apiq")
STAGES = {"wpt": (0.0, 1.0), "mixedt": (1.0, 1.0), "opt": (1.0, 0.0)}  # (output-MSE a, λ factor)
GROUP_RULES = ("error", "channel")


@dataclass
class QuantConfig:
    """How to quantize the decoder-block linear layers of a model.

    Attributes:
        method: `rtn`, `gptq` or `apiq`.
        num_bits: 2, 3, 4 or 8 (uniform asymmetric, zero point inside the range).
        group_size: consecutive input columns per (row, group); a power of two. Ignored for
            `strategy="channel"` (one group per row).
        targets / ignore: which block linears (class name `Linear` or `re:` regex on names).
        group_rule: a layer whose input width `group_size` does not divide — `error` (default)
            or `channel` (quantize that layer per channel and record it in the export).
        nsamples / seqlen / batch_size / seed: calibration windows and how they are batched.
        damp / act_order / static_groups / block_size: GPTQ (1 % damping; `static_groups` fixes
            each group's grid on the original weights, as llm-compressor does; act-order implies it).
        epochs / lr_lwc / lr_lora / wd_lwc / wd_lora / lora_rank / lora_alpha: ApiQ-bw.
        saliency_lambda: λ of the Fisher regulariser λ_i·Σ F⊙(Q(W) − W)²; 0 = plain ApiQ.
        saliency_multiplier: λ_i = λ·multiplier^i for block i.
        reg_target: `before_lora` (W_eff = Q(W), the paper code's default) or `after_lora`
            (W_eff = Q(W) + LoRA delta).
        stages: ApiQ training stages `[name, epochs]` — `wpt` (weights only), `mixedt` (both),
            `opt` (output only). Default: `[["mixedt", epochs]]`.
        fisher_samples: calibration windows used for the Fisher (default: all).
        fisher_batch_size: windows per backward pass of the Fisher; 1 sums per-sample squared
            gradients (the empirical Fisher, as SqueezeLLM's gradient tool computes it).
        offload: keep block inputs on CPU (for a model on an accelerator).
        resume_dir: checkpoint every finished block there; a rerun resumes after the last one.
    """

    method: str = "rtn"
    num_bits: int = 4
    group_size: int = 128
    strategy: str = "group"
    targets: list[str] = field(default_factory=lambda: ["Linear"])
    ignore: list[str] = field(default_factory=lambda: ["lm_head"])
    group_rule: str = "error"
    nsamples: int = 128
    seqlen: int = 256
    batch_size: int = 8
    seed: int = 0
    damp: float = 0.01
    act_order: bool = False
    static_groups: bool = False
    block_size: int = 128
    epochs: int = 10
    lr_lwc: float = 5e-3
    lr_lora: float = 5e-4
    wd_lwc: float = 0.1
    wd_lora: float = 0.1
    lora_rank: int = 8
    lora_alpha: float = 16.0
    saliency_lambda: float = 0.0
    saliency_multiplier: float = 1.0
    reg_target: str = "before_lora"
    stages: list[list[Any]] | None = None
    fisher_samples: int | None = None
    fisher_batch_size: int = 1
    offload: bool = False
    resume_dir: str | None = None

    def __post_init__(self) -> None:
        require(self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}")
        require(self.num_bits in BITS, f"num_bits must be one of {BITS}, got {self.num_bits}")
        require(self.strategy in ("group", "channel"),
                f"strategy must be group or channel, got {self.strategy!r}")
        if self.strategy == "group":
            g = self.group_size
            require(isinstance(g, int) and g > 0 and g & (g - 1) == 0,
                    f"group_size must be a power of two, got {g}")
        require(self.group_rule in GROUP_RULES, f"group_rule must be one of {GROUP_RULES}")
        require(self.nsamples > 0 and self.seqlen > 1 and self.batch_size > 0,
                "nsamples, seqlen and batch_size must be positive")
        require(0 <= self.damp < 1, f"damp must be in [0, 1), got {self.damp}")
        require(self.lora_rank >= 0, "lora_rank must be ≥ 0")
        require(self.saliency_lambda >= 0, "saliency_lambda must be ≥ 0")
        require(self.reg_target in ("before_lora", "after_lora"),
                f"reg_target must be before_lora or after_lora, got {self.reg_target!r}")
        for st in self.stage_plan():
            require(st[0] in STAGES, f"unknown stage {st[0]!r}; stages are {sorted(STAGES)}")
            require(int(st[1]) >= 0, f"stage {st[0]} needs epochs ≥ 0")

    def stage_plan(self) -> list[tuple[str, int]]:
        if self.stages is None:
            return [("mixedt" if self.saliency_lambda > 0 else "opt", self.epochs)]
        out = []
        for st in self.stages:
            require(isinstance(st, (list, tuple)) and len(st) == 2,
                    f"each stage is [name, epochs], got {st!r}")
            out.append((str(st[0]), int(st[1])))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        """Strict: an unknown key is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SurgeryError(f"unknown quantization option(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as e:
            raise SurgeryError(f"bad quantization config: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes the result (not where checkpoints go)."""
        d = self.to_dict()
        d.pop("resume_dir")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        gs = "ch" if self.strategy == "channel" else f"g{self.group_size}"
        sal = f"+sal(λ={self.saliency_lambda:g})" if self.method == "apiq" and self.saliency_lambda else ""
        return f"{self.method}{sal} W{self.num_bits}{gs}"
