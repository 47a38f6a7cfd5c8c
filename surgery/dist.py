"""The few distributed facts `surgery` needs: rank, world size, one sum-reduce, clean shutdown.

Works under `torchrun` / `accelerate launch` (any backend), and is a no-op in a single process.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as tdist

from surgery.errors import SurgeryError


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(cpu: bool | None = None) -> bool:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1); return whether it did.

    gloo on CPU (MASTER_ADDR defaults to 127.0.0.1), nccl when CUDA is present and `cpu` is not set.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    use_cpu = cpu if cpu is not None else not torch.cuda.is_available()
    backend = "gloo" if use_cpu else "nccl"
    tdist.init_process_group(backend=backend)
    if not use_cpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def resolve_device(name: str = "auto", what: str = "device") -> torch.device:
    """`auto` = this rank's CUDA device when present (LOCAL_RANK under torchrun), else CPU; `cuda`
    means this rank's too; `cuda:N` and `cpu` as given. Checked against the machine, in one line."""
    local_gpu = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "auto":
        return torch.device("cuda", local_gpu) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise SurgeryError(f"{what}: unknown device {name!r} (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SurgeryError(f"{what} {name}: no CUDA device on this machine")
        if dev.index is None:
            dev = torch.device("cuda", local_gpu)
        if dev.index >= torch.cuda.device_count():
            raise SurgeryError(f"{what} {name}: only {torch.cuda.device_count()} CUDA devices")
    elif dev.type != "cpu":
        raise SurgeryError(f"{what}: unsupported device type {dev.type!r}")
    return dev


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks in place (gloo needs CPU tensors; nccl needs CUDA ones)."""
    if is_distributed():
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def all_gather_stack(t: torch.Tensor) -> torch.Tensor:
    """Every rank's `t`, stacked in rank order: [world, *t.shape]."""
    if not is_distributed():
        return t.unsqueeze(0)
    parts = [torch.empty_like(t) for _ in range(world_size())]
    tdist.all_gather(parts, t)
    return torch.stack(parts)


def local_rows(n: int) -> tuple[slice, float]:
    """This rank's contiguous share of `n` rows (sizes differ by at most one) and the weight that
    makes the ranks' averaged gradients of per-row-mean losses equal the one-process gradient.

    A rank left without rows (n < world) still has to run forward and backward (the collectives
    wait for it): it gets the first row with weight 0, which adds exactly nothing.
    """
    if not is_distributed():
        return slice(0, n), 1.0
    w, r = world_size(), rank()
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    size = base + (1 if r < extra else 0)
    if size == 0:
        return slice(0, 1), 0.0
    return slice(start, start + size), size * w / n


def unwrap(model: "torch.nn.Module") -> "torch.nn.Module":
    """The module inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def shard_rows(batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """This rank's equal share of the rows of every batch (all of them in one process).

    Splitting inside each batch (not striping whole batches) keeps the global batch that an
    optimiser step or a statistic sees the same at any world size.
    """
    if not is_distributed():
        return batches
    w, r = world_size(), rank()
    out = []
    for b in batches:
        if b.shape[0] % w:
            raise SurgeryError(f"a batch of {b.shape[0]} windows does not split over {w} processes; "
                               f"use a batch size (and a sample count) divisible by {w}")
        k = b.shape[0] // w
        out.append(b[r * k:(r + 1) * k])
    return out


def average_grads_(params: list[torch.Tensor]) -> None:
    """Replace each gradient by its mean over ranks (one flat collective)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]).div_(world_size())
    all_reduce_sum_(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def merge_means_(means: list[torch.Tensor], n: int) -> int:
    """Turn per-rank running means over `n` rows into the global means, in place; return the global n."""
    if not is_distributed():
        return n
    count = torch.tensor([float(n)], dtype=torch.float64, device=means[0].device if means else "cpu")
    all_reduce_sum_(count)
    for m in means:
        m.mul_(n)
        all_reduce_sum_(m)
        m.div_(float(count))
    return int(count)


def per_rank_name(stem: str, suffix: str = ".safetensors") -> str:
    """`stem.safetensors` in one process, `stem.rank<r>.safetensors` under data parallelism (a file per rank)."""
    return f"{stem}{suffix}" if not is_distributed() else f"{stem}.rank{rank()}{suffix}"


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


def shutdown() -> None:
    """Barrier then destroy the process group (gloo otherwise aborts at exit now and then)."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()
