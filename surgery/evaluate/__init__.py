"""Evaluation and dense-vs-compressed comparison (knows no engine)."""
from surgery._lazy import lazy

_NAMES = {
    "Report": "compare",
    "accuracy": "vision",
    "evaluate_lm": "compare",
    "kl_divergence": "lm",
    "param_count": "cost",
    "perplexity": "lm",
    "predict_proba": "vision",
    "size_on_disk": "cost",
    "throughput": "cost",
    "to_json": "compare",
    "to_markdown": "compare",
    "window_nll": "lm",
    "write": "compare",
}
__getattr__, __dir__ = lazy(__name__, _NAMES)
__all__ = sorted(_NAMES)
