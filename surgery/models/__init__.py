"""Models: architecture adapters, our vision classifiers, folder I/O, a BPE tokenizer trainer."""
from surgery.models.adapters import (
    DECODER_TYPES,
    BlockShape,
    ClassifierAdapter,
    DecoderAdapter,
    adapter_for,
)
from surgery.models.io import load_model, read_config, save_model
from surgery.models.vision import MLP, ResNetCifar, SmallCNN, build_vision

__all__ = [
    "DECODER_TYPES",
    "MLP",
    "BlockShape",
    "ClassifierAdapter",
    "DecoderAdapter",
    "ResNetCifar",
    "SmallCNN",
    "adapter_for",
    "build_vision",
    "load_model",
    "read_config",
    "save_model",
]
