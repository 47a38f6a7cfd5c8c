"""Reference models built here (no hub): specs, training, a hash-keyed cache."""
from surgery._lazy import lazy

__getattr__, __dir__ = lazy(
    __name__,
    builder="build cache_root info load_reference reference_path",
    resolve="resolve_model",
    specs="DiffusionSpec LMSpec REFERENCES VisionSpec get_spec spec_hash",
)
__all__ = __dir__()
