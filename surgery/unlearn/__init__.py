"""Unlearning engine: SalUn saliency masks, baselines, the paper's evaluation."""
from surgery._lazy import lazy, verb

__getattr__, __dir__ = lazy(
    __name__,
    config="UnlearnConfig",
    engine="UnlearnResult saliency_mask unlearn",
)
__all__ = __dir__()
verb(__name__, "engine", "unlearn")  # surgery.unlearn(...) is surgery.unlearn.engine.unlearn(...)
