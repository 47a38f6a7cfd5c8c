"""One saliency map per (kind, windows, batching) for a whole recipe run: scored once, reused by
every stage that asks for the same map.

A map describes the model it was scored on. Pruning keeps it, restricted to the weights the sliced
model keeps (the dense model's saliency of the surviving weights); quantization and unlearning move
the weights they touch, so they drop every map and a later stage scores afresh.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from surgery.checkpoint import tensor_digest
from surgery.saliency import SaliencyMap, score


@dataclass
class SharedMaps:
    maps: dict[tuple[str, str, int], SaliencyMap] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)

    def get(self, model: nn.Module, kind: str, windows: torch.Tensor, batch: int, data: str, stage: str,
            include: str | list[str] | None = r"\.layers\.", progress: bool = False) -> SaliencyMap:
        key = (kind, tensor_digest([("w", windows)]), batch)
        computed = key not in self.maps
        if computed:
            self.maps[key] = score(model, list(windows.split(batch)), loss="causal_lm", kind=kind, include=include,
                                   progress=progress, description=data)
        self.log.append({"stage": stage, "kind": kind, "data": data, "computed": computed})
        return self.maps[key]

    def after_prune(self, result: Any) -> None:
        """Keep every map, restricted to what the sliced model keeps."""
        self.maps = {k: result.slice_map(m) for k, m in self.maps.items()}

    def drop(self) -> None:
        self.maps.clear()
