"""Structural saliency of a decoder: a weight map summed per head, KV group and FFN neuron."""
from __future__ import annotations

from torch import nn

from surgery.models.adapters import DecoderAdapter
from surgery.saliency.smap import SaliencyMap
from surgery.saliency.structural import StructuralScores


def structural_scores(smap: SaliencyMap, model: nn.Module) -> StructuralScores:
    """Per-head, per-KV-group and per-FFN-neuron sums of `smap` for a decoder `model`."""
    smap.check_model(model)
    return smap.structural(DecoderAdapter(model).structural_layout())
