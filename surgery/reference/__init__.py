"""Reference models built here (no hub): specs, training, a hash-keyed cache."""
from surgery.reference.builder import build, cache_root, info, load_reference, reference_path, resolve_model
from surgery.reference.specs import REFERENCES, LMSpec, VisionSpec, get_spec, spec_hash

__all__ = ["REFERENCES", "LMSpec", "VisionSpec", "build", "cache_root", "get_spec", "info",
           "load_reference", "reference_path", "resolve_model", "spec_hash"]
