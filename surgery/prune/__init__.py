"""Pruning engine: Týr-style global structural sparsity search, sliced export."""
from surgery._lazy import lazy, verb

__getattr__, __dir__ = lazy(
    __name__,
    config="PruneConfig SearchConfig",
    engine="PruneResult prune",
)
__all__ = __dir__()
verb(__name__, "engine", "prune")  # surgery.prune(...) is surgery.prune.engine.prune(...)
