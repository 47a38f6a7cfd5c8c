"""`SaliencyMap`: parameter name → fp32 score tensor, with how it was made, saved as safetensors.

A map scored on an FSDP2-sharded model holds this rank's rows of each tensor (`shards`); its
masks are selected across ranks and `save` writes the whole map, one gathered tensor at a time.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from surgery import dist
from surgery.errors import SurgeryError, require
from surgery.io import load_tensors, save_tensors
from surgery.saliency.masks import MaskSet, select_top
from surgery.saliency.structural import BlockLayout, StructuralScores, reduce_structural
from surgery.shards import RowShard, gather_rows, is_dtensor, write_streamed

KINDS = ("grad", "abs_grad", "fisher", "taylor")
FORMAT = "surgery.saliency/1"
IDENTITY = ("model_config", "model_weights", "seed", "data_digest")


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
        shards: Mapping[str, RowShard] | None = None,
    ) -> None:
        require(kind in KINDS, f"unknown saliency kind {kind!r}; choose one of {KINDS}")
        self._scores = {n: t.float() for n, t in scores.items()}
        self.shards = dict(shards or {})  # name → the rows this rank holds (sharded maps only)
        self.kind = kind
        self.loss = loss
        self.data = data
        self.samples = int(samples)
        self.batches = int(batches)
        self.identity: dict[str, str] = {}  # model_config / model_weights digests, seed, data digest

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

    def shape(self, name: str) -> tuple[int, ...]:
        """The full shape of a tensor's scores (sharded or not)."""
        return self.shards[name].shape if name in self.shards else tuple(self._scores[name].shape)

    @property
    def numel(self) -> int:
        return sum(self.shards[n].numel if n in self.shards else t.numel() for n, t in self._scores.items())

    @property
    def metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "kind": self.kind,
            "loss": self.loss,
            "data": self.data,
            "samples": str(self.samples),
            "batches": str(self.batches),
            **self.identity,
        }

    def identify(self, model: nn.Module, seed: int | None = None, data_digest: str | None = None) -> None:
        """Record which model (config and weights digests), seed and data this map was made from."""
        from surgery.checkpoint import config_digest

        self.identity = {"model_config": config_digest(model), "model_weights": _weights_digest(model)}
        if seed is not None:
            self.identity["seed"] = str(seed)
        if data_digest is not None:
            self.identity["data_digest"] = data_digest

    def check_identity(self, model: nn.Module) -> None:
        """Refuse a map whose recorded model is not `model` (other config or other weights)."""
        from surgery.checkpoint import config_digest

        if "model_config" in self.identity:
            require(self.identity["model_config"] == config_digest(model),
                    "the saliency map was made for a model with another config")
        if "model_weights" in self.identity:
            require(self.identity["model_weights"] == _weights_digest(model),
                    "the saliency map was made for a model with other weights")

    def check_model(self, model: nn.Module) -> None:
        """Refuse a map made for another model: every name must exist with the same shape."""
        params = dict(model.named_parameters())
        for name in self._scores:
            require(name in params, f"saliency map names parameter {name!r}, which the model lacks "
                    "(a map from another model?)")
            require(
                tuple(params[name].shape) == self.shape(name),
                f"saliency map has {name} shaped {self.shape(name)}, the model's is "
                f"{tuple(params[name].shape)} (a map from another model?)",
            )

    def mask(self, density: float, scope: str = "global") -> MaskSet:
        """Exactly round(density·N) True entries at the largest |scores| (see `select_top`)."""
        masks = select_top(self._scores, density, scope, self.shards)
        return MaskSet(masks, {"kind": self.kind, "loss": self.loss, "scope": scope,
                               "requested_density": repr(float(density))}, self.shards)

    def structural(self, layout: list[BlockLayout]) -> StructuralScores:
        """Per-head, per-KV-group and per-neuron sums (layout from a model adapter)."""
        require(not self.shards, "structural sums need whole tensors: save the sharded map and load it")
        return reduce_structural(self._scores, layout)

    def per_tensor(self) -> dict[str, float]:
        """Sum of |score| per tensor (e.g. for a per-layer saliency plot), over every rank's rows."""
        sums = torch.tensor([float(t.abs().double().sum()) for t in self._scores.values()], dtype=torch.float64)
        if self.shards:
            dist.all_reduce_sum_(sums)
        return dict(zip(self._scores, sums.tolist()))

    def save(self, path: str | os.PathLike) -> None:
        """Write the map. For a sharded map every rank calls this: tensors are gathered to rank 0
        one at a time and streamed into the file (the whole map is never in one process)."""
        if not self.shards:
            save_tensors(self._scores, path, self.metadata)
            return
        specs = {n: (torch.float32, self.shape(n)) for n in self._scores}
        write_streamed(path, specs, lambda n: gather_rows(self._scores[n], self.shards[n]), self.metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> SaliencyMap:
        """Read a map (every header field checked); with `model`, refuse a map made for another model."""
        tensors, meta = load_tensors(path)
        require(meta.get("format") == FORMAT, f"{path} is not a surgery saliency map")
        counts = {}
        for key in ("samples", "batches"):
            try:
                counts[key] = int(meta.get(key, "0"))
            except ValueError:
                raise SurgeryError(f"{path}: header field {key!r} is not an integer: {meta[key]!r}") from None
            require(counts[key] >= 0, f"{path}: header field {key!r} is negative")
        require(meta.get("kind") in KINDS, f"{path}: header field 'kind' is {meta.get('kind')!r}, not one of {KINDS}")
        for n, t in tensors.items():
            require(t.is_floating_point(), f"{path}: tensor {n} is {t.dtype}, not a float score")
        smap = cls(tensors, kind=meta["kind"], loss=meta.get("loss", ""), data=meta.get("data", ""), **counts)
        smap.identity = {k: meta[k] for k in IDENTITY if k in meta}
        if model is not None:
            smap.check_model(model)
            smap.check_identity(model)
        return smap


def _weights_digest(model: nn.Module) -> str:
    """Digest of the model's weights; a sharded model's are gathered one tensor at a time (a
    collective), so every rank and a one-process run agree."""
    from surgery.checkpoint import tensor_digest

    def items():
        for n, t in model.state_dict().items():
            yield n, (t.full_tensor() if is_dtensor(t) else t)

    return tensor_digest(items())
