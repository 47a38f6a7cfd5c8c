"""Data: text sources and token windows, image sets."""
from surgery.data.images import ImageSet, cifar10, digits, load_images, mnist
from surgery.data.text import (
    DATA_ENV,
    data_dir,
    embedded,
    join,
    load_text,
    read_documents,
    shakespeare,
    wikitext2_test,
)
from surgery.data.windows import batches, calib_windows, eval_windows, tokenize

__all__ = [
    "DATA_ENV",
    "ImageSet",
    "batches",
    "calib_windows",
    "cifar10",
    "data_dir",
    "digits",
    "embedded",
    "eval_windows",
    "join",
    "load_images",
    "load_text",
    "mnist",
    "read_documents",
    "shakespeare",
    "tokenize",
    "wikitext2_test",
]
