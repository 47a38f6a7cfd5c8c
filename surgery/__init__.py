"""surgery — weight-saliency model surgery: one gradient scorer, three engines.

    import surgery
    smap = surgery.score(model, batches, loss="causal_lm", kind="fisher")
    masks = smap.mask(0.5)                              # exact top-50% by |score|
    result = surgery.quantize(model, surgery.GPTQConfig(num_bits=4), calib=windows)
    result = surgery.prune(model, surgery.PruneConfig(sparsity=0.5), calib=windows)
    result = surgery.unlearn(model, surgery.UnlearnConfig(method="salun"), forget=f, retain=r)

`import surgery` also registers the sliced decoders (`surgery_sliced_*`) with transformers' Auto
classes, so pruned folders load with `AutoModelForCausalLM.from_pretrained`.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from torch import nn

from surgery.errors import SurgeryError
from surgery.models import sliced as _sliced  # noqa: F401  (registers the sliced decoders)
from surgery.saliency import KINDS, MaskSet, SaliencyMap, StructuralScores, score

__version__ = "0.2.0"

_LAZY = {
    "quantize": "surgery.quantize", "RTNConfig": "surgery.quantize", "GPTQConfig": "surgery.quantize",
    "ApiQConfig": "surgery.quantize", "SaliencyRegulariser": "surgery.quantize",
    "prune": "surgery.prune", "PruneConfig": "surgery.prune", "SearchConfig": "surgery.prune",
    "unlearn": "surgery.unlearn", "UnlearnConfig": "surgery.unlearn",
}


def __getattr__(name: str) -> Any:
    """The engines load on first use (`surgery.quantize`, `surgery.PruneConfig`, ...)."""
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'surgery' has no attribute {name!r}")


def structural_scores(smap: SaliencyMap, model: nn.Module) -> StructuralScores:
    """Per-head, per-KV-group and per-FFN-neuron sums of `smap` for a decoder `model`."""
    from surgery.models.adapters import DecoderAdapter

    smap.check_model(model)
    return smap.structural(DecoderAdapter(model).structural_layout())


__all__ = ["KINDS", "ApiQConfig", "GPTQConfig", "MaskSet", "PruneConfig", "RTNConfig", "SaliencyMap",
           "SaliencyRegulariser", "SearchConfig", "StructuralScores", "SurgeryError", "UnlearnConfig",
           "__version__", "prune", "quantize", "score", "structural_scores", "unlearn"]
