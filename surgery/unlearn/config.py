"""`UnlearnConfig`: SalUn and its baselines, for classifiers and causal LMs."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Strict

from surgery.config import Bool, Int, NonNegFloat, NonNegInt, PosFloat, PosInt, Str, config_class

CLS_METHODS = ("salun", "rl", "ga", "ft", "l1_sparse", "retrain")
LM_METHODS = ("graddiff", "npo", "ga")
GEN_METHODS = ("salun", "rl", "ga", "ft", "esd", "retrain")
METHODS = tuple(dict.fromkeys(CLS_METHODS + LM_METHODS + GEN_METHODS))
MASKED_BY_DEFAULT = ("salun",)


@config_class
class UnlearnConfig:
    """How to unlearn a forget set while keeping a retain set.

    Attributes:
        method: `salun` (Random Label with the saliency mask), `rl`, `ga`, `ft`, `l1_sparse`,
            `retrain` (from scratch on the retain set) for classifiers; `graddiff`, `npo`, `ga`
            for causal LMs; `salun`, `rl`, `ga`, `ft`, `esd`, `retrain` for class-conditional
            diffusion models (see `surgery.unlearn.generation`).
        use_mask: restrict updates to the saliency mask (default: only for `salun`); any method
            can be masked.
        density / scope / include / exclude: the mask — the top `density` of |Σ∇ forget loss|,
            `global` or per `tensor`, over the parameters the regexes select.
        epochs / lr / batch_size / optimizer (`sgd` | `adamw`) / momentum / weight_decay.
        alpha: weight of the retain loss (RL, GradDiff, NPO).
        relabel: the labels RL / SalUn give the forget set (a classifier's targets, a diffusion model's
            condition for the detached target prediction) — `other` (uniform over the classes but the
            true one), `any` (uniform over all classes, the true one included: the official SalUn
            code's CIFAR-10 rule, under which a 1/C share is trained on its own label) or `next` (the
            class after the true one, fixed: the official SalUn DDPM code's pseudo label). `auto`:
            `other` for classifiers, `next` for diffusion models — the better forgetter of each in
            BENCHMARKS.md.
        schedule: `sequential` (a forget pass then a retain pass per epoch, the official code) or
            `joint` (forget loss + α·retain loss on paired batches).
        l1: the ℓ1-sparse coefficient (decays linearly to 0 over the epochs).
        beta: NPO's inverse temperature (reference = the model before unlearning).
        augment: train-time augmentation (random crop + flip) on image batches.
        freeze_bn_stats: keep BatchNorm layers in eval mode (running statistics are buffers, not
            weights: a mask cannot freeze them, so this is the way to keep them too).
        steps: optimizer steps of the diffusion methods (each: one forget and one retain batch);
            0 = `epochs` passes over the forget set.
        negative_guidance: ESD's η (the `esd` target is ε₀(∅) − η·(ε₀(c) − ε₀(∅))).
        seed: batch order and random labels.
    """

    method: Literal["salun", "rl", "ga", "ft", "l1_sparse", "retrain", "graddiff", "npo", "esd"] = "salun"
    use_mask: Bool | None = None
    density: Annotated[float, Strict(), Field(gt=0, le=1)] = 0.5
    scope: Literal["global", "tensor"] = "global"
    include: list[Str] | None = None
    exclude: list[Str] | None = None
    epochs: NonNegInt = 5
    lr: PosFloat = 0.01
    batch_size: PosInt = 128
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: NonNegFloat = 0.9
    weight_decay: NonNegFloat = 5e-4
    alpha: NonNegFloat = 1.0
    relabel: Literal["auto", "other", "any", "next"] = "auto"
    schedule: Literal["sequential", "joint"] = "sequential"
    l1: NonNegFloat = 5e-4
    beta: PosFloat = 0.1
    augment: Bool = False
    freeze_bn_stats: Bool = False
    steps: NonNegInt = 0
    negative_guidance: PosFloat = 1.0
    seed: Int = 0

    def relabel_rule(self, diffusion: bool) -> str:
        """`relabel` with `auto` resolved: `next` for diffusion models, `other` for classifiers."""
        if self.relabel != "auto":
            return self.relabel
        return "next" if diffusion else "other"

    @property
    def masked(self) -> bool:
        return self.method in MASKED_BY_DEFAULT if self.use_mask is None else bool(self.use_mask)
