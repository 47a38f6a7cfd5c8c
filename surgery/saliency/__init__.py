"""The shared weight-saliency scorer (pure torch): scores, maps, masks, structural reductions."""
from surgery.saliency.accumulate import SaliencyAccumulator, score, select_parameters
from surgery.saliency.masks import MaskSet, check_density, select_top
from surgery.saliency.smap import KINDS, SaliencyMap
from surgery.saliency.structural import BlockLayout, Piece, StructuralScores, UnitSet, reduce_structural
from surgery.saliency.topk import kth_largest, topk_masks

__all__ = [
    "KINDS",
    "BlockLayout",
    "MaskSet",
    "Piece",
    "SaliencyAccumulator",
    "SaliencyMap",
    "StructuralScores",
    "check_density",
    "kth_largest",
    "reduce_structural",
    "score",
    "select_parameters",
    "select_top",
    "topk_masks",
    "UnitSet",
]
