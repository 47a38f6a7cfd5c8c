"""`SaliencyMap`: parameter name → fp32 score tensor, with how it was made, saved as safetensors."""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from surgery.errors import require
from surgery.io import load_tensors, save_tensors
from surgery.saliency.masks import MaskSet, select_top
from surgery.saliency.structural import LayerLayout, StructuralScores, reduce_structural

KINDS = ("grad", "abs_grad", "fisher", "taylor")
FORMAT = "surgery.saliency/1"


class SaliencyMap(Mapping[str, torch.Tensor]):
    """Scores of one kind for a model's parameters.

    Metadata: `kind` (grad | abs_grad | fisher | taylor), `loss` (its name), `data` (a description
    of the scored data), `samples` (rows seen, over all processes), `batches`.
    """

    def __init__(
        self,
        scores: Mapping[str, torch.Tensor],
        kind: str,
        loss: str,
        data: str = "",
        samples: int = 0,
        batches: int = 0,
    ) -> None:
        require(kind in KINDS, f"unknown saliency kind {kind!r}; choose one of {KINDS}")
        self._scores = {n: t.float() for n, t in scores.items()}
        self.kind = kind
        self.loss = loss
        self.data = data
        self.samples = int(samples)
        self.batches = int(batches)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._scores[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._scores)

    def __len__(self) -> int:
        return len(self._scores)

    def __repr__(self) -> str:
        return (
            f"SaliencyMap(kind={self.kind!r}, loss={self.loss!r}, tensors={len(self)}, "
            f"numel={self.numel}, samples={self.samples}, data={self.data!r})"
        )

    @property
    def numel(self) -> int:
        return sum(t.numel() for t in self._scores.values())

    @property
    def metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "kind": self.kind,
            "loss": self.loss,
            "data": self.data,
            "samples": str(self.samples),
            "batches": str(self.batches),
        }

    def check_model(self, model: nn.Module) -> None:
        """Refuse a map made for another model: every name must exist with the same shape."""
        params = dict(model.named_parameters())
        for name, t in self._scores.items():
            require(name in params, f"saliency map names parameter {name!r}, which the model lacks "
                    "(a map from another model?)")
            require(
                tuple(params[name].shape) == tuple(t.shape),
                f"saliency map has {name} shaped {tuple(t.shape)}, the model's is "
                f"{tuple(params[name].shape)} (a map from another model?)",
            )

    def mask(self, density: float, scope: str = "global") -> MaskSet:
        """Exactly round(density·N) True entries at the largest |scores| (see `select_top`)."""
        masks = select_top(self._scores, density, scope)
        return MaskSet(masks, {"kind": self.kind, "loss": self.loss, "scope": scope,
                               "requested_density": repr(float(density))})

    def structural(self, layout: list[LayerLayout]) -> StructuralScores:
        """Per-head, per-KV-group and per-neuron sums (layout from a model adapter)."""
        return reduce_structural(self._scores, layout)

    def per_tensor(self) -> dict[str, float]:
        """Sum of |score| per tensor (e.g. for a per-layer saliency plot)."""
        return {n: float(t.abs().double().sum()) for n, t in self._scores.items()}

    def save(self, path: str | os.PathLike) -> None:
        save_tensors(self._scores, path, self.metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> SaliencyMap:
        """Read a map; with `model`, also check that it was made for that model."""
        tensors, meta = load_tensors(path)
        require(meta.get("format") == FORMAT, f"{path} is not a surgery saliency map")
        smap = cls(
            tensors,
            kind=meta.get("kind", ""),
            loss=meta.get("loss", ""),
            data=meta.get("data", ""),
            samples=int(meta.get("samples", 0)),
            batches=int(meta.get("batches", 0)),
        )
        if model is not None:
            smap.check_model(model)
        return smap
