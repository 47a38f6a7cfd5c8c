"""The shared weight-saliency scorer (pure torch): scores, maps, masks, structural reductions."""
from surgery._lazy import lazy

__getattr__, __dir__ = lazy(
    __name__,
    accumulate="SaliencyAccumulator score select_parameters",
    masks="MaskSet check_density select_top",
    smap="KINDS SaliencyMap",
    structural="BlockLayout Piece StructuralScores UnitSet reduce_structural",
    topk="kth_largest topk_masks",
)
__all__ = __dir__()
