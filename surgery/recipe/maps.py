"""One saliency map per (kind, data) for a whole recipe run: scored once, reused by every stage
that asks for the same kind on the same calibration windows.

A map describes the model it was scored on. Pruning keeps it, restricted to the weights the sliced
model keeps (the dense model's saliency of the surviving weights); quantization and unlearning move
the weights they touch, so they drop every map and a later stage scores afresh.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from surgery.saliency import SaliencyMap, score


@dataclass
class SharedMaps:
    """Maps keyed by (kind, data description); one window per batch (per-sample Fisher)."""

    maps: dict[tuple[str, str], SaliencyMap] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)

    def get(self, model: nn.Module, kind: str, windows: torch.Tensor, data: str, stage: str,
            progress: bool = False) -> SaliencyMap:
        key = (kind, data)
        if key in self.maps:
            self.log.append({"stage": stage, "kind": kind, "data": data, "computed": False})
            return self.maps[key]
        smap = score(model, list(windows.split(1)), loss="causal_lm", kind=kind, include=r"\.layers\.",
                     progress=progress, description=data)
        self.maps[key] = smap
        self.log.append({"stage": stage, "kind": kind, "data": data, "computed": True})
        return smap

    def after_prune(self, result: Any) -> None:
        """Keep every map, restricted to what the sliced model keeps."""
        self.maps = {k: result.slice_map(m) for k, m in self.maps.items()}

    def drop(self) -> None:
        self.maps.clear()
