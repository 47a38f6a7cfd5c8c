"""Quantization engine: RTN, GPTQ and ApiQ-bw (± the saliency regulariser); export."""
from surgery._lazy import lazy, verb

__getattr__, __dir__ = lazy(
    __name__,
    config="ApiQConfig CONFIGS GPTQConfig QuantConfig RTNConfig SaliencyRegulariser",
    engine="quantize",
    result="LayerQuant QuantResult",
    save="export",
)
__all__ = __dir__()
verb(__name__, "engine", "quantize")  # surgery.quantize(...) is surgery.quantize.engine.quantize(...)
