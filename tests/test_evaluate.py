"""Perplexity and KL equal direct computations; comparison tables carry the right ratios."""
from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F

from conftest import tiny_llama, token_batches
from surgery.evaluate import compare, kl_divergence, perplexity


def test_perplexity_equals_direct_computation(llama):
    windows = torch.cat(token_batches(n=3, batch=2, seqlen=16))
    nll_sum, count = 0.0, 0
    with torch.no_grad():
        for w in windows:  # one window at a time, exactly as the GPTQ loop does
            logits = llama(input_ids=w[None]).logits[0, :-1]
            loss = F.cross_entropy(logits, w[1:])  # mean over seqlen-1 tokens
            nll_sum += float(loss) * 16  # gptq: neg_log_likelihood = loss * seqlen
            count += 16
    expected = math.exp(nll_sum / count)
    assert abs(perplexity(llama, windows, batch_size=4) - expected) < 1e-9 * expected * 1e3


def test_kl_is_zero_to_itself_and_matches_direct():
    dense, other = tiny_llama(seed=0), tiny_llama(seed=1)
    windows = torch.cat(token_batches(n=2, batch=2, seqlen=10))
    assert abs(kl_divergence(dense, dense, windows)) < 1e-7
    with torch.no_grad():
        p = F.log_softmax(dense(input_ids=windows).logits[:, :-1].double(), -1)
        q = F.log_softmax(other(input_ids=windows).logits[:, :-1].double(), -1)
    direct = float((p.exp() * (p - q)).sum(-1).mean())
    assert abs(kl_divergence(dense, other, windows, batch_size=3) - direct) < 1e-5 * direct
    top = kl_divergence(dense, other, windows, top_k=5)
    assert top > 0 and math.isfinite(top)


def test_comparison_table_json_and_plot(tmp_path):
    dense = compare.Report("dense", {"ppl:test": 20.0, "params": 100.0}, dense=True)
    cand = compare.Report("pruned", {"ppl:test": 25.0, "params": 50.0})
    md = compare.to_markdown([dense, cand])
    assert "| pruned | 25.000 (×1.250) | 50.000 (×0.500) |" in md
    paths = compare.write([dense, cand], tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["models"][1]["ratio_to_dense"] == {"ppl:test": 1.25, "params": 0.5}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
