"""Evaluation and dense-vs-compressed comparison (knows no engine)."""
from surgery.evaluate.compare import Report, evaluate_lm, to_json, to_markdown, write
from surgery.evaluate.cost import param_count, size_on_disk, throughput
from surgery.evaluate.lm import kl_divergence, perplexity, window_nll
from surgery.evaluate.vision import accuracy, predict_proba

__all__ = [
    "Report",
    "accuracy",
    "evaluate_lm",
    "kl_divergence",
    "param_count",
    "perplexity",
    "predict_proba",
    "size_on_disk",
    "throughput",
    "to_json",
    "to_markdown",
    "window_nll",
    "write",
]
