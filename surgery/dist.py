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


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks in place (gloo needs CPU tensors; nccl needs CUDA ones)."""
    if is_distributed():
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


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
