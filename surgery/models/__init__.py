"""Models: architecture adapters, loading and saving, sliced decoders, our vision classifiers."""
from surgery._lazy import lazy

_NAMES = {
    "BlockShape": "adapters",
    "ClassifierAdapter": "adapters",
    "DecoderAdapter": "adapters",
    "MLP": "vision",
    "ResNetCifar": "vision",
    "SUPPORTED": "adapters",
    "SmallCNN": "vision",
    "adapter_for": "adapters",
    "build_vision": "vision",
    "is_language_model": "adapters",
    "load_model": "io",
    "read_config": "io",
    "save_model": "io",
}
__getattr__, __dir__ = lazy(__name__, _NAMES)
__all__ = sorted(_NAMES)
