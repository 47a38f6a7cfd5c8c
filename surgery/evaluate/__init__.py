"""Evaluation and dense-vs-compressed comparison (knows no engine)."""
from surgery._lazy import lazy

__getattr__, __dir__ = lazy(
    __name__,
    compare="Report evaluate_lm to_json to_markdown write",
    cost="param_count size_on_disk throughput",
    generation="frechet_distance generation_metrics save_grid",
    lm="kl_divergence perplexity window_nll",
    vision="accuracy predict_proba",
)
__all__ = __dir__()
