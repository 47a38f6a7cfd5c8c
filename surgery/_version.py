"""The package version (one place; the root package, checkpoints and output folders read it)."""
__version__ = "0.2.0"
