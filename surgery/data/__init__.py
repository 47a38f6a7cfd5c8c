"""Data: text sources and token windows, image sets."""
from surgery._lazy import lazy

_NAMES = {
    "DATA_ENV": "text",
    "ImageSet": "images",
    "TextSource": "sources",
    "batches": "windows",
    "calib_windows": "windows",
    "cifar10": "images",
    "data_dir": "text",
    "digits": "images",
    "embedded": "text",
    "eval_windows": "windows",
    "join": "text",
    "load_images": "images",
    "mnist": "images",
    "parse_source": "sources",
    "read_documents": "text",
    "read_text": "sources",
    "shakespeare": "text",
    "tinystories": "text",
    "tokenize": "windows",
    "wikitext2_test": "text",
}
__getattr__, __dir__ = lazy(__name__, _NAMES)
__all__ = sorted(_NAMES)
