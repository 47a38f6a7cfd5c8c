"""Reference models built here (no hub): specs, training, a hash-keyed cache."""
from surgery._lazy import lazy

_NAMES = {
    "LMSpec": "specs",
    "REFERENCES": "specs",
    "VisionSpec": "specs",
    "build": "builder",
    "cache_root": "builder",
    "get_spec": "specs",
    "info": "builder",
    "load_reference": "builder",
    "reference_path": "builder",
    "resolve_model": "builder",
    "spec_hash": "specs",
}
__getattr__, __dir__ = lazy(__name__, _NAMES)
__all__ = sorted(_NAMES)
