"""The scorer: one backward pass per batch, gradients accumulated into a `SaliencyMap`.

Kinds (g_b = gradient of the per-batch mean loss on batch b):
- `grad`     Σ_b g_b
- `abs_grad` |Σ_b g_b|     (SalUn's mask score)
- `fisher`   Σ_b g_b²      (empirical diagonal Fisher, the quantization regulariser's weights)
- `taylor`   |w ⊙ Σ_b g_b| (first-order Taylor importance)

For Σg kinds on fp32 parameters autograd itself accumulates into `.grad` (no extra work per
batch); otherwise each parameter's gradient is folded into its fp32 accumulator by a hook the moment
it is complete and freed there, so the peak holds the accumulators and not a full set of gradients. Under torchrun, two layouts:
- replicated model (plain or DDP): whole batches are striped over ranks and the accumulators are
  summed once at the end;
- FSDP2-sharded model (`fully_shard`): every rank takes its rows of every batch (loss weighted by
  its share), FSDP's reduce-scatter averages them into the full-batch gradient of the rank's own
  shard, and each rank accumulates only its shard — g_b is whole before it is squared, so every
  kind is exact, and the map stays sharded (`SaliencyMap.shards`).
Either way the map equals the single-process one up to float summation order. The model's
train/eval mode is the caller's; its `requires_grad` flags and existing `.grad`s are restored.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from surgery import dist
from surgery.errors import SurgeryError, require
from surgery.saliency.losses import LossFn, batch_size, resolve_loss, take_rows, to_device
from surgery.saliency.smap import KINDS, SaliencyMap
from surgery.shards import RowShard, local, row_shard

_BUCKET = 1 << 24  # elements per all-reduce bucket (64 MiB of fp32)


def select_parameters(
    model: nn.Module,
    include: str | list[str] | None = None,
    exclude: str | list[str] | None = None,
) -> dict[str, nn.Parameter]:
    """Parameters whose name matches any `include` regex (all if None) and no `exclude` regex."""

    def _compile(p: str | list[str] | None) -> list[re.Pattern[str]]:
        pats = [p] if isinstance(p, str) else list(p or [])
        try:
            return [re.compile(x) for x in pats]
        except re.error as e:
            raise SurgeryError(f"bad parameter regex: {e}") from None

    inc, exc = _compile(include), _compile(exclude)
    out = {}
    for name, p in model.named_parameters():
        if inc and not any(r.search(name) for r in inc):
            continue
        if any(r.search(name) for r in exc):
            continue
        out[name] = p
    return out


class SaliencyAccumulator:
    """fp32 running sums of g (or g²) per parameter: `add(name, grad)` then `finalize()`."""

    def __init__(self, kind: str, params: dict[str, nn.Parameter], device: torch.device | None):
        self.kind = kind
        self.params = params
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, name: str, grad: torch.Tensor) -> None:
        g = grad.detach().to(device=self.device or grad.device, dtype=torch.float32)
        acc = self.sums.get(name)
        if acc is None:  # first gradient: allocate (or adopt) the accumulator
            self.sums[name] = g * g if self.kind == "fisher" else g.clone()
        elif self.kind == "fisher":
            acc.addcmul_(g, g)
        else:
            acc.add_(g)

    def fill_missing(self) -> None:
        """Zeros for parameters that never received a gradient (unused by the loss)."""
        for n, p in self.params.items():
            if n not in self.sums:
                part = local(p)
                self.sums[n] = torch.zeros(part.shape, dtype=torch.float32, device=self.device or part.device)

    def all_reduce(self) -> None:
        """Sum the accumulators over ranks, in flat buckets (one collective per bucket)."""
        if not dist.is_distributed():
            return
        names = list(self.params)  # the same order on every rank
        start = 0
        while start < len(names):
            group, size = [], 0
            while start < len(names) and (not group or size + self.sums[names[start]].numel() <= _BUCKET):
                group.append(names[start])
                size += self.sums[names[start]].numel()
                start += 1
            flat = torch.cat([self.sums[n].reshape(-1) for n in group])
            dist.all_reduce_sum_(flat)
            offset = 0
            for n in group:
                k = self.sums[n].numel()
                self.sums[n].copy_(flat[offset : offset + k].view_as(self.sums[n]))
                offset += k

    def finalize(self, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
        if self.kind == "abs_grad":
            return {n: s.abs_() for n, s in self.sums.items()}
        if self.kind == "taylor":
            return {
                n: s.mul_(local(params[n]).detach().to(s.device, torch.float32)).abs_()
                for n, s in self.sums.items()
            }
        return self.sums


def _describe(data: Any, description: str | None) -> str:
    if description:
        return description
    return str(getattr(data, "description", None) or type(data).__name__)


def score(
    model: nn.Module,
    data: Iterable[Any],
    loss: str | LossFn = "causal_lm",
    kind: str = "abs_grad",
    include: str | list[str] | None = None,
    exclude: str | list[str] | None = None,
    *,
    max_batches: int | None = None,
    offload: bool = False,
    shard: bool | None = None,
    progress: bool = True,
    description: str | None = None,
) -> SaliencyMap:
    """Score `model`'s parameters on `data` and return a `SaliencyMap`.

    Args:
        model: any `nn.Module` (train/eval mode is left as the caller set it).
        data: an iterable of batches (see `surgery.saliency.losses` for the batch forms).
        loss: `causal_lm`, `neg_causal_lm`, `ce`, `neg_ce` or a callable `(model, batch) -> scalar`.
        kind: `grad`, `abs_grad`, `fisher` or `taylor`.
        include / exclude: parameter-name regexes.
        max_batches: stop after this many batches of `data` (counted before sharding).
        offload: keep the fp32 accumulators on CPU (for a model on an accelerator).
        shard: stripe batches over ranks (replicated models); default: when a process group of size
            > 1 is up. An FSDP2-sharded model always splits each batch's rows over its ranks.
        progress: show a progress bar (rank 0 only).
        description: what the data is, for the map's metadata.
    """
    require(kind in KINDS, f"unknown saliency kind {kind!r}; choose one of {KINDS}")
    loss_fn, loss_name = resolve_loss(loss)
    model = dist.unwrap(model)  # DDP: score the module itself (no gradient sync per batch)
    params = select_parameters(model, include, exclude)
    require(len(params) > 0, "no parameter matches the include/exclude patterns")
    shards = _shards(params)
    shard = (dist.is_distributed() if shard is None else shard) and not shards
    world, rank = (dist.world_size(), dist.rank()) if shard else (1, 0)
    device = local(next(iter(params.values()))).device

    # Σg kinds on fp32 weights: let autograd accumulate into .grad (free); else explicit sums.
    direct = kind != "fisher" and not offload and all(p.dtype == torch.float32 for p in params.values())
    saved = {n: (p.requires_grad, p.grad) for n, p in model.named_parameters()}
    acc = SaliencyAccumulator(kind, params, torch.device("cpu") if offload else None)
    samples = batches = 0
    hooks = []
    try:
        for n, p in model.named_parameters():
            p.requires_grad_(n in params)
            p.grad = None
        if not direct and not shards:  # fold each gradient in as soon as it is complete, then free it:
            for n, p in params.items():  # peak = the accumulators, not accumulators + a full set of grads
                hooks.append(p.register_post_accumulate_grad_hook(_folder(acc, n)))
        bar = tqdm(data, desc=f"saliency[{kind}]", disable=not progress or dist.rank() != 0,
                   leave=False, dynamic_ncols=True)
        for i, batch in enumerate(bar):
            if max_batches is not None and i >= max_batches:
                break
            if i % world != rank:
                continue
            weight = 1.0
            if shards:  # this rank's rows; FSDP averages the ranks' gradients into the batch's
                rows, weight = dist.local_rows(batch_size(batch))
                batch = take_rows(batch, rows)
            batch = to_device(batch, device)
            value = loss_fn(model, batch)
            require(value.dim() == 0, f"the loss must be a scalar, got shape {tuple(value.shape)}")
            if not torch.isfinite(value):
                raise SurgeryError(f"loss is {float(value.detach())} on batch {i}; cannot score")
            (value * weight if weight != 1.0 else value).backward()  # weight 0: a rank without rows
            if not direct and shards:  # FSDP2 hands over the reduced shard after backward
                for n, p in params.items():
                    if p.grad is not None:
                        acc.add(n, local(p.grad))
                        p.grad = None
            samples += batch_size(batch) if weight else 0
            batches += 1
        if direct:  # adopt the fp32 .grad tensors themselves; the caller's grads come back below
            for n, p in params.items():
                if p.grad is not None:
                    acc.sums[n] = local(p.grad).detach()
        acc.fill_missing()
        counts = torch.tensor([samples, batches], dtype=torch.int64, device=device)
        if shard:
            acc.all_reduce()
        if shard or shards:
            if shards and dist.rank() != 0:
                counts[1] = 0  # every rank saw every batch: count them once
            dist.all_reduce_sum_(counts)
        samples, batches = (int(x) for x in counts.tolist())
        require(batches > 0, "empty data: no batch to score")
        scores = acc.finalize(params)
    finally:
        for h in hooks:
            h.remove()
        for n, p in model.named_parameters():
            rg, g = saved[n]
            p.requires_grad_(rg)
            p.grad = g
    return SaliencyMap(scores, kind=kind, loss=loss_name, data=_describe(data, description),
                       samples=samples, batches=batches, shards=shards)


def _folder(acc: SaliencyAccumulator, name: str):
    def fold(p: torch.Tensor) -> None:
        acc.add(name, p.grad)
        p.grad = None

    return fold


def _shards(params: dict[str, nn.Parameter]) -> dict[str, RowShard]:
    """Row shards of FSDP2 parameters ({} for a replicated model); all or none must be sharded."""
    shards = {n: row_shard(p) for n, p in params.items()}
    sharded = [n for n, s in shards.items() if s is not None]
    if not sharded:
        return {}
    missing = [n for n, s in shards.items() if s is None]
    if missing:
        raise SurgeryError(f"{len(missing)} scored parameters are not sharded (e.g. {missing[0]}); "
                           "fully_shard the root module too, or exclude them")
    return {n: s for n, s in shards.items() if s is not None}
