"""Decoders with per-layer widths: query / KV head counts and FFN widths chosen layer by layer.

Stock transformers builds every layer from one global config, so a structurally pruned model whose
layers differ is saved with its own model type, `surgery_sliced_<base>`: the base architecture's
config plus `layer_num_heads`, `layer_num_kv_heads` and `layer_intermediate_sizes`. Each layer's
attention and MLP are built from the base config with that layer's widths; a layer whose neurons
were all pruned has an MLP that adds nothing. A layer whose KV heads serve different numbers of
query heads (pruned by query head) lists, in `layer_head_kv`, the KV head each query head reads
(empty: standard GQA); its attention gathers those KV heads — the cache keeps only the stored ones —
and then runs the model's own attention function.

This file imports only torch and transformers: `surgery` registers these classes on import, and
writes this same file into every heterogeneous pruned folder (`auto_map`), so that plain
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` loads it without `surgery`.
"""
from __future__ import annotations

import copy
import sys
from typing import Any

import torch
from torch import nn
from transformers import (
    AttentionInterface,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

PREFIX = "surgery_sliced_"
PER_LAYER = ("layer_num_heads", "layer_num_kv_heads", "layer_intermediate_sizes", "layer_head_kv")
HEAD_KV_ATTENTION = "surgery_head_kv"
BASES: dict[str, tuple[type, type]] = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "gemma2": (Gemma2Config, Gemma2ForCausalLM),
    "gemma3_text": (Gemma3TextConfig, Gemma3ForCausalLM),
    "phi3": (Phi3Config, Phi3ForCausalLM),
    "olmo2": (Olmo2Config, Olmo2ForCausalLM),
    "qwen3_moe": (Qwen3MoeConfig, Qwen3MoeForCausalLM),
}


class NullMLP(nn.Module):
    """An FFN with every neuron pruned: it adds nothing to the residual stream."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


class ExpertMLP(nn.Module):
    """One MoE expert as three linears (the Hub checkpoint layout): down(act(gate(x)) · up(x))."""

    def __init__(self, hidden: int, intermediate: int, act: nn.Module, dtype: torch.dtype | None = None,
                 device: torch.device | None = None) -> None:
        super().__init__()
        kw = {"bias": False, "dtype": dtype, "device": device}
        self.gate_proj = nn.Linear(hidden, intermediate, **kw)
        self.up_proj = nn.Linear(hidden, intermediate, **kw)
        self.down_proj = nn.Linear(intermediate, hidden, **kw)
        self.act_fn = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class UnfusedExperts(nn.ModuleList):
    """Drop-in for transformers' fused experts: `forward(hidden [T, H], top_k_index, top_k_weights)`."""

    @property
    def num_experts(self) -> int:
        return len(self)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        for e, expert in enumerate(self):
            token, slot = torch.where(top_k_index == e)
            if token.numel() == 0:
                continue
            y = expert(hidden_states[token]) * top_k_weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out


def is_fused_experts(module: nn.Module) -> bool:
    gu, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return isinstance(gu, nn.Parameter) and isinstance(down, nn.Parameter) and gu.dim() == 3 and down.dim() == 3


def unfused_like(fused: nn.Module) -> UnfusedExperts:
    """Per-expert modules shaped like a fused experts module (weights not copied)."""
    experts, two_i, hidden = fused.gate_up_proj.shape
    like = {"dtype": fused.gate_up_proj.dtype, "device": fused.gate_up_proj.device}
    return UnfusedExperts(ExpertMLP(hidden, two_i // 2, fused.act_fn, **like) for _ in range(experts))


def head_kv_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """Attention where query head h reads KV head `module.head_kv[h]`: the KV heads are gathered to
    one per query head, then the model's configured attention function runs."""
    idx = torch.as_tensor(module.head_kv, device=key.device)
    key, value = key.index_select(1, idx), value.index_select(1, idx)
    eager = sys.modules[type(module).__module__].eager_attention_forward
    fn = _ATTENTION.get_interface(module.model_config._attn_implementation, eager)
    return fn(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(HEAD_KV_ATTENTION, head_kv_attention)
_ATTENTION = AttentionInterface()  # one lookup table, not one per forward


def _read_kv_by_head(attn: nn.Module, lc: Any, config: Any, head_kv: list[int]) -> None:
    """Make `attn` read KV head head_kv[h] for query head h (one gathered KV head per query head)."""
    if len(head_kv) != lc.num_attention_heads or sorted(set(head_kv)) != list(range(lc.num_key_value_heads)):
        raise ValueError(f"layer_head_kv {head_kv} does not map {lc.num_attention_heads} query heads onto "
                         f"{lc.num_key_value_heads} KV heads")
    attn.head_kv = tuple(head_kv)  # not a buffer: loading from meta tensors would leave it unset
    attn.num_key_value_groups = 1
    attn.model_config = config  # the model's attention implementation, read at call time
    lc._attn_implementation_internal = HEAD_KV_ATTENTION


def layer_config(config: Any, i: int) -> Any:
    """The base config as layer i sees it (its own head counts and FFN width)."""
    c = copy.copy(config)
    c.num_attention_heads = config.layer_num_heads[i]
    c.num_key_value_heads = config.layer_num_kv_heads[i]
    c.intermediate_size = config.layer_intermediate_sizes[i]
    return c


def _make(base: str) -> tuple[type, type]:
    base_cfg, base_model = BASES[base]

    class SlicedConfig(base_cfg):  # type: ignore[misc, valid-type]
        model_type = PREFIX + base

        def __init__(self, layer_num_heads: list[int] | None = None, layer_num_kv_heads: list[int] | None = None,
                     layer_intermediate_sizes: list[int] | None = None, layer_head_kv: list[list[int]] | None = None,
                     **kwargs: Any) -> None:
            super().__init__(**kwargs)
            n = self.num_hidden_layers
            self.layer_num_heads = list(layer_num_heads or [self.num_attention_heads] * n)
            self.layer_num_kv_heads = list(layer_num_kv_heads or [self.num_key_value_heads] * n)
            self.layer_intermediate_sizes = list(layer_intermediate_sizes or [self.intermediate_size] * n)
            self.layer_head_kv = [list(m) for m in (layer_head_kv or [[]] * n)]

    class SlicedForCausalLM(base_model):  # type: ignore[misc, valid-type]
        config_class = SlicedConfig

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            for i, layer in enumerate(self.model.layers):
                lc = layer_config(config, i)
                if lc.num_attention_heads < 1 or lc.num_key_value_heads < 1:
                    raise ValueError(f"layer {i}: a sliced layer keeps at least one KV group")
                layer.self_attn = type(layer.self_attn)(lc, i)
                if config.layer_head_kv[i]:
                    _read_kv_by_head(layer.self_attn, lc, config, config.layer_head_kv[i])
                mlp = layer.mlp
                if hasattr(mlp, "down_proj"):  # a dense MLP (a MoE block keeps the global config)
                    layer.mlp = type(mlp)(lc) if lc.intermediate_size > 0 else NullMLP()
                elif is_fused_experts(getattr(mlp, "experts", None)):  # experts in the checkpoint layout
                    mlp.experts = unfused_like(mlp.experts)
            self.post_init()

    names = base_cfg.__name__.removesuffix("Config"), base_model.__name__.removesuffix("ForCausalLM")
    SlicedConfig.__name__ = SlicedConfig.__qualname__ = f"Sliced{names[0]}Config"
    SlicedForCausalLM.__name__ = SlicedForCausalLM.__qualname__ = f"Sliced{names[1]}ForCausalLM"
    # save_pretrained copies this file beside the weights and writes `auto_map`: the folder then
    # loads with trust_remote_code=True wherever transformers is installed
    SlicedConfig.register_for_auto_class()
    SlicedForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    return SlicedConfig, SlicedForCausalLM


SLICED: dict[str, tuple[type, type]] = {base: _make(base) for base in BASES}
for _cfg, _model in SLICED.values():  # module-level names, for `auto_map` entries
    globals()[_cfg.__name__] = _cfg
    globals()[_model.__name__] = _model
