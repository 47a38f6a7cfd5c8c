"""A calibrated membership attack: the likelihood-ratio attack (LiRA, Carlini et al. 2022) with shadow
models, as U-LiRA (Hayes et al. 2024) uses it to audit unlearning.

Each shadow model is trained on a random half of a pool of examples, so every example is IN some
shadows and OUT of others. The statistic is the logit-scaled true-label confidence
φ = z_y − log Σ_{c≠y} exp z_c (= log p_y / (1 − p_y)), which is close to Gaussian per example.
- offline: score = Φ((φ − μ_out) / σ_out), the probability that an OUT model gives less;
- online: score = log N(φ; μ_in, σ_in) − log N(φ; μ_out, σ_out).
With few shadows the per-example variances are noisy; `global_variance` uses one σ per side over
all examples (the paper's advice below ~64 shadows). Scores are higher for members; the attack is
reported as ROC AUC and TPR at a low FPR between the examples asked about (e.g. the forget set under
an unlearned model) and known non-members (test examples).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from surgery.errors import require


def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """φ = z_y − logsumexp_{c≠y} z_c per example (stable for confident models)."""
    z = logits.double()
    true = z.gather(1, labels.view(-1, 1)).squeeze(1)
    others = z.scatter(1, labels.view(-1, 1), float("-inf"))
    return (true - torch.logsumexp(others, dim=1)).numpy()


@dataclass
class ShadowStats:
    """Per-example Gaussian fits of φ over the shadows that held (in) or did not hold (out) it."""

    mu_in: np.ndarray
    sd_in: np.ndarray
    mu_out: np.ndarray
    sd_out: np.ndarray
    n_in: np.ndarray
    n_out: np.ndarray


def fit_shadows(phi: np.ndarray, inside: np.ndarray, global_variance: bool = True,
                min_sd: float = 1e-3) -> ShadowStats:
    """`phi` [shadows, examples]; `inside` [shadows, examples] True where a shadow trained on the example."""
    phi, inside = np.asarray(phi, dtype=np.float64), np.asarray(inside, dtype=bool)
    require(phi.shape == inside.shape and phi.ndim == 2, "phi and inside must both be [shadows, examples]")
    n_in, n_out = inside.sum(0), (~inside).sum(0)
    require(bool((n_out >= 1).all()), "every example needs at least one shadow that did not train on it")

    def side(mask: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        total = np.where(mask, phi, 0.0).sum(0)
        mu = np.divide(total, n, out=np.full(phi.shape[1], np.nan), where=n > 0)
        dev = np.where(mask, (phi - mu) ** 2, 0.0)
        if global_variance:
            dof = max(1, int(n.sum()) - int((n > 0).sum()))
            sd = np.full(phi.shape[1], math.sqrt(dev.sum() / dof))
        else:
            sd = np.sqrt(np.divide(dev.sum(0), np.maximum(n - 1, 1)))
        return mu, np.maximum(sd, min_sd)

    mu_in, sd_in = side(inside, n_in)
    mu_out, sd_out = side(~inside, n_out)
    return ShadowStats(mu_in, sd_in, mu_out, sd_out, n_in, n_out)


def lira_scores(phi_target: np.ndarray, stats: ShadowStats, online: bool = False) -> np.ndarray:
    """Membership scores of the target model's φ (higher = more likely a member)."""
    from scipy.stats import norm

    phi_target = np.asarray(phi_target, dtype=np.float64)
    if not online:
        return norm.cdf(phi_target, stats.mu_out, stats.sd_out)
    require(bool((stats.n_in >= 1).all()), "online LiRA needs at least one IN shadow per example")
    return norm.logpdf(phi_target, stats.mu_in, stats.sd_in) - norm.logpdf(phi_target, stats.mu_out, stats.sd_out)


def attack_roc(member_scores: np.ndarray, nonmember_scores: np.ndarray,
               fprs: tuple[float, ...] = (0.01, 0.001)) -> dict[str, float]:
    """ROC AUC and the TPR at each FPR (the best TPR among thresholds whose FPR does not exceed it)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    m, n = np.asarray(member_scores, dtype=np.float64), np.asarray(nonmember_scores, dtype=np.float64)
    require(len(m) > 0 and len(n) > 0, "the attack needs members and non-members to score")
    y = np.concatenate([np.ones(len(m)), np.zeros(len(n))])
    s = np.concatenate([m, n])
    fpr, tpr, _ = roc_curve(y, s)
    out = {"auc": float(roc_auc_score(y, s))}
    for budget in fprs:
        out[f"tpr@{budget:g}"] = float(tpr[fpr <= budget].max())
    return out


def half_splits(n_examples: int, n_shadows: int, seed: int = 0) -> np.ndarray:
    """[shadows, examples] membership: each example IN exactly half of the shadows (balanced, as the
    LiRA code draws them), so every example has IN and OUT fits."""
    require(n_shadows >= 2 and n_shadows % 2 == 0, f"LiRA needs an even number of shadows ≥ 2, got {n_shadows}")
    rng = np.random.default_rng(seed)
    keep = np.argsort(rng.random((n_shadows, n_examples)), axis=0) < n_shadows // 2
    return keep


def shadow_confidences(arch: dict, pool, n_shadows: int, epochs: int, batch_size: int, lr: float,
                       weight_decay: float, augment: bool, seed: int = 0, progress: bool = False,
                       which: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train classifiers (`build_vision(arch)`, the target's recipe) on the balanced random halves of
    `pool` (an ImageSet) that `half_splits(len(pool), n_shadows, seed)` draws; return φ of every pool
    example under each shadow trained [S, N] and which of them trained on it [S, N]. `which` picks
    the shadow indices to train (default all), so parallel processes can share the K shadows."""
    from surgery.models.vision import build_vision
    from surgery.train import fit

    inside = half_splits(len(pool), n_shadows, seed)
    which = list(range(n_shadows)) if which is None else list(which)
    require(all(0 <= k < n_shadows for k in which), f"shadow indices must lie in [0, {n_shadows})")
    phi = np.empty((len(which), len(pool)))
    for row, k in enumerate(which):
        torch.manual_seed(seed * 1000 + k)
        model = build_vision(arch)
        fit(model, pool.subset(np.nonzero(inside[k])[0]), epochs, batch_size, lr, weight_decay, augment,
            seed * 1000 + k, progress)
        phi[row] = model_confidences(model, pool)
    return phi, inside[which]


@torch.no_grad()
def model_confidences(model: torch.nn.Module, data, batch_size: int = 512) -> np.ndarray:
    """φ of every example of an ImageSet under `model` (eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    out = [logit_confidence(model(x.to(device)).float().cpu(), y) for x, y in data.loader(batch_size)]
    return np.concatenate(out)


__all__ = ["ShadowStats", "model_confidences", "shadow_confidences", "attack_roc", "fit_shadows", "half_splits", "lira_scores", "logit_confidence"]
