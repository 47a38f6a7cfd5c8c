"""Quantization engine: RTN, GPTQ and ApiQ-bw (± the saliency regulariser); export."""
from surgery._lazy import lazy

_NAMES = {
    "ApiQConfig": "config",
    "CONFIGS": "config",
    "GPTQConfig": "config",
    "LayerQuant": "result",
    "QuantConfig": "config",
    "QuantResult": "result",
    "RTNConfig": "config",
    "SaliencyRegulariser": "config",
    "export": "save",
    "quantize": "engine",
}
__getattr__, __dir__ = lazy(__name__, _NAMES)
__all__ = sorted(_NAMES)
