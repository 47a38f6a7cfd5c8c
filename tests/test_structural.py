"""Structural reductions equal a hand computation with explicit loops over units."""
from __future__ import annotations

import torch

from conftest import tiny_llama, tiny_qwen2, token_batches
from surgery import score, structural_scores


def hand(smap, model, layer):
    cfg = model.config
    d = cfg.hidden_size // cfg.num_attention_heads
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    p = f"model.layers.{layer}."

    def s(name):
        return smap[p + name].double() if p + name in smap else None

    heads = []
    for h in range(H):
        v = s("self_attn.q_proj.weight")[h * d : (h + 1) * d].sum()
        v += s("self_attn.o_proj.weight")[:, h * d : (h + 1) * d].sum()
        if s("self_attn.q_proj.bias") is not None:
            v += s("self_attn.q_proj.bias")[h * d : (h + 1) * d].sum()
        heads.append(v)
    groups = []
    for g in range(KV):
        v = sum(heads[h] for h in range(g * (H // KV), (g + 1) * (H // KV)))
        for r in ("k", "v"):
            v = v + s(f"self_attn.{r}_proj.weight")[g * d : (g + 1) * d].sum()
            if s(f"self_attn.{r}_proj.bias") is not None:
                v = v + s(f"self_attn.{r}_proj.bias")[g * d : (g + 1) * d].sum()
        groups.append(v)
    neurons = []
    for i in range(cfg.intermediate_size):
        neurons.append(s("mlp.gate_proj.weight")[i].sum() + s("mlp.up_proj.weight")[i].sum()
                       + s("mlp.down_proj.weight")[:, i].sum())
    return torch.stack(heads), torch.stack(groups), torch.stack(neurons)


def test_llama_gqa_and_qwen2_biases():
    for model in (tiny_llama(), tiny_qwen2()):
        smap = score(model, token_batches(), kind="taylor", progress=False)
        units = structural_scores(smap, model)
        for layer in range(model.config.num_hidden_layers):
            h, g, n = hand(smap, model, layer)
            torch.testing.assert_close(units.heads[layer], h, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(units.kv_groups[layer], g, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(units.neurons[layer], n, rtol=1e-12, atol=1e-12)
        assert units.kv_groups[0].numel() == model.config.num_key_value_heads


def test_zero_weight_head_has_zero_taylor_score():
    model = tiny_llama()
    d = 8
    with torch.no_grad():  # head 1 of layer 0: its q rows and o columns are zero
        model.model.layers[0].self_attn.q_proj.weight[d : 2 * d] = 0
        model.model.layers[0].self_attn.o_proj.weight[:, d : 2 * d] = 0
    smap = score(model, token_batches(), kind="taylor", progress=False)
    units = structural_scores(smap, model)
    assert float(units.heads[0][1]) == 0.0
    assert all(float(units.heads[0][h]) > 0 for h in (0, 2, 3))
