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


def test_every_cell_has_a_value_or_a_reason_and_the_plot_no_empty_group(tmp_path, monkeypatch):
    dense = compare.Report("dense", {"ppl:test": 20.0, "disk_bytes": 400.0, "decode_tok_s": 10.0}, dense=True)
    q = compare.Report("w2", {"ppl:test": 22.0, "disk_bytes": 60.0})
    q.missing("decode_tok_s", "no fast kernel here")
    p = compare.Report("pruned", {"ppl:test": 25.0, "decode_tok_s": 15.0, "task:x": 40.0})
    md = compare.to_markdown([dense, q, p])
    rows = [line for line in md.splitlines() if line.startswith("| w2") or line.startswith("| pruned")]
    assert "— no fast kernel here" in rows[0] and "— not measured" in rows[1]  # pruned has no disk_bytes
    assert all("| –" not in r for r in rows)
    groups = []
    import matplotlib.axes

    real = matplotlib.axes.Axes.set_xticks
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xticks",
                        lambda self, ticks, labels=None, **kw: (groups.extend(labels or []), real(self, ticks, labels, **kw)))
    compare.plot([dense, q, p], tmp_path / "c.png")
    keys = [g.split("\n")[0] for g in groups]
    assert keys == ["ppl:test", "disk_bytes", "decode_tok_s"]  # task:x: dense lacks it, so no group


def test_int4_kernel_computes_the_quantized_weights(tmp_path):
    from surgery.export.folders import load_folder
    from surgery.export.kernels import attach_kernels
    from surgery.quantize import GPTQConfig, RTNConfig, export, quantize

    ids = torch.randint(0, 99, (8, 16), generator=torch.Generator().manual_seed(0))
    for cfg, on in ((GPTQConfig(num_bits=4, group_size=32), 14), (RTNConfig(num_bits=2, group_size=32), 0)):
        model = tiny_llama(hidden_size=64, intermediate_size=128)
        result = quantize(model, cfg, calib=ids, batch_size=4, progress=False)
        folder = export(model, result, tmp_path / f"{cfg.method}{cfg.num_bits}")
        served, _ = load_folder(folder)
        report = attach_kernels(served, folder)
        assert (report.on_kernel, report.layers) == (on, 14)
        with torch.no_grad():
            want, got = model(input_ids=ids).logits, served(input_ids=ids).logits
        tol = 0.02 * float(want.abs().max()) if on else 0.0  # bf16 activations on the kernel
        assert float((got - want).abs().max()) <= tol
