"""Boolean weight masks: exact top-density selection from scores, and their safetensors form.

A `MaskSet` maps parameter name → bool tensor. It is saved either as bool safetensors or
bit-packed (8 weights per byte, with shapes in the header); per-tensor densities travel in the
header too, so a mask file describes itself.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping

import numpy as np
import torch

from surgery.errors import SurgeryError, require
from surgery.io import load_tensors, save_tensors
from surgery.saliency.topk import topk_masks

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
    scores: Mapping[str, torch.Tensor], density: float, scope: str = "global"
) -> dict[str, torch.Tensor]:
    """Masks with exactly round(density·N) ones at the largest |scores|.

    `global`: one threshold over all tensors (N = all entries); `tensor`: one per tensor
    (N = that tensor's entries).
    """
    d = check_density(density)
    require(scope in SCOPES, f"scope must be one of {SCOPES}, got {scope!r}")
    require(len(scores) > 0, "no scores to select from")
    names = list(scores)
    if scope == "global":
        total = sum(scores[n].numel() for n in names)
        masks = topk_masks([scores[n] for n in names], round(d * total))
        return dict(zip(names, masks))
    return {n: topk_masks([scores[n]], round(d * scores[n].numel()))[0] for n in names}


class MaskSet(Mapping[str, torch.Tensor]):
    """Parameter name → bool mask (True = selected / allowed to move), plus how it was made."""

    def __init__(self, masks: Mapping[str, torch.Tensor], meta: Mapping[str, str] | None = None):
        for name, m in masks.items():
            require(m.dtype == torch.bool, f"mask {name} is {m.dtype}, expected bool")
        self._masks = dict(masks)
        self.meta = dict(meta or {})

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    @property
    def selected(self) -> int:
        return sum(int(m.sum()) for m in self._masks.values())

    @property
    def numel(self) -> int:
        return sum(m.numel() for m in self._masks.values())

    @property
    def density(self) -> float:
        return self.selected / max(self.numel, 1)

    def densities(self) -> dict[str, float]:
        """Share of selected weights in each tensor."""
        return {n: float(m.float().mean()) for n, m in self._masks.items()}

    def check_model(self, model: torch.nn.Module) -> None:
        """Refuse a mask made for another model (missing names or other shapes)."""
        params = dict(model.named_parameters())
        for name, m in self._masks.items():
            require(name in params, f"mask names parameter {name!r}, which the model does not have")
            require(
                tuple(params[name].shape) == tuple(m.shape),
                f"mask for {name} has shape {tuple(m.shape)}, the model's is "
                f"{tuple(params[name].shape)} (a mask from another model?)",
            )

    def save(self, path: str | os.PathLike, packed: bool = False) -> None:
        """Write bool (or bit-packed uint8) safetensors; shapes and densities in the header."""
        meta = dict(self.meta)
        meta.update(
            format=FORMAT,
            packed=str(packed).lower(),
            density=repr(self.density),
            densities=json.dumps(self.densities()),
        )
        if packed:
            meta["shapes"] = json.dumps({n: list(m.shape) for n, m in self._masks.items()})
            meta["bitorder"] = "big"  # numpy's packbits default: the first weight is the high bit
            tensors = {
                n: torch.from_numpy(np.packbits(m.reshape(-1).cpu().numpy()))
                for n, m in self._masks.items()
            }
        else:
            tensors = dict(self._masks)
        save_tensors(tensors, path, meta)

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
