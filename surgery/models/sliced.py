"""Physically sliced decoders: per-layer query / KV head counts and FFN widths.

Stock transformers builds every layer from the global config (its `per_layer_config` is not
consumed by the Llama modeling code yet), so a non-uniform result — or a uniform one whose head
count the stock config refuses (Llama wants hidden_size % heads == 0) — is saved with its own
`model_type` (`surgery_sliced_llama`, `_mistral`, `_qwen2`): the base architecture's config plus
`layer_num_heads`, `layer_num_kv_heads` and `layer_intermediate_sizes`. `import surgery` registers
these with `AutoConfig` / `AutoModelForCausalLM`, so `from_pretrained(path)` loads the folder with
no pickle and no remote code. A uniform result is saved as the stock config of its base type.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from surgery.errors import require

BASES: dict[str, tuple[type, type]] = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}
PER_LAYER = ("layer_num_heads", "layer_num_kv_heads", "layer_intermediate_sizes")


class NullMLP(nn.Module):
    """An FFN with every neuron pruned: it adds nothing to the residual stream."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def layer_config(config: Any, i: int) -> Any:
    """The base config as layer i sees it (its own head counts and FFN width)."""
    c = copy.copy(config)
    c.num_attention_heads = config.layer_num_heads[i]
    c.num_key_value_heads = config.layer_num_kv_heads[i]
    c.intermediate_size = config.layer_intermediate_sizes[i]
    return c


def _sliced_classes(base: str) -> tuple[type, type]:
    base_cfg, base_model = BASES[base]

    class SlicedConfig(base_cfg):  # type: ignore[misc, valid-type]
        model_type = f"surgery_sliced_{base}"

        def __init__(self, layer_num_heads: list[int] | None = None,
                     layer_num_kv_heads: list[int] | None = None,
                     layer_intermediate_sizes: list[int] | None = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            n = self.num_hidden_layers
            self.layer_num_heads = list(layer_num_heads or [self.num_attention_heads] * n)
            self.layer_num_kv_heads = list(layer_num_kv_heads or [self.num_key_value_heads] * n)
            self.layer_intermediate_sizes = list(layer_intermediate_sizes or [self.intermediate_size] * n)

    class SlicedForCausalLM(base_model):  # type: ignore[misc, valid-type]
        config_class = SlicedConfig

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            for i, layer in enumerate(self.model.layers):
                lc = layer_config(config, i)
                require(lc.num_attention_heads >= 1 and lc.num_key_value_heads >= 1,
                        f"layer {i}: a sliced layer keeps at least one KV group")
                layer.self_attn = type(layer.self_attn)(lc, i)
                layer.mlp = type(layer.mlp)(lc) if lc.intermediate_size > 0 else NullMLP()
            self.post_init()

    SlicedConfig.__name__ = SlicedConfig.__qualname__ = f"Sliced{base_cfg.__name__}"
    SlicedForCausalLM.__name__ = SlicedForCausalLM.__qualname__ = f"Sliced{base_model.__name__}"
    return SlicedConfig, SlicedForCausalLM


SLICED: dict[str, tuple[type, type]] = {}
for _base in BASES:
    _cfg, _model = _sliced_classes(_base)
    SLICED[_base] = (_cfg, _model)
    AutoConfig.register(_cfg.model_type, _cfg, exist_ok=True)
    AutoModelForCausalLM.register(_cfg, _model, exist_ok=True)

SLICED_TYPES = tuple(cfg.model_type for cfg, _ in SLICED.values())


def base_type(model_type: str) -> str:
    return model_type.removeprefix("surgery_sliced_")


def sliced_config(config: Any, heads: list[int], kv_heads: list[int], ffn: list[int]) -> Any:
    """A stock config when every layer has the same widths, else the sliced config."""
    base = base_type(config.model_type)
    cfg_cls = BASES[base][0]
    d = config.to_dict()
    for k in (*PER_LAYER, "model_type", "architectures", "transformers_version"):
        d.pop(k, None)
    d["head_dim"] = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    uniform = len(set(heads)) == 1 and len(set(kv_heads)) == 1 and len(set(ffn)) == 1 and ffn[0] > 0
    # a stock config must also accept the head count (Llama checks hidden_size % heads == 0)
    uniform = uniform and config.hidden_size % heads[0] == 0
    if uniform:
        return cfg_cls(**{**d, "num_attention_heads": heads[0], "num_key_value_heads": kv_heads[0],
                          "intermediate_size": ffn[0]})
    # the global counts stay the dense model's (they pass the stock validation); layers read theirs
    return SLICED[base][0](**{**d, "layer_num_heads": heads, "layer_num_kv_heads": kv_heads,
                              "layer_intermediate_sizes": ffn})


def model_for(config: Any) -> nn.Module:
    """An (uninitialised-weights) model for a stock or sliced config."""
    mt = config.model_type
    if mt in SLICED_TYPES:
        return SLICED[base_type(mt)][1](config)
    return BASES[mt][1](config)
