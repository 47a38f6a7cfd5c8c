"""Per-batch objectives of the unlearning methods (pure functions of model and batch)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from surgery.saliency.losses import IGNORE_INDEX, causal_lm_loss, token_nll


def random_labels(y: torch.Tensor, num_classes: int, gen: torch.Generator, rule: str = "other") -> torch.Tensor:
    """A label drawn uniformly from the classes other than the true one (`other`: y' ≠ y, always), from
    all classes (`any`: y' = y with probability 1/C), or the next class (`next`: y' = y + 1 mod C, fixed;
    the official SalUn DDPM code's pseudo label)."""
    if rule == "next":
        return (y + 1) % num_classes
    if rule == "any":
        return torch.randint(0, num_classes, y.shape, generator=gen).to(y.device)
    shift = torch.randint(1, num_classes, y.shape, generator=gen).to(y.device)
    return (y + shift) % num_classes


def ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def sequence_logprob(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Σ_t log p(x_t | x_<t) per window [B]."""
    logits = model(input_ids=ids).logits
    return -token_nll(logits, ids).sum(dim=1)


def npo_loss(model: nn.Module, reference: torch.Tensor, ids: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO (Zhang et al. 2024): −(2/β)·log σ(−β·(log π_θ(x) − log π_ref(x))), mean over windows;
    `reference` holds log π_ref of each window (the frozen model's, computed once)."""
    ratio = sequence_logprob(model, ids) - reference
    return -(2.0 / beta) * F.logsigmoid(-beta * ratio).mean()


def nll(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return causal_lm_loss(model, ids)


def l1_norm(model: nn.Module) -> torch.Tensor:
    return sum(p.abs().sum() for p in model.parameters() if p.requires_grad)


__all__ = ["IGNORE_INDEX", "ce", "l1_norm", "nll", "npo_loss", "random_labels", "sequence_logprob"]
