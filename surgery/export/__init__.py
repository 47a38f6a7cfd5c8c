"""Export and read back: compressed-tensors folders, PEFT adapters, sliced models, model cards.

Knows no engine: engines hand it plain results (per-layer grids, kept units, adapters).
"""
