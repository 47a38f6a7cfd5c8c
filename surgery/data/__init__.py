"""Data: text sources and token windows, image sets."""
from surgery.data.images import ImageSet, cifar10, digits, load_images, mnist
from surgery.data.sources import TextSource, parse_source, read_text
from surgery.data.text import (
    DATA_ENV,
    data_dir,
    embedded,
    join,
    read_documents,
    shakespeare,
    tinystories,
    wikitext2_test,
)
from surgery.data.windows import batches, calib_windows, eval_windows, tokenize

__all__ = [
    "DATA_ENV",
    "ImageSet",
    "TextSource",
    "batches",
    "calib_windows",
    "cifar10",
    "data_dir",
    "digits",
    "embedded",
    "eval_windows",
    "join",
    "load_images",
    "mnist",
    "parse_source",
    "read_documents",
    "read_text",
    "shakespeare",
    "tinystories",
    "tokenize",
    "wikitext2_test",
]
