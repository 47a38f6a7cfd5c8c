"""LiRA (shadow-model membership attack) against hand computations on synthetic statistics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from surgery.errors import SurgeryError
from surgery.unlearn.lira import attack_roc, fit_shadows, half_splits, lira_scores, logit_confidence


def test_logit_confidence_is_log_odds_of_the_true_label():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [30.0, -5.0, 1.0]])
    labels = torch.tensor([0, 2, 0])
    p = torch.softmax(logits.double(), 1).gather(1, labels.view(-1, 1)).squeeze(1)
    want = torch.log(p) - torch.log1p(-p)
    assert np.allclose(logit_confidence(logits, labels)[:2], want[:2].numpy(), atol=1e-12)
    assert logit_confidence(logits, labels)[2] == pytest.approx(30.0 - np.log(np.exp(-5.0) + np.exp(1.0)))


def test_half_splits_put_every_example_in_half_the_shadows():
    keep = half_splits(50, 8, seed=3)
    assert keep.shape == (8, 50) and bool((keep.sum(0) == 4).all())
    assert not np.array_equal(keep, half_splits(50, 8, seed=4))
    with pytest.raises(SurgeryError, match="even number"):
        half_splits(5, 3)


def test_fits_and_scores_match_a_hand_computation():
    rng = np.random.default_rng(0)
    inside = half_splits(6, 8, seed=0)
    phi = rng.normal(size=(8, 6)) + 3.0 * inside
    st = fit_shadows(phi, inside, global_variance=False)
    for j in range(6):
        i, o = phi[inside[:, j], j], phi[~inside[:, j], j]
        assert st.mu_in[j] == pytest.approx(i.mean()) and st.sd_in[j] == pytest.approx(i.std(ddof=1))
        assert st.mu_out[j] == pytest.approx(o.mean()) and st.sd_out[j] == pytest.approx(o.std(ddof=1))
    target = rng.normal(size=6)
    assert np.allclose(lira_scores(target, st), norm.cdf(target, st.mu_out, st.sd_out))
    online = norm.logpdf(target, st.mu_in, st.sd_in) - norm.logpdf(target, st.mu_out, st.sd_out)
    assert np.allclose(lira_scores(target, st, online=True), online)
    pooled = fit_shadows(phi, inside, global_variance=True)
    resid = np.where(inside, phi - st.mu_in, 0.0)
    assert pooled.sd_in[0] == pytest.approx(np.sqrt((resid ** 2).sum() / (inside.sum() - 6)))


def test_attack_separates_members_and_is_blind_to_non_members():
    rng = np.random.default_rng(1)
    inside = half_splits(400, 16, seed=1)
    base = rng.normal(size=400)  # per-example difficulty: what calibration removes
    phi = base + rng.normal(scale=0.3, size=(16, 400)) + 1.0 * inside
    st = fit_shadows(phi, inside)
    member = base[:200] + 1.0 + rng.normal(scale=0.3, size=200)  # a target that trained on the first 200
    nonmember = base[200:] + rng.normal(scale=0.3, size=200)
    strong = attack_roc(lira_scores(member, _take(st, slice(0, 200))), lira_scores(nonmember, _take(st, slice(200, 400))))
    assert strong["auc"] > 0.95 and strong["tpr@0.01"] > 0.3
    forgotten = base[:200] + rng.normal(scale=0.3, size=200)  # perfectly unlearned: looks like OUT
    blind = attack_roc(lira_scores(forgotten, _take(st, slice(0, 200))), lira_scores(nonmember, _take(st, slice(200, 400))))
    assert abs(blind["auc"] - 0.5) < 0.08
    uncal = attack_roc(member, nonmember)  # the raw statistic, without shadows, is weaker
    assert uncal["auc"] < strong["auc"]


def _take(st, idx):
    from surgery.unlearn.lira import ShadowStats

    return ShadowStats(*(getattr(st, f)[idx] for f in ("mu_in", "sd_in", "mu_out", "sd_out", "n_in", "n_out")))


def test_attack_roc_matches_brute_force_counting():
    m, n = np.array([0.9, 0.8, 0.4, 0.35]), np.array([0.7, 0.3, 0.2, 0.1, 0.05])
    pairs = sum((a > b) + 0.5 * (a == b) for a in m for b in n) / (len(m) * len(n))
    out = attack_roc(m, n, fprs=(0.0, 0.2))
    assert out["auc"] == pytest.approx(pairs)
    assert out["tpr@0"] == pytest.approx(0.5) and out["tpr@0.2"] == pytest.approx(1.0)


def test_shadows_split_over_processes_equal_one_run_and_real_members_score_higher():
    """Shadow k trained alone (`which=[k]`, as a second process would) equals row k of one run, and
    on real digits the attack separates a shadow's own training half from the other half."""
    from surgery.data.images import load_images
    from surgery.unlearn.lira import shadow_confidences

    pool = load_images("digits", "train", None).subset(np.arange(400))
    arch = {"arch": "mlp", "in_features": 64, "hidden": 32, "depth": 1, "num_classes": 10}
    phi, inside = shadow_confidences(arch, pool, 4, 30, 32, 0.05, 0.0, False, seed=2)
    one, one_in = shadow_confidences(arch, pool, 4, 30, 32, 0.05, 0.0, False, seed=2, which=[3])
    assert np.array_equal(one, phi[3:]) and np.array_equal(one_in, inside[3:])
    stats = fit_shadows(phi[:3], inside[:3])  # shadow 3 plays the target
    scores = lira_scores(phi[3], stats)
    roc = attack_roc(scores[inside[3]], scores[~inside[3]])
    assert roc["auc"] > 0.6
    with pytest.raises(SurgeryError, match="shadow indices"):
        shadow_confidences(arch, pool, 4, 1, 32, 0.05, 0.0, False, which=[4])
