"""Boolean weight masks: exact top-density selection from scores, and their safetensors form.

A `MaskSet` maps parameter name → bool tensor. It is saved either as bool safetensors or
bit-packed (8 weights per byte, with shapes in the header); per-tensor densities travel in the
header too, so a mask file describes itself. A mask made from a sharded map holds this rank's
rows of each tensor (`shards`); its counts are global and `save` writes the whole mask.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping

import numpy as np
import torch

from surgery import dist
from surgery.errors import SurgeryError, require
from surgery.io import load_tensors, save_tensors
from surgery.saliency.topk import topk_masks
from surgery.shards import RowShard, gather_rows, write_streamed

SCOPES = ("global", "tensor")
FORMAT = "surgery.mask/1"


def check_density(density: float) -> float:
    """Reject densities outside (0, 1]."""
    try:
        d = float(density)
    except (TypeError, ValueError):
        raise SurgeryError(f"density must be a number in (0, 1], got {density!r}") from None
    require(0.0 < d <= 1.0, f"density must be in (0, 1], got {density}")
    return d


def select_top(
    scores: Mapping[str, torch.Tensor], density: float, scope: str = "global",
    shards: Mapping[str, RowShard] | None = None,
) -> dict[str, torch.Tensor]:
    """Masks with exactly round(density·N) ones at the largest |scores|.

    `global`: one threshold over all tensors (N = all entries); `tensor`: one per tensor
    (N = that tensor's entries). With `shards`, `scores` are this rank's rows and N counts every
    rank's (histograms are summed over ranks; scores never move).
    """
    d = check_density(density)
    require(scope in SCOPES, f"scope must be one of {SCOPES}, got {scope!r}")
    require(len(scores) > 0, "no scores to select from")
    names = list(scores)
    sharded = bool(shards)
    if sharded:
        require(set(names) <= set(shards), "a sharded map must shard every tensor (fully_shard the root module too)")
    full = {n: shards[n].numel if sharded else scores[n].numel() for n in names}
    if scope == "global":
        masks = topk_masks([scores[n] for n in names], round(d * sum(full.values())), distributed=sharded)
        return dict(zip(names, masks))
    return {n: topk_masks([scores[n]], round(d * full[n]), distributed=sharded)[0] for n in names}


class MaskSet(Mapping[str, torch.Tensor]):
    """Parameter name → bool mask (True = selected / allowed to move), plus how it was made."""

    def __init__(self, masks: Mapping[str, torch.Tensor], meta: Mapping[str, str] | None = None,
                 shards: Mapping[str, RowShard] | None = None):
        for name, m in masks.items():
            require(m.dtype == torch.bool, f"mask {name} is {m.dtype}, expected bool")
        self._masks = dict(masks)
        self.meta = dict(meta or {})
        self.shards = dict(shards or {})  # name → the rows this rank holds (sharded masks only)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def shape(self, name: str) -> tuple[int, ...]:
        """The full shape of a tensor's mask (sharded or not)."""
        return self.shards[name].shape if name in self.shards else tuple(self._masks[name].shape)

    def counts(self) -> dict[str, int]:
        """Selected entries per tensor, over every rank's rows."""
        names = list(self._masks)
        local = torch.tensor([int(self._masks[n].sum()) for n in names], dtype=torch.int64)
        if self.shards:
            dist.all_reduce_sum_(local)
        return dict(zip(names, local.tolist()))

    def numels(self) -> dict[str, int]:
        return {n: int(np.prod(self.shape(n))) for n in self._masks}

    def local(self, name: str, shard: RowShard | None) -> torch.Tensor:
        """The mask rows matching a parameter's `shard` (the whole mask for an unsharded parameter)."""
        m = self._masks[name]
        if shard is None:
            require(name not in self.shards, f"mask {name} is sharded but the parameter is not")
            return m
        if name in self.shards:
            require(self.shards[name] == shard, f"mask {name} is sharded differently from its parameter")
            return m
        return shard.take(m)

    @property
    def selected(self) -> int:
        return sum(self.counts().values())

    @property
    def numel(self) -> int:
        return sum(self.numels().values())

    @property
    def density(self) -> float:
        return self.selected / max(self.numel, 1)

    def densities(self) -> dict[str, float]:
        """Share of selected weights in each tensor."""
        numels = self.numels()
        return {n: c / max(numels[n], 1) for n, c in self.counts().items()}

    def check_model(self, model: torch.nn.Module) -> None:
        """Refuse a mask made for another model (missing names or other shapes)."""
        params = dict(model.named_parameters())
        for name in self._masks:
            require(name in params, f"mask names parameter {name!r}, which the model does not have")
            require(
                tuple(params[name].shape) == self.shape(name),
                f"mask for {name} has shape {self.shape(name)}, the model's is "
                f"{tuple(params[name].shape)} (a mask from another model?)",
            )

    def save(self, path: str | os.PathLike, packed: bool = False) -> None:
        """Write bool (or bit-packed uint8) safetensors; shapes and densities in the header.
        For a sharded mask every rank calls this (tensors are gathered one at a time to rank 0)."""
        meta = dict(self.meta)
        densities = self.densities()
        meta.update(format=FORMAT, packed=str(packed).lower(), density=repr(self.density),
                    densities=json.dumps(densities))
        if packed:
            meta["shapes"] = json.dumps({n: list(self.shape(n)) for n in self._masks})
            meta["bitorder"] = "big"  # numpy's packbits default: the first weight is the high bit

        def pack(m: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(np.packbits(m.reshape(-1).cpu().numpy())) if packed else m

        if not self.shards:
            save_tensors({n: pack(m) for n, m in self._masks.items()}, path, meta)
            return
        numels = self.numels()
        specs = {n: ((torch.uint8, (-(-numels[n] // 8),)) if packed else (torch.bool, self.shape(n)))
                 for n in self._masks}

        def produce(name: str) -> torch.Tensor | None:
            full = gather_rows(self._masks[name], self.shards[name])
            return None if full is None else pack(full)

        write_streamed(path, specs, produce, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> MaskSet:
        """Read a mask file, checking every header field against the data it describes."""
        tensors, meta = load_tensors(path)
        require(meta.get("format") == FORMAT, f"{path} is not a surgery mask file")
        require(meta.get("packed") in ("true", "false"), f"{path}: header field 'packed' is {meta.get('packed')!r}")
        packed = meta["packed"] == "true"
        try:
            densities = json.loads(meta.get("densities", "{}"))
            shapes = json.loads(meta["shapes"]) if packed else {}
        except (json.JSONDecodeError, KeyError) as e:
            raise SurgeryError(f"{path}: unreadable header ({type(e).__name__}: {e})") from None
        masks = {}
        for n, t in tensors.items():
            if packed:
                require(meta.get("bitorder", "big") == "big", f"{path}: unsupported bit order {meta.get('bitorder')!r}")
                require(n in shapes, f"{path}: header has no shape for {n}")
                shape = shapes[n]
                require(isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape),
                        f"{path}: bad shape {shape!r} for {n}")
                count = int(np.prod(shape)) if shape else 1
                require(t.dtype == torch.uint8 and t.dim() == 1 and t.numel() == -(-count // 8),
                        f"{path}: {n} holds {t.numel()} bytes, its shape {shape} needs {-(-count // 8)}")
                masks[n] = torch.from_numpy(np.unpackbits(t.numpy(), count=count).astype(bool)).view(shape)
            else:
                require(t.dtype == torch.bool, f"{path}: {n} is {t.dtype}, not bool")
                masks[n] = t
        require(set(densities) <= set(masks), f"{path}: header densities name tensors the file lacks")
        for n, d in densities.items():
            got = float(masks[n].float().mean()) if masks[n].numel() else 0.0
            require(abs(got - float(d)) <= 1e-6, f"{path}: header density of {n} is {d}, the data's is {got:.6f}")
        return cls(masks, {k: v for k, v in meta.items() if k not in ("shapes",)})
