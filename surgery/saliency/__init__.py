"""The shared weight-saliency scorer (pure torch): scores, maps, masks, structural reductions."""
from surgery._lazy import lazy

_NAMES = {
    "BlockLayout": "structural",
    "KINDS": "smap",
    "MaskSet": "masks",
    "Piece": "structural",
    "SaliencyAccumulator": "accumulate",
    "SaliencyMap": "smap",
    "StructuralScores": "structural",
    "UnitSet": "structural",
    "check_density": "masks",
    "kth_largest": "topk",
    "reduce_structural": "structural",
    "score": "accumulate",
    "select_parameters": "accumulate",
    "select_top": "masks",
    "topk_masks": "topk",
}
__getattr__, __dir__ = lazy(__name__, _NAMES)
__all__ = sorted(_NAMES)
