"""Configs and models for physically sliced decoders (classes in `sliced_modeling`).

`import surgery` registers the `surgery_sliced_<base>` types with `AutoConfig` and
`AutoModelForCausalLM`; `save_pretrained` of a sliced model copies `sliced_modeling.py` beside the
weights (`auto_map`), so the folder also loads with `trust_remote_code=True` and no surgery. A result
whose layers all keep the same widths is described by the stock config of its base architecture
instead, when that config accepts the widths.
"""
from __future__ import annotations

from typing import Any

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from surgery.errors import require
from surgery.models.catalog import base_type
from surgery.models.sliced_modeling import BASES, PER_LAYER, PREFIX, SLICED

for _cfg, _model in SLICED.values():
    AutoConfig.register(_cfg.model_type, _cfg, exist_ok=True)
    AutoModelForCausalLM.register(_cfg, _model, exist_ok=True)

SLICED_TYPES = tuple(cfg.model_type for cfg, _ in SLICED.values())


def _plain(config: Any) -> dict[str, Any]:
    d = config.to_dict()
    for k in (*PER_LAYER, "model_type", "architectures", "transformers_version", "auto_map"):
        d.pop(k, None)
    d["head_dim"] = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return d


def sliced_config(config: Any, heads: list[int], kv_heads: list[int], ffn: list[int], stock: bool = True,
                  head_kv: list[list[int]] | None = None) -> Any:
    """The stock config when every layer has the same widths and the stock config accepts them
    (and `stock`); else the sliced config (global counts stay the dense model's; layers read theirs).
    `head_kv[i]`: the KV head of each query head of layer i, where its KV heads serve different
    numbers of query heads ([] elsewhere)."""
    base = base_type(config.model_type)
    require(base in BASES, f"cannot slice a {config.model_type!r} model")
    d = _plain(config)
    head_kv = head_kv or [[] for _ in heads]
    if any(head_kv):
        return SLICED[base][0](**{**d, "layer_num_heads": heads, "layer_num_kv_heads": kv_heads,
                                   "layer_intermediate_sizes": ffn, "layer_head_kv": head_kv})
    if stock and len(set(heads)) == 1 and len(set(kv_heads)) == 1 and len(set(ffn)) == 1 and ffn[0] > 0 \
            and config.hidden_size % heads[0] == 0:
        try:
            return BASES[base][0](**{**d, "num_attention_heads": heads[0], "num_key_value_heads": kv_heads[0],
                                     "intermediate_size": ffn[0]})
        except (ValueError, TypeError):
            pass  # the stock config refuses these widths: keep the per-layer form
    return SLICED[base][0](**{**d, "layer_num_heads": heads, "layer_num_kv_heads": kv_heads,
                               "layer_intermediate_sizes": ffn})


def is_sliced(config: Any) -> bool:
    return getattr(config, "model_type", "").startswith(PREFIX)


def model_for(config: Any) -> nn.Module:
    """An (uninitialised-weights) model for a stock or sliced config."""
    mt = config.model_type
    if mt in SLICED_TYPES:
        return SLICED[base_type(mt)][1](config)
    return BASES[mt][1](config)
