"""`UnlearnConfig`: SalUn and its baselines, for classifiers and causal LMs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from surgery.errors import SurgeryError, require
from surgery.saliency.masks import check_density

CLS_METHODS = ("salun", "rl", "ga", "ft", "l1_sparse", "retrain")
LM_METHODS = ("graddiff", "npo", "ga")
METHODS = tuple(dict.fromkeys(CLS_METHODS + LM_METHODS))
MASKED_BY_DEFAULT = ("salun",)


@dataclass
class UnlearnConfig:
    """How to unlearn a forget set while keeping a retain set.

    Attributes:
        method: `salun` (Random Label with the saliency mask), `rl`, `ga`, `ft`, `l1_sparse`,
            `retrain` (from scratch on the retain set) for classifiers; `graddiff`, `npo`, `ga`
            for causal LMs.
        use_mask: restrict updates to the saliency mask (default: only for `salun`); any method
            can be masked.
        density / scope / include / exclude: the mask — the top `density` of |Σ∇ forget loss|,
            `global` or per `tensor`, over the parameters the regexes select.
        epochs / lr / batch_size / optimizer (`sgd` | `adamw`) / momentum / weight_decay.
        alpha: weight of the retain loss (RL, GradDiff, NPO).
        schedule: `sequential` (a forget pass then a retain pass per epoch, the official code) or
            `joint` (forget loss + α·retain loss on paired batches).
        l1: the ℓ1-sparse coefficient (decays linearly to 0 over the epochs).
        beta: NPO's inverse temperature (reference = the model before unlearning).
        augment: train-time augmentation (random crop + flip) on image batches.
        freeze_bn_stats: keep BatchNorm layers in eval mode (running statistics are buffers, not
            weights: a mask cannot freeze them, so this is the way to keep them too).
        seed: batch order and random labels.
    """

    method: str = "salun"
    use_mask: bool | None = None
    density: float = 0.5
    scope: str = "global"
    include: list[str] | None = None
    exclude: list[str] | None = None
    epochs: int = 5
    lr: float = 0.01
    batch_size: int = 128
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    alpha: float = 1.0
    schedule: str = "sequential"
    l1: float = 5e-4
    beta: float = 0.1
    augment: bool = False
    freeze_bn_stats: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}")
        check_density(self.density)
        require(self.scope in ("global", "tensor"), f"scope must be global or tensor, got {self.scope!r}")
        require(self.optimizer in ("sgd", "adamw"), f"optimizer must be sgd or adamw, got {self.optimizer!r}")
        require(self.schedule in ("sequential", "joint"), "schedule must be sequential or joint")
        require(self.epochs >= 0 and self.lr > 0 and self.batch_size > 0, "epochs ≥ 0, lr > 0, batch_size > 0")
        require(self.alpha >= 0 and self.beta > 0, "alpha ≥ 0 and beta > 0")

    @property
    def masked(self) -> bool:
        return self.method in MASKED_BY_DEFAULT if self.use_mask is None else bool(self.use_mask)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnlearnConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SurgeryError(f"unknown unlearning option(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
