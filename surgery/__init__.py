"""surgery — weight-saliency model surgery: one gradient scorer, three engines.

    import surgery
    smap = surgery.score(model, batches, loss="causal_lm", kind="fisher")
    masks = smap.mask(0.5)                       # exact top-50% by |score|
    units = surgery.structural_scores(smap, model)  # heads / KV groups / FFN neurons
"""
from __future__ import annotations

from torch import nn

from surgery.errors import SurgeryError
from surgery.models import sliced as _sliced  # noqa: F401  (registers sliced decoders with AutoModel)
from surgery.saliency import KINDS, MaskSet, SaliencyMap, StructuralScores, score

__version__ = "0.1.0"


def structural_scores(smap: SaliencyMap, model: nn.Module) -> StructuralScores:
    """Per-head, per-KV-group and per-FFN-neuron sums of `smap` for a decoder `model`."""
    from surgery.models.adapters import DecoderAdapter

    smap.check_model(model)
    return smap.structural(DecoderAdapter(model).structural_layout())


__all__ = ["KINDS", "MaskSet", "SaliencyMap", "StructuralScores", "SurgeryError", "__version__",
           "score", "structural_scores"]
