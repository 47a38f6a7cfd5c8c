"""`PruneConfig` and its `SearchConfig`: Týr-style structural pruning, validated on construction."""
from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from pydantic import Field, Strict

from surgery.config import Bool, Int, PosInt, Unit, config_class
from surgery.errors import require

Fraction = Annotated[float, Strict(), Field(gt=0, le=1)]


@config_class
class SearchConfig:
    """The evolutionary search (EvoPress / Týr (1+λ) scheme).

    Attributes:
        generations / offspring: per iteration.
        survivors / stage_windows: multi-stage selection — every child is scored on
            `stage_windows[0]` windows, the best `survivors[0]` on `stage_windows[1]`, ..., the
            finalists and the parent on `stage_windows[-1]`. What matters is the tokens scored per
            comparison, not the pool size: on stories260K (256-token windows) stages of 8 / 32 / 128
            windows gave a better model at 50 % than 2 / 8 / 32 (and an equal one at 25 %), where a
            512-window pool with the default stages did not (BENCHMARKS.md); scale the stages up when
            windows are short.
        top_k: dense logits kept for the KL fitness.
        prescreen: evaluate only this share of the offspring (lowest saliency cost) with KL; 1.0
            turns pre-screening off.
        resample: each selection stage of each generation draws its windows at random from the
            fitness pool (`search_samples` windows), and the parent is re-scored on the final draw
            (Týr's protocol); false scores the first `stage_windows[i]` windows every time.
    """

    generations: Annotated[int, Strict(), Field(ge=0)] = 20
    offspring: PosInt = 16
    survivors: list[PosInt] = dataclasses.field(default_factory=lambda: [4, 2])
    stage_windows: list[PosInt] = dataclasses.field(default_factory=lambda: [2, 8, 32])
    top_k: PosInt = 256
    prescreen: Fraction = 1.0
    resample: Bool = True

    def __post_init__(self) -> None:
        require(len(self.survivors) == len(self.stage_windows) - 1,
                f"survivors needs one entry fewer than stage_windows ({len(self.stage_windows)})")
        require(self.stage_windows == sorted(self.stage_windows),
                f"stage_windows must not decrease, got {self.stage_windows}")


@config_class
class PruneConfig:
    """How to prune attention (KV groups or query heads) and FFN neurons of a decoder.

    Attributes:
        sparsity: share of the decoder-block linear weights (q, k, v, o, gate, up, down; biases,
            norms, embeddings and lm_head not counted) to remove, in [0, 1).
        attn_unit: what attention loses — whole KV groups (`kv_group`: every layer stays a
            standard GQA layer) or single query heads (`head`, Týr's unit: a KV head goes once its
            query heads are gone, and a layer may keep different numbers of query heads per KV
            head; the sliced model then needs its modeling file). `auto` (default): query heads
            wherever KV heads are shared and `width_multiple` divides the head dim, else KV groups
            — the finer unit was better in and out of domain on stories260K (BENCHMARKS.md).
        trade_budget: let attention and FFN trade parameters (default: each type keeps the
            target on its own, as in the paper); only where the trade can be exact.
        width_multiple: every pruned width (o_proj / down_proj input columns) stays a multiple of
            this, so that quantization group sizes and kernels fit the result (1: any width).
        search_samples: fitness windows (a disjoint draw; `prune` uses the first this many).
        batch_size / seed: calibration batches; the search's random generator.
        damp: Hessian damping, as a share of its mean diagonal.
        hessian_dtype: the local solver's precision (its statistics, inverse and path): `float64`
            (default) or `float32` — Týr's released code and GPTQ's, half the memory of the largest
            tensor of the supernet build (a wide FFN's Hessian; BENCHMARKS.md › Scale).
        levels: sparsity levels per sub-layer in the supernet (odd; centre ± (levels−1)/2 steps).
        ffn_step: FFN level spacing in iteration 1, as a share of the neurons (halved each
            iteration, never below one step); attention moves one unit per step.
        ffn_min_step: the FFN spacing never falls below this many neurons (Týr's released code
            floors it at 32, which on a small FFN keeps every iteration on the first ladder).
        solver_rounds: progressive-removal rounds between two levels.
        first_order: the first-order term of the solver's unit saliency, beside the OBS term —
            `gradient` (default): |⟨∇, W⟩| of the layer's reconstruction loss (the solver starts
            where that loss is stationary: zero but for the damping, so OBS alone); `output`:
            |⟨XᵀY, W⟩| over the unit's columns, its share of the output along the target (Týr's
            paper, G = H·W; its released code takes it signed). A trade on stories260K: with the
            default sequential calibration the searched models were 1–4.5 % worse in domain and
            5–11 % better out of domain, and no worse out of domain than their uniform models in all
            four settings measured, where `gradient`'s were worse in three (BENCHMARKS.md).
        accumulation: next-block inputs — `centre` (default: the centre candidate's, i.e. each
            iteration's supernet is calibrated on the model its search starts from), `expectation`
            (density-weighted mean of the candidates, the paper's) or `none` (the dense model's, as
            Týr's released code does). With `target_inputs: pruned`, `centre` gave the best uniform
            and searched models on stories260K, in and out of domain, at 25 % and 50 %
            (BENCHMARKS.md › sequential calibration).
        target_inputs: with accumulated inputs X, what the solver fits — `pruned` (default): the
            dense weight on those inputs, X·W_denseᵀ (SparseGPT's sequential calibration); `dense`:
            the dense model's outputs X_dense·W_denseᵀ, making up for the upstream error too (the
            dense model runs beside the pruned one; worse than `none` on stories260K). No effect
            with `accumulation: none`.
        iterations: coarse-to-fine supernet + search rounds (0: the start distribution as is).
        start: first iteration's centre — from structural `saliency` scores or `uniform`.
        saliency_kind: the scorer kind used for `start: saliency` and pre-screening.
        start_strength: how far the saliency start moves from uniform, in [0, 1].
        search: the evolutionary search (see `SearchConfig`).
    """

    sparsity: Annotated[float, Strict(), Field(ge=0, lt=1)] = 0.5
    attn_unit: Literal["auto", "kv_group", "head"] = "auto"
    trade_budget: Bool = False
    width_multiple: PosInt = 1
    search_samples: PosInt = 64
    batch_size: PosInt = 8
    seed: Int = 0
    damp: Annotated[float, Strict(), Field(ge=0, lt=1)] = 0.01
    hessian_dtype: Literal["float64", "float32"] = "float64"
    levels: PosInt = 9
    ffn_step: Annotated[float, Strict(), Field(gt=0, le=0.5)] = 0.125
    ffn_min_step: PosInt = 1
    solver_rounds: PosInt = 16
    first_order: Literal["gradient", "output"] = "gradient"
    accumulation: Literal["expectation", "centre", "none"] = "centre"
    target_inputs: Literal["pruned", "dense"] = "pruned"
    iterations: Annotated[int, Strict(), Field(ge=0)] = 4
    start: Literal["saliency", "uniform"] = "saliency"
    saliency_kind: Literal["grad", "abs_grad", "fisher", "taylor"] = "taylor"
    start_strength: Unit = 1.0
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)

    def __post_init__(self) -> None:
        require(self.levels % 2 == 1, f"levels must be odd, got {self.levels}")
        require(self.search_samples >= self.search.stage_windows[-1],
                f"search_samples ({self.search_samples}) must cover the last selection stage "
                f"({self.search.stage_windows[-1]} windows)")

    @property
    def uses_saliency(self) -> bool:
        return self.start == "saliency" or self.search.prescreen < 1.0 or self.trade_budget
