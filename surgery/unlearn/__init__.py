"""Unlearning engine: SalUn saliency masks, baselines, the paper's evaluation."""
from surgery._lazy import lazy

__getattr__, __dir__ = lazy(
    __name__,
    config="UnlearnConfig",
    engine="UnlearnResult saliency_mask unlearn",
)
__all__ = __dir__()
