"""SalUn's evaluation, as the paper defines it: UA, RA, TA, MIA-Efficacy, Avg. Gap — and, for
language models, perplexities and a Min-K% membership-inference AUC."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from surgery.data.images import ImageSet
from surgery.errors import require
from surgery.evaluate.vision import predict_proba

GAP_METRICS = ("UA", "MIA", "RA", "TA")


def true_label_confidence(model: nn.Module, data: ImageSet) -> np.ndarray:
    probs = predict_proba(model, data)
    return probs.gather(1, data.y.view(-1, 1)).flatten().double().numpy()


def mia_efficacy_from_confidence(shadow_in: np.ndarray, shadow_out: np.ndarray, target: np.ndarray) -> float:
    """Fit SVC(C=3, gamma="auto", RBF) on members (1) vs non-members (0) by true-label confidence;
    return the share (in %) of `target` samples predicted non-member."""
    from sklearn.svm import SVC

    require(len(shadow_in) > 0 and len(shadow_out) > 0 and len(target) > 0, "empty MIA input")
    x = np.concatenate([shadow_in, shadow_out]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(shadow_in)), np.zeros(len(shadow_out))])
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(x, y)
    pred = clf.predict(np.asarray(target).reshape(-1, 1))
    return float(100.0 * (1.0 - pred.mean()))


def mia_efficacy(model: nn.Module, forget: ImageSet, retain: ImageSet, test: ImageSet) -> float:
    """Shadow members = the first |test| retain samples, non-members = the test set."""
    shadow = retain.subset(torch.arange(min(len(test), len(retain))))
    return mia_efficacy_from_confidence(true_label_confidence(model, shadow), true_label_confidence(model, test),
                                        true_label_confidence(model, forget))


def classifier_metrics(model: nn.Module, forget: ImageSet, retain: ImageSet, test: ImageSet) -> dict[str, float]:
    """UA = 100 − forget accuracy, RA = retain accuracy, TA = test accuracy, MIA-Efficacy."""
    from surgery.evaluate.vision import accuracy

    return {"UA": 100.0 - accuracy(model, forget), "RA": accuracy(model, retain), "TA": accuracy(model, test),
            "MIA": mia_efficacy(model, forget, retain, test)}


def avg_gap(result: dict[str, float], retrain: dict[str, float]) -> float:
    """Mean |method − Retrain| over UA, MIA-Efficacy, RA, TA (RTE excluded)."""
    return float(np.mean([abs(result[k] - retrain[k]) for k in GAP_METRICS]))


@torch.no_grad()
def token_logprobs(model: nn.Module, windows: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """log p(x_t | x_<t) for every predicted token, [n, T−1]."""
    model.eval()
    out = []
    for chunk in windows.split(batch_size):
        logits = model(input_ids=chunk).logits[:, :-1].float()
        out.append(torch.log_softmax(logits, -1).gather(-1, chunk[:, 1:].unsqueeze(-1)).squeeze(-1))
    return torch.cat(out)


def min_k_scores(model: nn.Module, windows: torch.Tensor, k: float = 0.2) -> np.ndarray:
    """Min-K% Prob (Shi et al. 2024): mean of the k share lowest token log-probs per window."""
    lp = token_logprobs(model, windows)
    n = max(1, int(round(k * lp.shape[1])))
    return lp.sort(dim=1).values[:, :n].mean(dim=1).double().numpy()


def min_k_auc(model: nn.Module, members: torch.Tensor, non_members: torch.Tensor, k: float = 0.2) -> float:
    """ROC AUC of Min-K% separating `members` from `non_members` (0.5 = indistinguishable)."""
    from sklearn.metrics import roc_auc_score

    a, b = min_k_scores(model, members, k), min_k_scores(model, non_members, k)
    return float(roc_auc_score(np.r_[np.ones(len(a)), np.zeros(len(b))], np.r_[a, b]))
