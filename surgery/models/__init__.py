"""Models: architecture adapters, loading and saving, sliced decoders, our vision classifiers."""
from surgery.models.adapters import (
    SUPPORTED,
    BlockShape,
    ClassifierAdapter,
    DecoderAdapter,
    adapter_for,
    is_language_model,
)
from surgery.models.io import load_model, read_config, save_model
from surgery.models.vision import MLP, ResNetCifar, SmallCNN, build_vision

__all__ = [
    "MLP",
    "SUPPORTED",
    "BlockShape",
    "ClassifierAdapter",
    "DecoderAdapter",
    "ResNetCifar",
    "SmallCNN",
    "adapter_for",
    "build_vision",
    "is_language_model",
    "load_model",
    "read_config",
    "save_model",
]
