"""Row shards of FSDP2 parameters: which rows a rank holds, and whole tensors written one at a time.

`torch.distributed.fsdp.fully_shard` turns every parameter into a DTensor sharded on dim 0 over a
1-D mesh, with `torch.chunk` semantics (rank r holds rows [r·c, (r+1)·c), c = ⌈rows / world⌉).
Per-parameter results computed on the local shards (saliency scores, masks) carry a `RowShard`
each; writing them gathers one tensor at a time to rank 0, which streams it into a safetensors
file, so no rank ever holds the whole map.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from surgery import dist
from surgery.errors import SurgeryError, require
from surgery.io import atomic_path

_DTYPES = {torch.float32: "F32", torch.bool: "BOOL", torch.uint8: "U8", torch.int64: "I64",
           torch.bfloat16: "BF16", torch.float16: "F16", torch.int32: "I32"}


@dataclass(frozen=True)
class RowShard:
    """Rows [start, stop) of a tensor whose full shape is `shape`, held by this rank."""

    shape: tuple[int, ...]
    start: int
    stop: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def take(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a full tensor (e.g. a mask loaded from a file)."""
        require(tuple(full.shape) == self.shape, f"tensor shaped {tuple(full.shape)}, expected {self.shape}")
        return full[self.start:self.stop]


def is_dtensor(t: object) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (the tensor itself otherwise)."""
    return t.to_local() if is_dtensor(t) else t


def row_shard(p: torch.Tensor) -> RowShard | None:
    """The rows of `p` this rank holds, or None for an ordinary (replicated) tensor.

    Only FSDP2's layout is accepted (Shard(0) on a 1-D mesh spanning the process group).
    """
    if not is_dtensor(p):
        return None
    from torch.distributed.tensor import Shard

    placements = tuple(p.placements)
    if len(placements) != 1 or placements[0] != Shard(0) or p.device_mesh.ndim != 1:
        raise SurgeryError(f"unsupported sharding {placements} on a {p.device_mesh.ndim}-D mesh "
                           "(surgery reads FSDP2's Shard(0) on one mesh dimension)")
    world, rank = p.device_mesh.size(), p.device_mesh.get_local_rank()
    rows = p.shape[0]
    chunk = -(-rows // world)
    start = min(rank * chunk, rows)
    stop = min(start + chunk, rows)
    got = p.to_local().shape[0]
    require(got == stop - start, f"a shard of {got} rows where chunk sharding gives {stop - start}")
    return RowShard(tuple(p.shape), start, stop)


def gather_rows(part: torch.Tensor, shard: RowShard, dst: int = 0) -> torch.Tensor | None:
    """The full tensor on rank `dst` (None elsewhere), from every rank's rows; a collective."""
    world = dist.world_size()
    chunk = -(-shard.shape[0] // world)
    padded = torch.zeros((chunk, *shard.shape[1:]), dtype=part.dtype, device=part.device)
    padded[: part.shape[0]] = part
    wire = padded.view(torch.uint8) if part.dtype == torch.bool else padded  # gloo has no bool
    parts = [torch.empty_like(wire) for _ in range(world)] if dist.rank() == dst else None
    tdist.gather(wire, parts, dst=dst)
    if parts is None:
        return None
    full = torch.cat(parts)[: shard.shape[0]]
    return full.view(torch.bool) if part.dtype == torch.bool else full


def write_streamed(
    path: str | os.PathLike,
    specs: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
    produce: Callable[[str], torch.Tensor | None],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a safetensors file tensor by tensor: `produce(name)` is called in `specs` order on every
    rank (it may gather) and returns the full tensor on rank 0; only rank 0 writes, atomically."""
    header: dict[str, object] = {"__metadata__": dict(metadata or {})}
    offset = 0
    for name, (dtype, shape) in specs.items():
        require(dtype in _DTYPES, f"cannot stream {dtype} tensors")
        n = 1
        for d in shape:
            n *= d
        nbytes = n * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    if not dist.is_main():
        for name in specs:
            produce(name)
        return
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, (dtype, shape) in specs.items():
            t = produce(name)
            require(t is not None and t.dtype == dtype and tuple(t.shape) == tuple(shape),
                    f"streamed tensor {name} does not match its header")
            f.write(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
