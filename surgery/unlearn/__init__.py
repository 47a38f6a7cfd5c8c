"""Unlearning engine: SalUn saliency masks, baselines, the paper's evaluation."""
from surgery.unlearn.config import UnlearnConfig
from surgery.unlearn.engine import UnlearnResult, saliency_mask, unlearn

__all__ = ["UnlearnConfig", "UnlearnResult", "saliency_mask", "unlearn"]
