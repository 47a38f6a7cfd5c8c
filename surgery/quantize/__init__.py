"""Quantization engine: RTN, GPTQ and ApiQ-bw with the saliency-aware regulariser; export."""
from surgery.quantize.config import QuantConfig
from surgery.quantize.engine import quantize
from surgery.quantize.result import LayerQuant, QuantResult

__all__ = ["LayerQuant", "QuantConfig", "QuantResult", "quantize"]
