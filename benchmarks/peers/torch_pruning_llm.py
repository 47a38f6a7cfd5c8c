"""torch-pruning (VainF/Torch-Pruning) on the Shakespeare reference LM, beside our pruner.

torch-pruning is imported from a folder of its own (`pip install --no-deps --target DIR
torch-pruning==1.5.2`: its install would otherwise pull an unpinned torch). 1.6.1, the newest, does
not finish building its dependency graph on transformers 5.24's Llama (even one MHA layer; cf.
VainF/Torch-Pruning#527), so the benchmark stops it after a time limit and records that. Two settings:

- `units`: our units and budget — attention heads and FFN neurons at the same ratio in every layer,
  the residual width kept (o_proj / down_proj outputs and lm_head are ignored). Where its head
  grouping leaves a GQA attention whole (1.5.2 does), the budget goes to FFN neurons alone, at the
  ratio that removes the same number of block weights; the notes say which happened.
- `official`: torch-pruning's own LLM example — the residual width pruned too, at one ratio for
  hidden size, heads and FFN; the ratio is bisected so that the decoder-block linear weights
  removed match the target share.

Importance is torch-pruning's data-free group L2 norm, as in its LLM example; there is no
reconstruction. The model is physically smaller and runs as a stock Llama (config updated).
"""
from __future__ import annotations

import torch
from torch import nn

from surgery.models.adapters import DecoderAdapter


def _prune(model: nn.Module, tp, ratio: float, example: torch.Tensor, hidden: bool) -> None:
    cfg = model.config
    num_heads: dict = {}
    ignored: list = [model.lm_head]
    for layer in model.model.layers:
        att = layer.self_attn
        num_heads[att.q_proj] = cfg.num_attention_heads
        num_heads[att.k_proj] = cfg.num_key_value_heads
        num_heads[att.v_proj] = cfg.num_key_value_heads
        if not hidden:
            ignored += [att.o_proj, layer.mlp.down_proj]
    pruner = tp.pruner.MetaPruner(
        model, example_inputs=example, importance=tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"),
        output_transform=lambda out: out.logits, global_pruning=False, pruning_ratio=ratio, ignored_layers=ignored, num_heads=num_heads,
        prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio, round_to=4 if hidden else 1)
    for group in pruner.step(interactive=True):
        group.prune()
    head_dim = cfg.head_dim
    for layer in model.model.layers:
        att = layer.self_attn
        q_heads = att.q_proj.out_features // head_dim
        kv_heads = att.k_proj.out_features // head_dim
        att.num_key_value_groups = q_heads // kv_heads
        cfg.num_attention_heads, cfg.num_key_value_heads = q_heads, kv_heads
        cfg.intermediate_size = layer.mlp.gate_proj.out_features
    cfg.hidden_size = model.lm_head.in_features


def _query_rows(model: nn.Module) -> int:
    return sum(layer.self_attn.q_proj.out_features for layer in model.model.layers)


def torch_pruning(model_fn, tp, sparsity: float, example: torch.Tensor, setting: str) -> tuple[nn.Module, dict]:
    """A model pruned by torch-pruning to `sparsity` of the decoder-block linear weights, and notes
    on what it pruned."""
    dense = model_fn()
    total, heads = DecoderAdapter(dense).block_linear_params(), _query_rows(dense)
    attn = sum(p.numel() for layer in dense.model.layers for p in layer.self_attn.parameters())
    if setting == "units":
        model = model_fn()
        _prune(model, tp, sparsity, example, hidden=False)
        if _query_rows(model) < heads:
            return model, {"heads_pruned": True, "ratio": sparsity}
        # its head grouping left the (GQA) attention whole: spend the budget on FFN neurons alone
        ffn_ratio = sparsity * total / (total - attn)
        if ffn_ratio >= 1:
            raise ValueError(f"sparsity {sparsity} cannot be met by FFN neurons alone")
        model = model_fn()
        _prune(model, tp, ffn_ratio, example, hidden=False)
        return model, {"heads_pruned": False, "ffn_ratio": ffn_ratio}
    lo, hi, best = 0.0, sparsity, None
    for _ in range(12):  # bisect the shared ratio on the block weights actually removed
        mid = (lo + hi) / 2
        model = model_fn()
        _prune(model, tp, mid, example, hidden=True)
        removed = 1 - DecoderAdapter(model).block_linear_params() / total
        if best is None or abs(removed - sparsity) < abs(best[0] - sparsity):
            best = (removed, mid, model)
        lo, hi = (mid, hi) if removed < sparsity else (lo, mid)
    return best[2], {"heads_pruned": _query_rows(best[2]) < heads, "ratio": best[1],
                     "hidden_size": best[2].config.hidden_size}
