"""Language-model quality: GPTQ-protocol perplexity and KL divergence to a dense model.

Perplexity (IST-DASLab/gptq `llama_eval`): non-overlapping windows of the "\n\n"-joined text,
each window's mean next-token NLL, ppl = exp(mean over windows). KL: mean over predicted tokens of
KL(p_dense ‖ p_candidate), optionally restricted to the dense model's top-k logits (renormalised).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from surgery.errors import require
from surgery.saliency.losses import token_nll


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def window_nll(model: nn.Module, windows: torch.Tensor, batch_size: int = 8,
               progress: bool = False) -> torch.Tensor:
    """Mean next-token NLL of each window `[n]` (fp64)."""
    require(windows.numel() > 0, "no evaluation windows")
    model.eval()
    out = []
    for chunk in tqdm(windows.split(batch_size), desc="nll", disable=not progress, leave=False):
        chunk = chunk.to(_device(model))
        logits = model(input_ids=chunk).logits
        out.append(token_nll(logits, chunk).double().mean(dim=1).cpu())
    return torch.cat(out)


def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 8,
               progress: bool = False) -> float:
    """GPTQ-protocol perplexity over `[n, seqlen]` windows."""
    return math.exp(float(window_nll(model, windows, batch_size, progress).mean()))


def dense_topk(logits: torch.Tensor, k: int | None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(ids of the k largest logits or None for all, their log-probabilities renormalised over them)."""
    logits = logits.float()
    if k is None or k >= logits.shape[-1]:
        return None, F.log_softmax(logits, dim=-1)
    top = logits.topk(k, dim=-1)
    return top.indices, F.log_softmax(top.values, dim=-1)


def kl_terms(ids: torch.Tensor | None, logp: torch.Tensor, candidate_logits: torch.Tensor) -> torch.Tensor:
    """Per-token KL(p ‖ q) with q the candidate's distribution over the same ids (renormalised)."""
    q = candidate_logits.float()
    logq = F.log_softmax(q if ids is None else q.gather(-1, ids), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


@torch.no_grad()
def kl_divergence(dense: nn.Module, candidate: nn.Module, windows: torch.Tensor,
                  batch_size: int = 8, top_k: int | None = None) -> float:
    """Mean per-token KL(dense ‖ candidate) over the windows' predicted positions."""
    require(windows.numel() > 0, "no evaluation windows")
    dense.eval()
    candidate.eval()
    total, count = 0.0, 0
    for chunk in windows.split(batch_size):
        ids, logp = dense_topk(dense(input_ids=chunk.to(_device(dense))).logits[:, :-1], top_k)
        q_logits = candidate(input_ids=chunk.to(_device(candidate))).logits[:, :-1].to(logp.device)
        kl = kl_terms(ids, logp, q_logits)
        total += float(kl.double().sum())
        count += kl.numel()
    return total / count
