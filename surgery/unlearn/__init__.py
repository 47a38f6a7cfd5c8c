"""Unlearning engine: SalUn saliency masks, baselines, the paper's evaluation."""
from surgery._lazy import lazy

_NAMES = {
    "UnlearnConfig": "config",
    "UnlearnResult": "engine",
    "saliency_mask": "engine",
    "unlearn": "engine",
}
__getattr__, __dir__ = lazy(__name__, _NAMES)
__all__ = sorted(_NAMES)
