"""Models: architecture adapters, loading and saving, sliced decoders, our vision classifiers."""
from surgery._lazy import lazy

__getattr__, __dir__ = lazy(
    __name__,
    adapters="BlockShape ClassifierAdapter DecoderAdapter SUPPORTED adapter_for is_language_model",
    io="load_model read_config save_model",
    vision="MLP ResNetCifar SmallCNN build_vision",
)
__all__ = __dir__()
