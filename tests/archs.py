"""Tiny random configs of every supported architecture (tied and untied), built from transformers'
own config classes — no downloads. Each goes through every engine in the default test run."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

VOCAB = 99
_BASE = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=40, max_position_embeddings=128, bos_token_id=1, eos_token_id=2)

ARCHS: dict[str, tuple[str, dict]] = {
    "llama": ("llama", dict(tie_word_embeddings=False)),
    "llama_tied": ("llama", dict(tie_word_embeddings=True)),
    "mistral": ("mistral", dict(head_dim=16, tie_word_embeddings=False)),
    "qwen2": ("qwen2", dict(tie_word_embeddings=False)),
    "qwen3": ("qwen3", dict(head_dim=16, tie_word_embeddings=False)),
    "gemma2": ("gemma2", dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=4, final_logit_softcapping=30.0,
                              attn_logit_softcapping=50.0, tie_word_embeddings=True)),
    "gemma3_text": ("gemma3_text", dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
                                        tie_word_embeddings=True)),
    "phi3": ("phi3", dict(tie_word_embeddings=False, pad_token_id=0)),
    "olmo2": ("olmo2", dict(tie_word_embeddings=False)),
    "qwen3_moe": ("qwen3_moe", dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
                                    decoder_sparse_step=1, mlp_only_layers=[0], norm_topk_prob=True,
                                    tie_word_embeddings=False)),
}


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of architecture `name` (see ARCHS), eval mode, every weight non-trivial."""
    from transformers import AutoConfig

    model_type, extra = ARCHS[name]
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(model_type, **{**_BASE, **extra})
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # biases and norms start at 0 / 1: make them matter
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def token_batches(n: int = 3, batch: int = 2, seqlen: int = 12, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (batch, seqlen), generator=g) for _ in range(n)]
