"""Losses the scorer differentiates, and the batch conventions they read.

Batches: a causal-LM batch is a LongTensor of token ids `[B, T]` or a dict with `input_ids`
(optionally `attention_mask`, `labels`); a classification batch is a pair `(inputs, labels)` or a
dict with `inputs` and `labels`. Every loss is a per-batch mean, as in SalUn's mask pass.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from surgery.errors import SurgeryError

LossFn = Callable[[nn.Module, Any], torch.Tensor]
IGNORE_INDEX = -100


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a batch (tensor, tuple/list or dict) to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def batch_size(batch: Any) -> int:
    """Number of samples (rows) in a batch."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        first = batch.get("input_ids", batch.get("inputs"))
        if first is None:
            first = next(v for v in batch.values() if isinstance(v, torch.Tensor))
        return int(first.shape[0])
    if isinstance(batch, (tuple, list)):
        return int(batch[0].shape[0])
    raise SurgeryError(f"unsupported batch type {type(batch).__name__}")


def take_rows(batch: Any, rows: slice) -> Any:
    """The same batch restricted to `rows` (every tensor sliced on its first dimension)."""
    if isinstance(batch, torch.Tensor):
        return batch[rows]
    if isinstance(batch, Mapping):
        return {k: take_rows(v, rows) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(take_rows(v, rows) for v in batch)
    return batch


def lm_fields(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(input_ids, attention_mask, labels) of a causal-LM batch; labels default to the ids."""
    if isinstance(batch, torch.Tensor):
        return batch, None, batch
    if isinstance(batch, Mapping) and "input_ids" in batch:
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        labels = batch.get("labels")
        if labels is None:
            labels = ids if mask is None else ids.masked_fill(mask == 0, IGNORE_INDEX)
        return ids, mask, labels
    raise SurgeryError("a causal-LM batch must be a LongTensor of ids or a dict with input_ids")


def cls_fields(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of a classification batch."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping) and "inputs" in batch and "labels" in batch:
        return batch["inputs"], batch["labels"]
    raise SurgeryError("a classification batch must be (inputs, labels) or {inputs, labels}")


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token NLL of next-token prediction `[B, T-1]`; ignored positions give 0.

    Computed in fp32 whatever the logits' dtype, so bf16 models give comparable losses.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)


def causal_lm_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Mean next-token NLL over the batch's non-ignored tokens."""
    ids, mask, labels = lm_fields(batch)
    logits = model(input_ids=ids, attention_mask=mask).logits
    nll = token_nll(logits, labels)
    n = (labels[:, 1:] != IGNORE_INDEX).sum().clamp_min(1)
    return nll.sum() / n


def neg_causal_lm_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """The LM forget loss: −NLL (gradient ascent on the forget text)."""
    return -causal_lm_loss(model, batch)


def _logits(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    out = model(inputs)
    return out.logits if hasattr(out, "logits") else out


def ce_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Classification cross-entropy (batch mean)."""
    x, y = cls_fields(batch)
    return F.cross_entropy(_logits(model, x).float(), y)


def neg_ce_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """SalUn's forget loss: −CE on the forget set (the sign vanishes under abs_grad)."""
    return -ce_loss(model, batch)


LOSSES: dict[str, LossFn] = {
    "causal_lm": causal_lm_loss,
    "neg_causal_lm": neg_causal_lm_loss,
    "ce": ce_loss,
    "neg_ce": neg_ce_loss,
}


def resolve_loss(loss: str | LossFn) -> tuple[LossFn, str]:
    """A loss callable and the name recorded in a map's metadata."""
    if callable(loss):
        return loss, getattr(loss, "__name__", "callable")
    if loss not in LOSSES:
        raise SurgeryError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)} or pass a callable")
    return LOSSES[loss], loss
