"""Quantization engine: RTN, GPTQ and ApiQ-bw (± the saliency regulariser); export."""
from surgery.quantize.config import CONFIGS, ApiQConfig, GPTQConfig, QuantConfig, RTNConfig, SaliencyRegulariser
from surgery.quantize.engine import quantize
from surgery.quantize.export import export
from surgery.quantize.result import LayerQuant, QuantResult

__all__ = ["CONFIGS", "ApiQConfig", "GPTQConfig", "LayerQuant", "QuantConfig", "QuantResult", "RTNConfig",
           "SaliencyRegulariser", "export", "quantize"]
