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


@torch.no_grad()
def kl_divergence(dense: nn.Module, candidate: nn.Module, windows: torch.Tensor,
                  batch_size: int = 8, top_k: int | None = None) -> float:
    """Mean per-token KL(dense ‖ candidate) over the windows' predicted positions."""
    require(windows.numel() > 0, "no evaluation windows")
    dense.eval()
    candidate.eval()
    total, count = 0.0, 0
    for chunk in windows.split(batch_size):
        p_logits = dense(input_ids=chunk.to(_device(dense))).logits[:, :-1].float()
        q_logits = candidate(input_ids=chunk.to(_device(candidate))).logits[:, :-1].float()
        q_logits = q_logits.to(p_logits.device)
        if top_k is not None:
            idx = p_logits.topk(top_k, dim=-1).indices
            p_logits, q_logits = p_logits.gather(-1, idx), q_logits.gather(-1, idx)
        logp = F.log_softmax(p_logits, dim=-1)
        logq = F.log_softmax(q_logits, dim=-1)
        kl = (logp.exp() * (logp - logq)).sum(-1)
        total += float(kl.double().sum())
        count += kl.numel()
    return total / count
