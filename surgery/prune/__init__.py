"""Pruning engine: Týr-style global structural sparsity search, sliced export."""
from surgery.prune.config import PruneConfig, SearchConfig
from surgery.prune.engine import PruneResult, prune

__all__ = ["PruneConfig", "PruneResult", "SearchConfig", "prune"]
