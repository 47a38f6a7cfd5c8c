"""`PruneConfig`: Týr-style structural pruning, validated on construction."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from surgery.errors import SurgeryError, require

ACCUMULATION = ("expectation", "centre", "none")
STARTS = ("saliency", "uniform")


@dataclass
class PruneConfig:
    """How to prune attention KV groups and FFN neurons of a decoder.

    Attributes:
        sparsity: share of the decoder-block linear weights (q, k, v, o, gate, up, down; biases,
            norms, embeddings and lm_head not counted) to remove, in [0, 1).
        trade_budget: let attention and FFN trade parameters (default: each type keeps the
            target on its own, as in the paper); only where the trade can be exact.
        nsamples / seqlen / batch_size / seed: calibration windows for the local solver.
        search_samples: windows (disjoint draw) for the search fitness.
        damp: Hessian damping, as a share of its mean diagonal.
        levels: sparsity levels per sub-layer in the supernet (odd; centre ± (levels−1)/2 steps).
        ffn_step: FFN level spacing in iteration 1, as a share of the neurons (halved each
            iteration, never below one neuron); attention moves one KV group per step.
        accumulation: next-block inputs — `expectation` (density-weighted mean of the
            candidates), `centre` (the centre candidate only) or `none` (dense inputs).
        iterations / generations / offspring / survivors / stage_windows: the search.
        top_k: logits kept for the KL fitness (dense top-k ids).
        start: first iteration's centre distribution — from structural `saliency` scores or
            `uniform`.
        saliency_kind: the scorer kind used for `start: saliency` and pre-screening.
        start_strength: how far the saliency start moves from uniform, in [0, 1]: each
            sub-layer's removal is uniform + strength·(saliency allocation − uniform), with the
            per-type total kept exact.
        prescreen: evaluate only this share of the offspring (lowest saliency cost) with KL; 1.0
            turns pre-screening off.
        resume_dir: checkpoint supernet blocks and search generations there.
    """

    sparsity: float = 0.5
    trade_budget: bool = False
    nsamples: int = 64
    seqlen: int = 256
    batch_size: int = 8
    seed: int = 0
    search_samples: int = 64
    damp: float = 0.01
    levels: int = 9
    ffn_step: float = 0.125
    solver_rounds: int = 16
    accumulation: str = "expectation"
    iterations: int = 4
    generations: int = 20
    offspring: int = 16
    survivors: list[int] | None = None
    stage_windows: list[int] | None = None
    top_k: int = 256
    start: str = "saliency"
    saliency_kind: str = "taylor"
    start_strength: float = 1.0
    prescreen: float = 1.0
    resume_dir: str | None = None

    def __post_init__(self) -> None:
        try:
            s = float(self.sparsity)
        except (TypeError, ValueError):
            raise SurgeryError(f"sparsity must be a number in [0, 1), got {self.sparsity!r}") from None
        require(0.0 <= s < 1.0, f"sparsity must be in [0, 1), got {self.sparsity}")
        require(self.levels >= 1 and self.levels % 2 == 1, f"levels must be odd and ≥ 1, got {self.levels}")
        require(0 < self.ffn_step <= 0.5, f"ffn_step must be in (0, 0.5], got {self.ffn_step}")
        require(self.accumulation in ACCUMULATION, f"accumulation must be one of {ACCUMULATION}")
        require(self.start in STARTS, f"start must be one of {STARTS}")
        require(self.iterations >= 0 and self.generations >= 0 and self.offspring >= 1,
                "iterations, generations ≥ 0 and offspring ≥ 1")
        require(0 < self.prescreen <= 1, "prescreen must be in (0, 1]")
        require(0 <= self.start_strength <= 1, "start_strength must be in [0, 1]")
        require(len(self.survivor_plan()) == len(self.stage_plan()) - 1,
                "survivors needs one entry fewer than stage_windows")
        require(self.nsamples > 0 and self.search_samples > 0 and self.seqlen > 1, "empty calibration")

    def survivor_plan(self) -> list[int]:
        return list(self.survivors) if self.survivors is not None else [4, 2]

    def stage_plan(self) -> list[int]:
        return list(self.stage_windows) if self.stage_windows is not None else [2, 8, 32]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SurgeryError(f"unknown pruning option(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self, *extra: Any) -> str:
        d = self.to_dict()
        d.pop("resume_dir")
        return hashlib.sha256(json.dumps([d, *extra], sort_keys=True, default=str).encode()).hexdigest()[:16]
