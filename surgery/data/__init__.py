"""Data: text sources and token windows, image sets."""
from surgery._lazy import lazy

__getattr__, __dir__ = lazy(
    __name__,
    images="ImageSet cifar10 digits load_images mnist",
    sources="TextSource parse_source read_text",
    text="DATA_ENV data_dir embedded join read_documents shakespeare tinystories wikitext2_test",
    windows="batches calib_windows eval_windows tokenize",
)
__all__ = __dir__()
